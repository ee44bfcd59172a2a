"""Three Redis shards behind the replicas (`cluster up --redis-shards 3`): the fault harness's
clients and publishers see one system, and a shard that dies takes down only the streams that
live on it. Its streams answer 503 while it is away; the others keep delivering, in order, to
sockets that never notice; once it is back (empty) its streams start new epochs, their readers
are told `recovered: false`, and nothing is lost, repeated or reordered anywhere else."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from functools import partial

import httpx
import pytest
import redis

from devtools.cluster import Cluster
from switchboard_client import RealtimeClient
from tests.cluster.helpers import api_token, probe_until_published
from tests.conftest import cluster_of_its_own
from tests.support.harness import Harness, unique_prefix

# One worker runs this module (make test: --dist loadgroup), so its module fixture starts once.
pytestmark = [pytest.mark.timeout(300), pytest.mark.xdist_group("shards")]

SHARDS = 3
VICTIM = 0  # holds neither `broadcast` nor `ops` (both hash to shard 2 of 3)


def shard_of(stream: str) -> int:
    """What the broker computes (realtime/broker/redis_broker.py), from outside the cluster."""
    from redis.crc import key_slot

    return key_slot(stream.encode()) * SHARDS // 16384


@pytest.fixture(scope="module")
def sharded_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with cluster_of_its_own(tmp_path_factory, "shards", replicas=2, redis_shards=SHARDS) as cluster:
        yield cluster


def _keys_per_shard(cluster: Cluster) -> list[list[str]]:
    out = []
    for port in cluster.shard_ports:
        client = redis.Redis(port=port)
        out.append(sorted(key.decode() for key in client.scan_iter("sb:{*}:meta")))
        client.close()
    return out


async def _publish_status(cluster: Cluster, token: str, stream: str) -> int:
    async with httpx.AsyncClient(base_url=cluster.url, timeout=10) as http:
        answer = await http.post(
            "/api/publish",
            json={"stream": stream, "payload": {"probe": True}},
            headers={"Authorization": f"Bearer {token}"},
        )
    return answer.status_code


def _caught_up(
    client: RealtimeClient, *, streams: list[str], heads: dict[str, tuple[str, int]]
) -> bool:
    positions = client.positions
    return all(
        s in positions and (positions[s].epoch, positions[s].seq) == heads[s] for s in streams
    )


def _probe_stream(shard: int) -> str:
    """A user stream on `shard` that no client of the harness reads."""
    return next(
        f"user:{n}" for n in range(900_000_000, 900_001_000) if shard_of(f"user:{n}") == shard
    )


async def test_three_shards_deliver_everything_once_in_order(sharded_cluster: Cluster) -> None:
    cluster = sharded_cluster
    assert cluster.redis_process_names == ["redis-shard-0", "redis-shard-1", "redis-shard-2"]
    harness = Harness(cluster, clients=30, rooms=3, prefix=unique_prefix("shards"))
    try:
        await harness.open_clients()
        await harness.publish_all(harness.plan(pushes=300, broadcasts=20, room_messages=60))
        await harness.wait_delivered(timeout=60)
        report = harness.verify()
        print("three shards:", report.line())
        assert (report.gaps, report.duplicates, report.reorders, report.mismatched) == (0, 0, 0, 0)
        assert report.received == report.expected_deliveries > 0
        # Each stream's keys are on its shard, and the harness's streams used every shard.
        placed = _keys_per_shard(cluster)
        for shard, metas in enumerate(placed):
            assert all(shard_of(key[len("sb:{") : -len("}:meta")]) == shard for key in metas)
        assert all(placed), placed
        for replica in cluster.replica_names:
            shards = cluster.replica_health(replica)["redis"]["shards"]  # type: ignore[index]
            assert [(s["reachable"], s["subscribed"]) for s in shards] == [(True, True)] * SHARDS
    finally:
        await harness.close()


async def test_a_dead_shard_stops_only_its_streams_and_they_recover(
    sharded_cluster: Cluster,
) -> None:
    cluster = sharded_cluster
    token = await asyncio.to_thread(api_token, cluster)
    harness = Harness(cluster, clients=30, rooms=3, prefix=unique_prefix("shardfault"))
    try:
        await harness.open_clients()
        streams = [*harness.user_streams, "broadcast", *harness.room_streams]
        on_victim = [s for s in streams if shard_of(s) == VICTIM]
        healthy = [s for s in streams if shard_of(s) != VICTIM]
        assert on_victim and healthy and "broadcast" in healthy
        await harness.publish_all(harness.plan(pushes=150, broadcasts=10, room_messages=30))
        await harness.wait_delivered(timeout=60)

        killed_at = time.monotonic()
        await asyncio.to_thread(cluster.stop_redis_shard, VICTIM, kill=True)
        # Its streams refuse with a clear error (the harness retries its own publishes).
        assert await _publish_status(cluster, token, _probe_stream(VICTIM)) == 503
        # The other shards' streams keep delivering meanwhile, to every reader, in order.
        await harness.publish_all(healthy * 2, round_name="outage")
        outage_heads = harness.heads()
        for index, client in enumerate(harness.clients):
            mine = [s for s in harness.streams_of(index) if s in healthy]
            await client.wait_for(
                partial(_caught_up, streams=mine, heads=outage_heads),
                timeout=30,
                what=f"client {index}'s healthy streams during the outage",
            )
        assert await _publish_status(cluster, token, _probe_stream(VICTIM)) == 503
        delivered_during_outage_secs = time.monotonic() - killed_at

        await asyncio.to_thread(cluster.start_redis_shard, VICTIM)
        await probe_until_published(cluster, token, _probe_stream(VICTIM), bound_secs=20)
        back_after_secs = time.monotonic() - killed_at
        # Every stream once more: the victim's start new epochs on the empty shard.
        await harness.publish_all(streams, round_name="after")
        await harness.wait_delivered(timeout=60)
        report = harness.verify()
        print(
            "one shard down:",
            json.dumps(
                {
                    "streams_on_dead_shard": len(on_victim),
                    "healthy_streams": len(healthy),
                    "healthy_delivered_during_outage_within_secs": round(
                        delivered_during_outage_secs, 2
                    ),
                    "dead_shard_streams_back_after_secs": round(back_after_secs, 2),
                    **report.__dict__,
                }
            ),
        )
        assert (report.gaps, report.duplicates, report.reorders, report.mismatched) == (0, 0, 0, 0)
        assert report.received == report.expected_deliveries
        assert report.reconnects == 0  # no socket had to reconnect
        heads = harness.heads()
        for index, client in enumerate(harness.clients):
            told = harness.told_lost(client)
            for stream in harness.streams_of(index):
                live_epoch = heads[stream][0]
                start_epoch = harness.start_positions[index][stream][0]
                held = start_epoch not in (None, live_epoch) or any(
                    f.get("epoch") != live_epoch for f in client.received.get(stream, [])
                )
                if stream in on_victim and held:
                    assert stream in told, (index, stream)  # the lost epoch was announced
                if stream in healthy:
                    assert stream not in told, (index, stream)  # nothing happened to it
    finally:
        await harness.close()
