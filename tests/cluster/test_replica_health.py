"""What a replica's /healthz reports about its own upkeep."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from devtools.cluster import Cluster, wait_until


def gc_stats(cluster: Cluster, replica: str) -> dict[str, int]:
    stats = httpx.get(f"{cluster.replica_url(replica)}/healthz", timeout=10).json()["stats"]
    return {key: value for key, value in stats.items() if key.startswith("gc_")}


def test_full_garbage_collections_run_on_the_replicas_timer(cluster: Cluster) -> None:
    # The test cluster sets GC_FULL_COLLECT_SECS=1 (60 by default).
    for replica in cluster.replica_names:
        before = gc_stats(cluster, replica)["gc_full_collections"]
        wait_until(
            lambda replica=replica, before=before: (
                gc_stats(cluster, replica)["gc_full_collections"] >= before + 2
            ),
            timeout=10,
            what=f"two timed full collections on {replica}",
        )
        assert 0 <= gc_stats(cluster, replica)["gc_full_pause_ms"] < 1000


def test_every_replica_writes_sockets_through_the_daphne_fast_path(cluster: Cluster) -> None:
    """Our server entry point offers the fast path once its start-up check passed; a replica
    that fell back to plain ASGI would still deliver, several times slower, so it must show."""
    for replica in cluster.replica_names:
        health = httpx.get(f"{cluster.replica_url(replica)}/healthz", timeout=10).json()
        assert health["transport"] == "daphne-fast-path", (replica, health["transport"])
        assert "fast path is OFF" not in cluster.tail(replica, lines=200)


def test_prometheus_reads_every_replica_and_haproxy_and_the_public_reads_neither(
    cluster: Cluster,
) -> None:
    for replica in cluster.replica_names:
        # Straight to the replica from its host, as a local Prometheus (or the runner) asks.
        answer = httpx.get(f"{cluster.replica_url(replica)}/metrics", timeout=10)
        assert answer.status_code == 200
        names = {family.name for family in text_string_to_metric_families(answer.text)}
        assert {
            "switchboard_sockets",
            "switchboard_connects",
            "switchboard_deliveries",
            "switchboard_publish_seconds",
            "switchboard_delivery_lag_seconds",
            "switchboard_redis_up",
            "switchboard_event_loop_lag_seconds",
            "process_resident_memory_bytes",
        } <= names, (replica, sorted(names))
    # Through HAProxy, without a staff session: no such page.
    assert httpx.get(f"{cluster.url}/metrics", timeout=10).status_code == 404
    # HAProxy's own exporter, on its stats frontend: every replica as a server, up.
    exported = httpx.get(f"{cluster.stats_url}metrics", timeout=10).text
    for replica in cluster.replica_names:
        assert (
            f'haproxy_server_status{{proxy="replicas",server="{replica}",state="UP"}} 1' in exported
        )
