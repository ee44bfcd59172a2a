"""Redis Sentinel: the primary is killed (SIGKILL) under steady publishing, the sentinels promote
its replica, and the replicas, the API and `manage.py` follow it by themselves.

Failover is honest: Redis replicates asynchronously, so the promoted replica may lack the last
messages its old primary acknowledged. Such a stream starts a new epoch on the new primary
(lua/publish.lua: it was last written under another replication id), so every reader is told
`recovered: false`; none may see a gap it was not told of, a message twice or out of order.
The test prints what the failover cost: how long publishing answered 503, how many acknowledged
messages no client received (lost, and announced), and the resets clients were told of.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest

from devtools.cluster import Cluster
from tests.cluster.helpers import api_token, probe_until_published
from tests.conftest import cluster_of_its_own
from tests.support.harness import Harness, unique_prefix

pytestmark = pytest.mark.timeout(300)

# Publishing must work again within this long after the primary dies (the bound).
RECOVERY_BOUND_SECS = 10.0


@pytest.fixture(scope="module")
def sentinel_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """3 replicas and HAProxy over a Redis primary, its replica and three sentinels."""
    with cluster_of_its_own(
        tmp_path_factory, "sentinel", replicas=3, redis_mode="sentinel"
    ) as cluster:
        yield cluster


async def test_a_killed_primary_fails_over_and_no_client_misses_anything_unannounced(
    sentinel_cluster: Cluster,
) -> None:
    cluster = sentinel_cluster
    token = await asyncio.to_thread(api_token, cluster)
    harness = Harness(cluster, clients=60, rooms=3, prefix=unique_prefix("sentinel"))
    try:
        await harness.open_clients()
        targets = harness.plan(pushes=600, broadcasts=100, room_messages=300)
        progress = harness.start_publishing(targets)
        await progress.reached(300)
        killed = await asyncio.to_thread(cluster.kill_redis_primary)
        assert killed == "redis-primary"
        recovery_secs, refusals = await probe_until_published(cluster, token)
        await harness.publishing_done()
        # One more message on every stream, so each has been written since the failover.
        await harness.publish_all(
            [*harness.user_streams, "broadcast", *harness.room_streams], round_name="final"
        )
        await harness.wait_delivered(timeout=60)
        report = harness.verify()
        assert cluster.redis_primary_port() == cluster.sentinel_group.replica_port  # type: ignore[union-attr]

        # Publishing was refused with a clear error while there was no primary, then came back.
        assert recovery_secs < RECOVERY_BOUND_SECS, recovery_secs
        assert refusals and set(refusals) <= {"503 redis_unavailable"}, refusals

        # The live epoch (every stream has a new one): everything, once, in order.
        assert (report.gaps, report.duplicates, report.reorders, report.mismatched) == (0, 0, 0, 0)
        assert report.received == report.expected_deliveries

        # The epochs before: what a client saw of them has no hole, no repeat, no reorder, and
        # every client was told recovered: false for each of its streams.
        lost = announced = 0
        heads = harness.heads()
        for index, client in enumerate(harness.clients):
            told = harness.told_lost(client)
            for stream in harness.streams_of(index):
                live_epoch = heads[stream][0]
                old = [
                    int(f["seq"])
                    for f in client.received.get(stream, [])
                    if f.get("epoch") != live_epoch
                ]
                assert old == sorted(set(old)), (stream, old)
                start_epoch, start = harness.start_positions[index][stream]
                assert not old or old == list(range(start + 1, old[-1] + 1)), (stream, old)
                # A reader that held a position in an epoch before the failover (a stream with
                # no message before it has nothing to lose) is told that epoch ended.
                if old or start_epoch not in (None, live_epoch):
                    assert stream in told, (stream, client.events[-5:])
                    announced += 1
        for stream, delivered in harness.published.items():
            live_epoch = heads[stream][0]
            seen = {
                (f.get("epoch"), int(f["seq"]))
                for client in harness.clients
                for f in client.received.get(stream, [])
            }
            lost += sum(1 for key in delivered.by_seq if key[0] != live_epoch and key not in seen)
        print(
            "sentinel failover:",
            json.dumps(
                {
                    "publishing_back_after_secs": round(recovery_secs, 2),
                    "refusals": len(refusals),
                    "acked_then_lost": lost,
                    "streams_announced_recovered_false": announced,
                    **report.__dict__,
                }
            ),
        )
        # The sockets never had to reconnect: the replicas re-subscribed on the new primary.
        assert report.reconnects == 0
    finally:
        await harness.close()
