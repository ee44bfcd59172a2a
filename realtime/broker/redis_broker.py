"""The Redis broker: the one owner of Switchboard's Redis connections, keys, scripts and errors.

Modelled on centrifuge's RedisBroker: streams (publish with a seq, history, positions, delivery
marks), the archive queue (what archived streams send on to the database), the per-group socket
counts, rate-limit counters, and the primitives presence builds on, each one round trip or
script. One connection pool per event loop (Daphne runs one loop per process; management
commands and sync views reach us through `async_to_sync`, which may run a loop of its own).
Every Redis failure leaves a broker call as `BrokerUnavailable`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from realtime.broker import frames, scripts
from realtime.broker.connections import RedisAddress, client_for
from realtime.broker.errors import translated
from realtime.broker.keys import Keys

# Below this many entries a stream's history is trimmed exactly (XADD MAXLEN =). `MAXLEN ~` only
# drops whole nodes of the stream's radix tree (stream-node-max-entries, 100 by default), so a
# kind keeping 5 kept all of 50 in a test; from 1000 on it keeps at most a tenth more than asked,
# and `~` is the cheaper trim.
EXACT_TRIM_BELOW = 1000
# Groups per pipeline in the membership heartbeat (two commands each): one pipeline for every
# group of a busy replica (one per user) held the event loop long enough to show in latency.
MEMBERSHIP_BATCH_GROUPS = 100
# The consumer group in which every replica's archiver reads the archive queue: each entry goes
# to one archiver, and stays pending until that one wrote it to the database (archive.py).
ARCHIVE_GROUP = "archivers"


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
    archive_queue: int = 0  # entries in the archive queue after this one (0: not archived)


@dataclass(frozen=True)
class StreamPolicy:
    """How long a stream's history lives, and how long an idempotency key is remembered.

    `max_len` 0 keeps no history at all (a kind registered with history=False): messages are
    still numbered and published, and idempotency keys still work, but nothing is left to read
    back, so a reader that missed some is told it lost them (delivery/session.py)."""

    max_len: int
    max_age_ms: int
    idempotency_ttl_secs: int
    # Also queued for the database (archive.py), in a queue trimmed to about that many entries.
    archive: bool = False
    archive_queue_max_len: int = 100_000


@dataclass(frozen=True)
class Queued:
    """A message of an archived stream, read from the archive queue: the frame as its sockets got
    it, where it sits in its stream, and when it was published (Redis' clock)."""

    entry_id: str
    stream: str
    epoch: str
    seq: int
    frame: str
    published_ms: int


@dataclass(frozen=True)
class QueuedBatch:
    """What one read or claim of the archive queue got: the messages, and every entry id to mark
    done once they are written (including entries the queue's cap dropped meanwhile, which can
    no longer be archived)."""

    messages: list[Queued]
    entry_ids: list[str]


class RedisBroker:
    def __init__(self, address: RedisAddress | str, *, prefix: str = "sb") -> None:
        self.address = address if isinstance(address, RedisAddress) else RedisAddress(address)
        self.keys = Keys(prefix)
        self._clients: dict[asyncio.AbstractEventLoop, aioredis.Redis] = {}
        self._tasks: dict[asyncio.AbstractEventLoop, set[asyncio.Task[None]]] = {}

    # --- connections -----------------------------------------------------------------------------

    def redis(self) -> aioredis.Redis:
        """This event loop's client (a pool of up to MAX_REDIS_CONNECTIONS connections, to the
        one Redis or to the Sentinel group's primary: connections.py)."""
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            # One per loop, kept for the loop's life: production has one loop per process. (A
            # client of a closed loop cannot be closed any more, only dropped, and dropping it
            # makes redis-py warn about unclosed connections, so the few of tests stay.)
            client = self._clients[loop] = client_for(self.address)
        return client

    def has_client(self) -> bool:
        """Whether this event loop has its client: made by the first call, dropped by close()."""
        return asyncio.get_running_loop() in self._clients

    def background(self, coroutine: Coroutine[Any, Any, None], *, name: str) -> asyncio.Task[None]:
        """Run `coroutine`, which calls this broker until it is cancelled (the archiver), as a
        task of this loop that close() ends first: a command still in flight when the pool is
        closed would reconnect on its retry, and leave a connection nobody closes."""
        loop = asyncio.get_running_loop()
        task = loop.create_task(coroutine, name=name)
        tasks = self._tasks.setdefault(loop, set())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return task

    async def close(self) -> None:
        """Close this loop's connections (a test's loop ending, or a process shutting down),
        after ending the background tasks that use them."""
        loop = asyncio.get_running_loop()
        tasks = self._tasks.pop(loop, set())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2)  # bounded: closing must never hang a shutdown
        client = self._clients.pop(loop, None)
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
            self.keys.archive_queue() if policy.archive else "",
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
            policy.archive_queue_max_len,
        ]
        seq, epoch, receivers, sockets, duplicate, first_id, queued = await self.run(
            scripts.PUBLISH, keys, args
        )
        return Appended(
            int(seq),
            _text(epoch),
            int(receivers),
            int(sockets),
            bool(duplicate),
            _text(first_id),
            int(queued),
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

    # --- the archive queue (archived streams' messages on their way to the database) ----------

    async def archive_read(
        self, consumer: str, *, count: int, pending: bool = False
    ) -> QueuedBatch:
        """Up to `count` entries of the archive queue for `consumer`, which no other consumer of
        the group gets: new ones, or with `pending` those it read before and has not marked done
        (its write failed). The group is made the first time (and after Redis lost the queue),
        from the queue's start: what was queued before any archiver ran is archived too."""
        _, batch = await self._archive_take(consumer, "0" if pending else ">", count=count)
        return batch

    async def archive_claim(
        self, consumer: str, *, min_idle_ms: int, start: str = "0-0", count: int = 500
    ) -> tuple[str, QueuedBatch]:
        """Take over up to `count` entries that other consumers read and have not marked done
        for `min_idle_ms` (dead, or their database is down): where to continue (`0-0` once the
        whole pending list was scanned) and the entries, now `consumer`'s. Entries the cap
        dropped meanwhile leave the pending list here (XAUTOCLAIM does that)."""
        return await self._archive_take(
            consumer, "claim", count=count, min_idle_ms=min_idle_ms, start=start
        )

    async def _archive_take(
        self, consumer: str, what: str, *, count: int, min_idle_ms: int = 0, start: str = "0-0"
    ) -> tuple[str, QueuedBatch]:
        packed = await self.run(
            scripts.ARCHIVE_TAKE,
            [self.keys.archive_queue()],
            [ARCHIVE_GROUP, consumer, count, what, min_idle_ms, start],
        )
        return _unpack_queued(packed)

    async def archive_done(self, entry_ids: list[str]) -> None:
        """Entries written to the database: acknowledged and deleted in one round trip, so the
        queue holds only what still waits (its length is the archive's backlog)."""
        if not entry_ids:
            return
        queue = self.keys.archive_queue()

        def queue_commands(pipe: Any) -> None:
            pipe.xack(queue, ARCHIVE_GROUP, *entry_ids)
            pipe.xdel(queue, *entry_ids)

        await self.pipelined(queue_commands, what="archive queue done")

    async def archive_backlog(self) -> int:
        """Entries in the archive queue: not yet written to the database."""
        with translated("archive queue length"):
            return int(await self.redis().xlen(self.keys.archive_queue()))

    async def archive_forget_consumers(self, *, idle_ms: int) -> list[str]:
        """Remove the group's consumers idle that long with nothing pending (processes that
        ended: a consumer is named by its replica and process id, so every restart adds one)."""
        client = self.redis()
        queue = self.keys.archive_queue()
        consumers: Any
        with translated("archive consumers"):
            try:
                consumers = await client.xinfo_consumers(queue, ARCHIVE_GROUP)
            except ResponseError:
                return []  # no queue or no group yet
            gone = [
                _text(c["name"]) for c in consumers if c["pending"] == 0 and c["idle"] >= idle_ms
            ]
            for name in gone:
                await client.xgroup_delconsumer(queue, ARCHIVE_GROUP, name)
        return gone

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


def _unpack_queued(packed: bytes) -> tuple[str, QueuedBatch]:
    """lua/archive_take.lua's reply: b"<next start>\n" then b"<id> <length>\n<message>" per
    entry, the message as PUBLISHed (frames.decode_message); length 0 for an entry the cap
    dropped after it was read, which is only marked done."""
    first = packed.index(b"\n")
    next_start = packed[:first].decode()
    messages, entry_ids = [], []
    position = first + 1
    while position < len(packed):
        line_end = packed.index(b"\n", position)
        entry_id, length = packed[position:line_end].decode().split(" ")
        position = line_end + 1 + int(length)
        entry_ids.append(entry_id)
        if length != "0":
            stream, seq, epoch, frame = frames.decode_message(packed[line_end + 1 : position])
            # An automatic entry id is "<Redis' clock in ms>-<n>": when it was published.
            published_ms = int(entry_id.partition("-")[0])
            messages.append(Queued(entry_id, stream, epoch, seq, frame, published_ms))
    return next_start, QueuedBatch(messages, entry_ids)
