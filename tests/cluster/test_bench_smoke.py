"""`manage.py bench` with tiny numbers against the running cluster: it runs, and what it reports
adds up. No timing is asserted; speed is for the command's reader."""

from __future__ import annotations

import json

from devtools.cluster import Cluster
from tests.conftest import manage

CLIENTS, MESSAGES = 30, 50


def test_bench_reports_every_delivery_once_and_in_order(healthy_cluster: Cluster) -> None:
    result = manage(
        healthy_cluster,
        "bench",
        "--url",
        healthy_cluster.url,
        "--cluster-dir",
        str(healthy_cluster.run_dir),
        "--clients",
        str(CLIENTS),
        "--messages",
        str(MESSAGES),
        "--workloads",
        "W1,W2",
    )
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    by_workload = {line["workload"]: line for line in lines}
    assert sorted(by_workload) == ["W1", "W2"], result.stdout

    fan_out, push = by_workload["W1"], by_workload["W2"]
    for line in (fan_out, push):
        assert (line["lost"], line["dup"], line["reorder"]) == (0, 0, 0), line
        assert line["clients"] == CLIENTS and line["extra"]["publish_errors"] == 0, line
        assert line["extra"]["published"] == MESSAGES, line
        # CPU is measured for every process of the cluster, found through its state file.
        assert set(line["cpu_secs"]) == {*healthy_cluster.processes, "client"}, line
    # Every broadcast reached every client once; every push reached its one user once.
    assert fan_out["deliveries"] == fan_out["expected"] == CLIENTS * MESSAGES, fan_out
    assert push["deliveries"] == push["expected"] == MESSAGES, push
    assert fan_out["p99_ms"] is not None and push["p99_ms"] is not None


def test_bench_churn_reports_each_replica_and_loses_nothing(healthy_cluster: Cluster) -> None:
    """W5 briefly: the test cluster collects every second, so its waits for a full collection
    take about that long."""
    result = manage(
        healthy_cluster,
        "bench",
        "--url",
        healthy_cluster.url,
        "--cluster-dir",
        str(healthy_cluster.run_dir),
        "--clients",
        "10",
        "--workloads",
        "W5",
        "--churn-secs",
        "3",
        "--churn-rate",
        "10",
        "--churn-publish-rate",
        "5",
    )
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [line["workload"] for line in lines] == ["W5"], result.stdout
    churn = lines[0]
    extra = churn["extra"]
    assert extra["churned"] > 0 and extra["failed"] == 0, extra
    assert (churn["lost"], churn["dup"], churn["reorder"]) == (0, 0, 0), churn
    assert churn["deliveries"] == churn["expected"] > 0 and extra["publish_errors"] == 0, churn
    # Every churn socket is counted on the replica its hello named, and each replica was read
    # right after a full collection, once every churn socket had closed on it.
    per_replica = extra["per_replica"]
    assert set(per_replica) == set(healthy_cluster.replica_names), extra
    assert sum(r["churned"] for r in per_replica.values()) == extra["churned"], extra
    assert extra["connections_back"] is True and extra["collected"] is True, extra
    assert "W5 ours churn:" in result.stdout, result.stdout
