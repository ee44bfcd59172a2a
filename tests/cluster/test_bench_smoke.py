"""`manage.py bench` with tiny numbers against the running cluster: it runs, and what it reports
adds up. No timing is asserted; speed is for the command's reader."""

from __future__ import annotations

import json
from typing import Any

from devtools.cluster import Cluster
from tests.conftest import manage, require_binaries

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
    # W2 is single pushes, W2b the same number batched: both rows, in that order.
    assert [line["workload"] for line in lines] == ["W1", "W2", "W2b"], result.stdout
    assert_every_delivery_once(by_workload, processes={*healthy_cluster.processes, "client"})
    assert by_workload["W2"]["extra"]["batch"] == 1 and by_workload["W2b"]["extra"]["batch"] == 20
    # The publish token the bench issued in the cluster's database does not outlive the run.
    tokens = manage(healthy_cluster, "apitoken", "list").stdout.splitlines()
    bench_tokens = [line for line in tokens if line.startswith("bench-")]
    assert bench_tokens and all("\trevoked\t" in line for line in bench_tokens), tokens


def assert_every_delivery_once(
    by_workload: dict[str, dict[str, Any]], *, processes: set[str], clients: int = CLIENTS
) -> None:
    """W1, W2 and W2b of one target add up: nothing lost, duplicated or out of order."""
    fan_out, push, batched = by_workload["W1"], by_workload["W2"], by_workload["W2b"]
    for line in (fan_out, push, batched):
        assert (line["lost"], line["dup"], line["reorder"]) == (0, 0, 0), line
        assert line["clients"] == clients and line["extra"]["publish_errors"] == 0, line
        assert line["extra"]["published"] == MESSAGES, line
        # CPU is measured for every process of the cluster, found through its state file.
        assert set(line["cpu_secs"]) == processes, line
        assert line["p99_ms"] is not None, line
    # Every broadcast reached every client once; every push reached its one user once.
    assert fan_out["deliveries"] == fan_out["expected"] == clients * MESSAGES, fan_out
    assert push["deliveries"] == push["expected"] == MESSAGES, push
    assert batched["deliveries"] == batched["expected"] == MESSAGES, batched


def test_bench_measures_the_socketio_peer_and_stock_channels_the_same_way(
    healthy_cluster: Cluster,
) -> None:
    """`--peer socketio`: a Socket.IO cluster of its own (npm ci from the lockfile, node
    replicas behind our HAProxy config), counted by the same pool, after ours; and
    `--baseline stock` (stock Channels behind the same HAProxy config) between them."""
    require_binaries("node", "npm")
    clients = 20
    result = healthy_cluster.manage(
        "bench",
        "--url",
        healthy_cluster.url,
        "--cluster-dir",
        str(healthy_cluster.run_dir),
        "--clients",
        str(clients),
        "--messages",
        str(MESSAGES),
        "--workloads",
        "W1,W2,W3",
        "--peer",
        "socketio",
        "--baseline",
        "stock",
        # npm ci on first use (a clean clone), then three clusters' worth of workloads.
        timeout=240,
    )
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert "skipping the socketio peer" not in result.stderr, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    rows = [(line["target"], line["workload"]) for line in lines]
    assert rows == [
        *[("ours", w) for w in ("W3", "W1", "W2", "W2b")],
        *[("stock", w) for w in ("W3", "W1", "W2")],  # no batch endpoint
        *[("socketio", w) for w in ("W3", "W1", "W2", "W2b")],
    ], result.stdout
    stock = {line["workload"]: line for line in lines if line["target"] == "stock"}
    assert stock["W3"]["extra"]["connected"] == clients, stock["W3"]
    assert "ours/stock W1: rate x" in result.stdout, result.stdout
    peer = {line["workload"]: line for line in lines if line["target"] == "socketio"}
    assert peer["W3"]["extra"]["connected"] == clients, peer["W3"]
    # Its own Redis and HAProxy, and three node replicas, all measured.
    assert_every_delivery_once(
        peer, processes={"d1", "d2", "d3", "redis", "haproxy", "client"}, clients=clients
    )
    for workload in ("W1", "W2", "W2b", "W3"):
        assert f"ours/socketio {workload}: rate x" in result.stdout, result.stdout


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
