"""What a failover may lose, made visible: a real primary and its replica, the replica promoted
after the primary acknowledged messages it never got (Redis replicates asynchronously).

The promoted Redis has a new replication id, so the publish script starts the stream's next
epoch instead of numbering on: the seqs the lost messages had are never given to other
messages, and the old epoch's log and delivery marks go with it. A Redis that keeps its
replication id (no failover) keeps the epoch.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from devtools.cluster import ManagedProcess, free_port, wait_until
from devtools.redis_topology import redis_server_argv
from realtime.broker import RedisBroker, StreamPolicy
from tests.conftest import require_binaries

POLICY = StreamPolicy(max_len=100, max_age_ms=60_000, idempotency_ttl_secs=60)


def _start(name: str, run_dir: Path, *extra: str) -> ManagedProcess:
    port = free_port()
    argv = [*redis_server_argv(port, run_dir, name=name, persistence=False), *extra]
    process = ManagedProcess(
        name=name, argv=argv, env=dict(os.environ), log_path=run_dir / f"{name}.log", port=port
    )
    process.start()
    wait_until(lambda: _answers(port), timeout=15, what=name)
    return process


def _answers(port: int) -> bool:
    try:
        return bool(redis.Redis(port=port, socket_timeout=1).ping())
    except redis.RedisError:
        return False


@pytest.fixture
def primary_and_replica(tmp_path: Path) -> Iterator[tuple[int, int]]:
    require_binaries("redis-server")
    primary = _start("primary", tmp_path)
    replica = _start("replica", tmp_path, "--replicaof", "127.0.0.1", str(primary.port))
    try:
        yield primary.port, replica.port
    finally:
        replica.stop()
        primary.stop()


async def _publish(broker: RedisBroker, stream: str, n: int) -> tuple[int, str]:
    appended = await broker.publish(
        stream=stream,
        group=stream.replace(":", "."),
        body=f'{{"type":"message","payload":{n}}}',
        message_id=uuid.uuid4().hex,
        idempotency=None,
        policy=POLICY,
    )
    return appended.seq, appended.epoch


async def test_a_promoted_replica_that_missed_messages_starts_a_new_epoch(
    primary_and_replica: tuple[int, int],
) -> None:
    primary_port, replica_port = primary_and_replica
    prefix = f"fo{uuid.uuid4().hex[:6]}"
    on_primary = RedisBroker(f"redis://127.0.0.1:{primary_port}/0", prefix=prefix)
    on_replica = RedisBroker(f"redis://127.0.0.1:{replica_port}/0", prefix=prefix)
    replica = redis.Redis(port=replica_port, socket_timeout=2)
    try:
        stream = "room:failover"
        first = [await _publish(on_primary, stream, n) for n in (1, 2, 3)]
        old_epoch = first[0][1]
        assert first == [(1, old_epoch), (2, old_epoch), (3, old_epoch)]
        wait_until(
            lambda: replica.hget(on_primary.keys.stream_meta(stream), "seq") == b"3",
            timeout=10,
            what="seq 3 replicated",
        )
        # The replica stops following (as a partition would), then the primary acknowledges
        # two more messages that the replica never gets: they are lost at the promotion.
        replica.replicaof("NO", "ONE")
        assert [await _publish(on_primary, stream, n) for n in (4, 5)] == [
            (4, old_epoch),
            (5, old_epoch),
        ]
        assert (await on_replica.heads([stream]))[stream].seq == 3

        # The promoted replica numbers the next message in a new epoch, from 1: seq 4 is
        # never a second message, and the old epoch's log is gone with it.
        seq, epoch = await _publish(on_replica, stream, 6)
        assert (seq, epoch != old_epoch) == (1, True)
        entries = await on_replica.redis().xrange(on_replica.keys.stream_log(stream))
        assert [entry_id for entry_id, _ in entries] == [b"1-0"]
        # Without another failover the epoch stays.
        assert await _publish(on_replica, stream, 7) == (2, epoch)
    finally:
        replica.close()
        await on_primary.close()
        await on_replica.close()


async def test_a_stream_from_before_replication_ids_were_kept_keeps_its_epoch(
    primary_and_replica: tuple[int, int],
) -> None:
    primary_port, _ = primary_and_replica
    the_broker = RedisBroker(f"redis://127.0.0.1:{primary_port}/0", prefix="legacy")
    try:
        meta = the_broker.keys.stream_meta("broadcast")
        await the_broker.redis().hset(meta, mapping={"epoch": "oldepoch0001", "seq": 41})
        assert await _publish(the_broker, "broadcast", 42) == (42, "oldepoch0001")
        assert await the_broker.redis().hget(meta, "gen") is not None
    finally:
        await the_broker.close()
