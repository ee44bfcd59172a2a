"""The Redis broker: the one owner of Switchboard's Redis connections, keys, scripts and errors.

Modelled on centrifuge's RedisBroker: streams (publish with a seq, history, positions, delivery
marks), the per-group socket counts, rate-limit counters, and the primitives presence builds
on, each one round trip or script. One connection pool per event loop (Daphne runs one loop per
process; management commands and sync views reach us through `async_to_sync`, which may run a
loop of its own). Every Redis failure leaves a broker call as `BrokerUnavailable`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from realtime.broker import scripts
from realtime.broker.errors import translated
from realtime.broker.keys import Keys

# Command connections per process and loop: enough for Redis to pipeline a burst of publishes
# (each is one short script), few enough that 3 replicas never crowd Redis' connection table.
MAX_REDIS_CONNECTIONS = 32
# Below this many entries a stream's history is trimmed exactly (XADD MAXLEN =). `MAXLEN ~` only
# drops whole nodes of the stream's radix tree (stream-node-max-entries, 100 by default), so a
# kind keeping 5 kept all of 50 in a test; from 1000 on it keeps at most a tenth more than asked,
# and `~` is the cheaper trim.
EXACT_TRIM_BELOW = 1000
# Groups per pipeline in the membership heartbeat (two commands each): one pipeline for every
# group of a busy replica (one per user) held the event loop long enough to show in latency.
MEMBERSHIP_BATCH_GROUPS = 100


@dataclass(frozen=True)
class Position:
    """Where a stream is: its epoch (None before its first message) and last seq."""

    epoch: str | None
    seq: int


@dataclass(frozen=True)
class Appended:
    seq: int
    epoch: str
    receivers: int  # processes (replicas) subscribed to the group
    sockets: int  # sockets in the group, by the replicas' membership counts
    duplicate: bool  # an idempotency key seen before: nothing was published again
    message_id: str  # the envelope's id; for a duplicate, the first publish's


@dataclass(frozen=True)
class StreamPolicy:
    """How long a stream's history lives, and how long an idempotency key is remembered.

    `max_len` 0 keeps no history at all (a kind registered with history=False): messages are
    still numbered and published, and idempotency keys still work, but nothing is left to read
    back, so a reader that missed some is told it lost them (delivery/session.py)."""

    max_len: int
    max_age_ms: int
    idempotency_ttl_secs: int


class RedisBroker:
    def __init__(self, url: str, *, prefix: str = "sb") -> None:
        self.url = url
        self.keys = Keys(prefix)
        self._clients: dict[asyncio.AbstractEventLoop, aioredis.Redis] = {}

    # --- connections -----------------------------------------------------------------------------

    def redis(self) -> aioredis.Redis:
        """This event loop's client (a pool of up to MAX_REDIS_CONNECTIONS connections)."""
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            # One per loop, kept for the loop's life: production has one loop per process. (A
            # client of a closed loop cannot be closed any more, only dropped, and dropping it
            # makes redis-py warn about unclosed connections, so the few of tests stay.)
            # A blocking pool: a burst of concurrent publishes waits for one of a bounded number
            # of connections instead of failing with MaxConnectionsError (redis-py's default).
            # One retry on a connection error: after a Redis restart every pooled connection is
            # dead, and the first command on each would otherwise fail although Redis is back.
            # (A publish retried after its connection died mid-command may be stored twice;
            # clients that must not see that send an idempotency key.)
            pool = aioredis.BlockingConnectionPool.from_url(
                self.url,
                max_connections=MAX_REDIS_CONNECTIONS,
                timeout=5,
                socket_connect_timeout=3,
                socket_timeout=5,
                health_check_interval=0,
                retry=Retry(NoBackoff(), 1),
                retry_on_error=[RedisConnectionError],
            )
            client = self._clients[loop] = aioredis.Redis(connection_pool=pool)
        return client

    async def close(self) -> None:
        """Close this loop's connections (a test's loop ending, or a process shutting down)."""
        client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose(close_connection_pool=True)

    async def ping(self) -> None:
        with translated("ping"):
            await self.redis().ping()

    async def pipelined(self, queue: Callable[[Any], None], *, what: str) -> list[Any]:
        """Run what `queue` adds to a pipeline in one round trip (scripts.pipelined)."""
        with translated(what):
            return await scripts.pipelined(self.redis(), queue)

    async def run(self, script: scripts.Script, keys: list[str], args: list[Any]) -> Any:
        with translated(script.name):
            return await scripts.run(self.redis(), script, keys, args)

    # --- streams ---------------------------------------------------------------------------------

    def idempotency_key(self, scope: str, key: str) -> str:
        return self.keys.idempotency(scope, key)

    async def publish(
        self,
        *,
        stream: str,
        group: str,
        body: str,
        message_id: str,
        idempotency: str | None,
        policy: StreamPolicy,
    ) -> Appended:
        """Number `body` (envelope JSON without seq/epoch), keep it in the stream's history and
        PUBLISH it on its group's channel, atomically (lua/publish.lua). Because the PUBLISH
        happens inside the script, every subscriber sees a stream's frames in seq order.

        The epoch is a random id given to a stream when its meta hash is created: a Redis that
        lost its data starts streams afresh under new epochs, so a client's position from
        before is told apart from the same seq after."""
        keys = [
            self.keys.stream_meta(stream),
            self.keys.stream_log(stream),
            self.keys.members(group),
            idempotency or "",
        ]
        args = [
            uuid.uuid4().hex[:12],
            body,
            policy.max_len,
            policy.max_age_ms,
            self.keys.group_channel(group),
            stream,
            policy.idempotency_ttl_secs,
            message_id,
            "=" if policy.max_len < EXACT_TRIM_BELOW else "~",
        ]
        seq, epoch, receivers, sockets, duplicate, first_id = await self.run(
            scripts.PUBLISH, keys, args
        )
        return Appended(
            int(seq), _text(epoch), int(receivers), int(sockets), bool(duplicate), _text(first_id)
        )

    async def heads(self, streams: list[str]) -> dict[str, Position]:
        """Each stream's current position, in one round trip."""

        def queue(pipe: Any) -> None:
            for stream in streams:
                pipe.hmget(self.keys.stream_meta(stream), "epoch", "seq")

        rows = await self.pipelined(queue, what="heads") if streams else []
        return {
            stream: Position(_text(epoch) if epoch else None, int(seq or 0))
            for stream, (epoch, seq) in zip(streams, rows, strict=True)
        }

    async def read(
        self, stream: str, *, after: int, upto: int | None = None, limit: int = 500
    ) -> list[tuple[int, str]]:
        """Frames with after < seq <= upto (or to the end), oldest first, at most `limit`."""
        # redis-py types replies loosely; these are lists of (b"<seq>-0", {b"f": …, b"t": …}).
        entries: Any
        with translated("history read"):
            entries = await self.redis().xrange(
                self.keys.stream_log(stream),
                min=f"{after + 1}-0",
                max=f"{upto}-0" if upto else "+",
                count=limit,
            )
        return [
            (int(entry_id.split(b"-")[0]), fields[b"f"].decode()) for entry_id, fields in entries
        ]

    async def mark(self, stream: str, *, field: str, epoch: str, seq: int) -> None:
        """Raise the stream's `delivered` or `acked` mark to `seq` (never lowers it)."""
        await self.mark_many([(stream, field, epoch, seq)])

    async def mark_many(self, marks: list[tuple[str, str, str, int]]) -> None:
        """Several marks, (stream, field, epoch, seq) each, in one round trip."""
        for _, field, _, _ in marks:
            if field not in ("delivered", "acked"):
                raise ValueError(f"a delivery mark is 'delivered' or 'acked', not {field!r}")

        def queue(pipe: Any) -> None:
            for stream, field, epoch, seq in marks:
                scripts.MARK.queue(pipe, [self.keys.stream_meta(stream)], [epoch, field, seq])

        await self.pipelined(queue, what="delivery marks")

    async def ledger(self, stream: str, *, count: int = 100) -> dict[str, Any]:
        """The last `count` messages of a stream, each marked sent / delivered / acknowledged."""
        meta: Any
        entries: Any
        with translated("ledger"):
            meta = await self.redis().hgetall(self.keys.stream_meta(stream))
            entries = await self.redis().xrevrange(self.keys.stream_log(stream), count=count)
        delivered = int(meta.get(b"delivered", 0))
        acked = int(meta.get(b"acked", 0))
        rows = []
        for entry_id, fields in entries:
            seq = int(entry_id.split(b"-")[0])
            state = "acknowledged" if seq <= acked else "delivered" if seq <= delivered else "sent"
            rows.append(
                {
                    "seq": seq,
                    "frame": fields[b"f"].decode(),
                    "stored_at": int(fields[b"t"]),
                    "state": state,
                }
            )
        return {
            "epoch": _text(meta[b"epoch"]) if b"epoch" in meta else None,
            "seq": int(meta.get(b"seq", 0)),
            "delivered": delivered,
            "acked": acked,
            "messages": rows,
        }

    # --- group membership counts (what a publish reports as `sockets`) ------------------------

    async def write_memberships(
        self, node: str, counts: dict[str, int], *, valid_secs: float
    ) -> None:
        """Each group's local socket count on `node`, valid for `valid_secs` (a dead process's
        counts expire); a count of 0 removes the node's entry. In pipelines of
        MEMBERSHIP_BATCH_GROUPS, so deliveries run in between."""
        expires_ms = int((time.time() + valid_secs) * 1000)
        groups = list(counts)
        for start in range(0, len(groups), MEMBERSHIP_BATCH_GROUPS):
            batch = groups[start : start + MEMBERSHIP_BATCH_GROUPS]

            def queue(pipe: Any, batch: list[str] = batch) -> None:
                for group in batch:
                    key = self.keys.members(group)
                    if counts[group]:
                        pipe.hset(key, node, f"{counts[group]}@{expires_ms}")
                        pipe.pexpire(key, int(valid_secs * 1000))
                    else:
                        pipe.hdel(key, node)

            await self.pipelined(queue, what="membership counts")

    # --- rate limits ------------------------------------------------------------------------------

    async def hit(self, key: str, *, window_ms: int) -> int:
        """Count one hit on a fixed-window counter; the count in the current window."""
        return int(await self.run(scripts.LIMIT_HIT, [self.keys.limit(key)], [window_ms]))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
