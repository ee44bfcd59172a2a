"""The Redis broker: the one owner of Switchboard's Redis connections, keys, scripts and errors.

Modelled on centrifuge's RedisBroker: streams (publish with a seq, history, positions, delivery
marks), the archive queue (what archived streams send on to the database), the per-group socket
counts, rate-limit counters, and the primitives presence builds on, each one round trip or
script. One connection pool per event loop and shard (Daphne runs one loop per process), whose
script calls share one connection and go out together (autopipeline.py); sync code (views,
commands, task workers) publishes through a blocking client per thread, with no event loop.
Every Redis failure leaves a broker call as `BrokerUnavailable`.

Shards: with several Redis (REDIS_URLS, or several Sentinel groups), each stream lives on one,
chosen by its Redis Cluster slot (CRC16 of its name, which is also the hash tag of all its keys)
in even slot ranges, as a cluster splits its 16384 slots: every key of a stream, its pub/sub
channel and its group's counts are on that shard, and so is everything keyed by another name
(a user's sockets by their user stream, a process's channel by its id, a limit by its key).
Every call says where it goes (`on`: a stream or other routing name, or a shard's index); calls
about several streams go to their shards at once, and one shard down fails only what lives
there.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis import ConnectionPool
from redis import Redis as SyncRedis
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.exceptions import ResponseError

from realtime.broker import frames, scripts
from realtime.broker.autopipeline import AutoPipeline
from realtime.broker.connections import (
    RedisAddress,
    client_for,
    close_client,
    sync_pool_for,
)
from realtime.broker.errors import BrokerUnavailable, translated
from realtime.broker.keys import Keys, stream_of_group

T = TypeVar("T")
R = TypeVar("R")
# Where a call goes: a stream's name (or any other routing name: a user stream, a process id, a
# limit's key), whose shard is its hash's; or a shard's index.
Route = str | int

# Below this many entries a stream's history is trimmed exactly (XADD MAXLEN =). `MAXLEN ~` only
# drops whole nodes of the stream's radix tree (stream-node-max-entries, 100 by default), so a
# kind keeping 5 kept all of 50 in a test; from 1000 on it keeps at most a tenth more than asked,
# and `~` is the cheaper trim.
EXACT_TRIM_BELOW = 1000
# Groups per pipeline in the membership heartbeat (two commands each): one pipeline for every
# group of a busy replica (one per user) held the event loop long enough to show in latency.
MEMBERSHIP_BATCH_GROUPS = 100
# Messages per publish_many script call: ~5 ms of Redis' time at most.
PUBLISH_MANY_CHUNK = 100
# The consumer group in which every replica's archiver reads the archive queue: each entry goes
# to one archiver, and stays pending until that one wrote it to the database (archive.py).
ARCHIVE_GROUP = "archivers"
# A stream's delivery tally outlives its newest message by this long (refreshed by each flush).
TALLY_TTL_SECS = 24 * 3600


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
    def __init__(
        self,
        address: RedisAddress | str | Sequence[RedisAddress | str],
        *,
        prefix: str = "sb",
        client_name: str | None = None,
        timeout: float = 3.0,
    ) -> None:
        given = [address] if isinstance(address, RedisAddress | str) else list(address)
        if not given:
            raise ValueError("the broker needs at least one Redis")
        self.shards: tuple[RedisAddress, ...] = tuple(
            a if isinstance(a, RedisAddress) else RedisAddress(a) for a in given
        )
        self.keys = Keys(prefix)
        self._descriptions = [
            f"shard {i} ({a.describe()})" if len(self.shards) > 1 else a.describe()
            for i, a in enumerate(self.shards)
        ]
        # What Redis' CLIENT LIST calls our connections: "switchboard:<replica>" from the layer.
        self.client_name = client_name
        self._clients: dict[asyncio.AbstractEventLoop, dict[int, aioredis.Redis]] = {}
        # Seconds Redis has to answer a call: a script or a read through the automatic pipeline,
        # or any command of sync code (then BrokerUnavailable).
        self.timeout = timeout
        # For sync code: a pool per shard, and each thread's own client holding one connection
        # of it (made on first use).
        self._sync_pools: dict[int, ConnectionPool] = {}
        self._sync_lock = threading.Lock()
        self._thread = threading.local()
        self._tasks: dict[asyncio.AbstractEventLoop, set[asyncio.Task[None]]] = {}
        self._pipelines: dict[asyncio.AbstractEventLoop, dict[int, AutoPipeline]] = {}

    # --- shards ----------------------------------------------------------------------------------

    @property
    def shard_count(self) -> int:
        return len(self.shards)

    def shard_of(self, on: Route) -> int:
        """The shard a stream (or other routing name) lives on, or `on` itself for an index:
        its slot's place among REDIS_CLUSTER_HASH_SLOTS split evenly, so the mapping is stable
        for a given number of shards and needs no table."""
        if isinstance(on, int):
            if not 0 <= on < len(self.shards):
                raise IndexError(f"shard {on} of {len(self.shards)}")
            return on
        if len(self.shards) == 1:
            return 0
        return key_slot(on.encode()) * len(self.shards) // REDIS_CLUSTER_HASH_SLOTS

    def describe(self, shard: int) -> str:
        """A shard for logs and errors: its index (when there are several) and address, never
        a password. Made once: every call's error context names its shard."""
        return self._descriptions[shard]

    async def each_shard(
        self,
        items: Iterable[T],
        route: Callable[[T], Route],
        work: Callable[[int, list[T]], Awaitable[R]],
        *,
        failures: list[BrokerUnavailable] | None = None,
    ) -> list[tuple[list[T], R]]:
        """Run `work(shard, its items)` on each shard that has any of `items`, concurrently;
        the batches with their results. Every shard has its turn even when one fails: one shard
        down must not stop the others' writes. The first failure is raised after them, or, given
        a `failures` list, put there (the failed batches are left out of the results)."""
        by_shard: dict[int, list[T]] = {}
        for item in items:
            by_shard.setdefault(self.shard_of(route(item)), []).append(item)
        if len(by_shard) == 1:  # the common case, and the only one with one Redis: no tasks
            ((shard, batch),) = by_shard.items()
            try:
                return [(batch, await work(shard, batch))]
            except BrokerUnavailable as exc:
                if failures is None:
                    raise
                failures.append(exc)
                return []
        results = await asyncio.gather(
            *(work(shard, batch) for shard, batch in by_shard.items()), return_exceptions=True
        )
        done = []
        for batch, result in zip(by_shard.values(), results, strict=True):
            if isinstance(result, BrokerUnavailable) and failures is not None:
                failures.append(result)
            elif isinstance(result, BaseException):
                raise result
            else:
                done.append((batch, result))
        return done

    # --- connections -----------------------------------------------------------------------------

    def redis(self, on: Route = 0) -> aioredis.Redis:
        """This event loop's client for the shard of `on` (a pool of up to MAX_REDIS_CONNECTIONS
        connections, to the one Redis or to the Sentinel group's primary: connections.py). The
        default, shard 0, is the only one when there is one."""
        shard = self.shard_of(on)
        loop = asyncio.get_running_loop()
        clients = self._clients.setdefault(loop, {})
        client = clients.get(shard)
        if client is None:
            # One per loop and shard, kept for the loop's life: production has one loop per
            # process. (A client of a closed loop cannot be closed any more, only dropped, and
            # dropping it makes redis-py warn about unclosed connections, so the few of tests
            # stay.)
            client = clients[shard] = client_for(self.shards[shard], client_name=self.client_name)
        return client

    def sync_redis(self, on: Route = 0) -> SyncRedis:
        """This thread's blocking client for the shard of `on`. Each thread keeps a connection
        of its own: taking one from a shared pool on every call (a lock, and a poll of the
        socket) cost a third of a sync publish. A thread that ends gives its connection back
        to the pool; a forked child makes its own."""
        shard = self.shard_of(on)
        local = self._thread
        clients: dict[int, SyncRedis] | None = getattr(local, "clients", None)
        if clients is None or local.pid != os.getpid():
            clients = local.clients = {}
            local.pid = os.getpid()
        client = clients.get(shard)
        if client is None:
            client = clients[shard] = SyncRedis(
                connection_pool=self._sync_pool(shard), single_connection_client=True
            )
        return client

    def _sync_pool(self, shard: int) -> ConnectionPool:
        with self._sync_lock:
            pool = self._sync_pools.get(shard)
            if pool is None:
                pool = self._sync_pools[shard] = sync_pool_for(
                    self.shards[shard], client_name=self.client_name, timeout=self.timeout
                )
            return pool

    def close_sync(self) -> None:
        """Close the blocking clients' connections (a test's end; a process exits without). A
        thread's client used after this connects again."""
        with self._sync_lock:
            pools, self._sync_pools = self._sync_pools, {}
        self._thread = threading.local()
        for pool in pools.values():
            pool.disconnect()
            for sentinel in getattr(getattr(pool, "sentinel_manager", None), "sentinels", ()):
                sentinel.close()

    def autopipeline(self, shard: int) -> AutoPipeline:
        """This event loop's automatic pipeline to `shard`: the script calls (publishes above
        all) of the loop share one connection and go out together (autopipeline.py)."""
        pipelines = self._pipelines.setdefault(asyncio.get_running_loop(), {})
        pipeline = pipelines.get(shard)
        if pipeline is None:
            pipeline = pipelines[shard] = AutoPipeline(
                self.redis(shard).connection_pool, timeout=lambda: self.timeout
            )
        return pipeline

    def has_client(self) -> bool:
        """Whether this event loop has its clients: made by the first call, dropped by close()."""
        return bool(self._clients.get(asyncio.get_running_loop()))

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
        for pipeline in self._pipelines.pop(loop, {}).values():
            await pipeline.close()
        for client in self._clients.pop(loop, {}).values():
            await close_client(client)

    async def ping(self) -> None:
        """Every shard answers, or BrokerUnavailable naming those that did not."""
        down = [row for row in await self.shard_health() if not row["reachable"]]
        if down:
            raise BrokerUnavailable(
                "ping: " + "; ".join(f"{row['where']}: {row['error']}" for row in down)
            )

    async def shard_health(self, *, timeout: float = 2.0) -> list[dict[str, Any]]:
        """Each shard's answer to PING, asked at once: where it is, whether it answered, the
        error's class if not, and how long it took."""

        async def probe(shard: int) -> dict[str, Any]:
            started = time.perf_counter()
            error = None
            try:
                with translated(f"ping {self.describe(shard)}"):
                    await asyncio.wait_for(self.redis(shard).ping(), timeout)
            except (BrokerUnavailable, TimeoutError) as exc:
                error = (exc.__cause__ or exc).__class__.__name__
            return {
                "shard": shard,
                "where": self.describe(shard),
                "reachable": error is None,
                "error": error,
                "latency_ms": round((time.perf_counter() - started) * 1000, 2),
            }

        return list(await asyncio.gather(*(probe(i) for i in range(len(self.shards)))))

    async def pipelined(self, queue: Callable[[Any], None], *, what: str, on: Route) -> list[Any]:
        """Run what `queue` adds to a pipeline on the shard of `on`, in one round trip
        (scripts.pipelined)."""
        shard = self.shard_of(on)
        with translated(f"{what} on {self.describe(shard)}"):
            return await scripts.pipelined(self.redis(shard), queue)

    async def run(
        self, script: scripts.Script, keys: list[str], args: list[Any], *, on: Route
    ) -> Any:
        shard = self.shard_of(on)
        with translated(f"{script.name} on {self.describe(shard)}"):
            return await scripts.run(
                self.autopipeline(shard), self.redis(shard), script, keys, args
            )

    # --- streams ---------------------------------------------------------------------------------

    def idempotency_key(self, scope: str, key: str) -> str:
        """A publisher's key, scoped (`scope`: who publishes), as `publish` takes it. The Redis
        key is made there, under the stream's hash tag: the same key on another stream is
        another publish."""
        return f"{scope}:{key}"

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
        keys, args = self._publish_call(stream, group, body, message_id, idempotency, policy)
        return _appended(await self.run(scripts.PUBLISH, keys, args, on=stream))

    async def publish_many(self, messages: Sequence[dict[str, Any]]) -> list[Appended]:
        """`publish` for several messages (each a dict of `publish`'s arguments), in the order
        given: each shard's in one script call (lua/publish_many.lua), every message as atomic
        as a publish of its own, the shards' calls made together. A batch of pushes to many
        users costs one call and one reply per shard instead of one per message. Like a single
        publish, a call whose connection failed under it is made once more (an idempotency key
        per message makes that harmless)."""
        calls = [self._publish_call(**message) for message in messages]

        async def on_shard(shard: int, indexes: list[int]) -> list[Appended]:
            # In calls of PUBLISH_MANY_CHUNK: Redis runs a script to its end, and other clients'
            # commands wait meanwhile.
            chunks = [
                indexes[start : start + PUBLISH_MANY_CHUNK]
                for start in range(0, len(indexes), PUBLISH_MANY_CHUNK)
            ]
            # One after another: a chunk that fails stops those after it, so a user's later
            # pushes never go out ahead of earlier ones that a retry will send.
            replies = []
            for chunk in chunks:
                keys = [key for index in chunk for key in calls[index][0]]
                args = [arg for index in chunk for arg in calls[index][1]]
                replies.append(await self.run(scripts.PUBLISH_MANY, keys, args, on=shard))
            return [
                _appended(reply[7 * n : 7 * n + 7])
                for chunk, reply in zip(chunks, replies, strict=True)
                for n in range(len(chunk))
            ]

        def route(index: int) -> str:
            return str(messages[index]["stream"])

        appended: dict[int, Appended] = {}
        for indexes, results in await self.each_shard(range(len(messages)), route, on_shard):
            appended.update(zip(indexes, results, strict=True))
        return [appended[index] for index in range(len(messages))]

    def publish_sync(
        self,
        *,
        stream: str,
        group: str,
        body: str,
        message_id: str,
        idempotency: str | None,
        policy: StreamPolicy,
    ) -> Appended:
        """`publish` for sync code (a view, an admin action, a task, a command): the same script
        through a blocking client, on the calling thread, with no event loop and no hand-off to
        another thread. Waits for Redis at most `timeout` seconds."""
        keys, args = self._publish_call(stream, group, body, message_id, idempotency, policy)
        shard = self.shard_of(stream)
        with translated(f"{scripts.PUBLISH.name} on {self.describe(shard)}"):
            reply = scripts.run_sync(self.sync_redis(shard), scripts.PUBLISH, keys, args)
        return _appended(reply)

    def _publish_call(
        self,
        stream: str,
        group: str,
        body: str,
        message_id: str,
        idempotency: str | None,
        policy: StreamPolicy,
    ) -> tuple[list[str], list[Any]]:
        """The publish script's keys and arguments."""
        if len(self.shards) > 1 and self.shard_of(stream_of_group(group)) != self.shard_of(stream):
            # The layer subscribes to a group on its stream's shard (keys.stream_of_group): a
            # group of another shard would be published where none of its members listen.
            raise ValueError(f"group {group!r} does not live on stream {stream!r}'s shard")
        keys = [
            self.keys.stream_meta(stream),
            self.keys.stream_log(stream),
            self.keys.members(stream),
            self.keys.idempotency(stream, idempotency) if idempotency else "",
            self.keys.archive_queue() if policy.archive else "",
        ]
        args = [
            os.urandom(6).hex(),  # the epoch, should the script create the stream
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
        return keys, args

    async def heads(self, streams: list[str]) -> dict[str, Position]:
        """Each stream's current position, in one round trip per shard."""
        rows = await self._batched(
            streams,
            _itself,
            lambda stream: ("HMGET", self.keys.stream_meta(stream), "epoch", "seq"),
            what="heads",
        )
        heads = {
            s: Position(_text(epoch) if epoch else None, int(seq or 0)) for s, (epoch, seq) in rows
        }
        return {stream: heads[stream] for stream in streams}

    async def _batched(
        self,
        items: Iterable[T],
        route: Callable[[T], Route],
        command: Callable[[T], tuple[Any, ...]],
        *,
        what: str,
    ) -> list[tuple[T, Any]]:
        """`command(item)` for each item, each shard's in one batch through its automatic
        pipeline (retried once on a failed connection); (item, reply) pairs. Every connect reads
        its heads this way: a redis-py pipeline of its own cost a connect ~0.2 ms more."""

        async def on_shard(shard: int, batch: list[T]) -> list[Any]:
            commands = [command(item) for item in batch]
            with translated(f"{what} on {self.describe(shard)}"):
                pipeline = self.autopipeline(shard)
                return await scripts.retried(
                    pipeline.call_many, commands, deadline=pipeline.deadline()
                )

        return [
            (item, reply)
            for batch, replies in await self.each_shard(items, route, on_shard)
            for item, reply in zip(batch, replies, strict=True)
        ]

    async def read(
        self, stream: str, *, after: int, upto: int | None = None, limit: int = 500
    ) -> list[tuple[int, str]]:
        """Frames with after < seq <= upto (or to the end), oldest first, at most `limit`."""
        # redis-py types replies loosely; these are lists of (b"<seq>-0", {b"f": …, b"t": …}).
        entries: Any
        with translated("history read"):
            entries = await self.redis(stream).xrange(
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
        """Several marks, (stream, field, epoch, seq) each: one script call per shard, through
        the automatic pipeline (a pipeline of a call per mark cost a delivering replica ~16% of
        its CPU under single pushes, most of it redis-py's per-command Python)."""
        for _, field, _, _ in marks:
            if field not in ("delivered", "acked"):
                raise ValueError(f"a delivery mark is 'delivered' or 'acked', not {field!r}")

        async def on_shard(shard: int, batch: list[tuple[str, str, str, int]]) -> None:
            keys = [self.keys.stream_meta(stream) for stream, _, _, _ in batch]
            args = [arg for _, field, epoch, seq in batch for arg in (epoch, field, seq)]
            await self.run(scripts.MARK, keys, args, on=shard)

        await self.each_shard(marks, _first, on_shard)

    async def tally_many(self, counts: list[tuple[str, str, int, str, int]]) -> None:
        """Add (stream, epoch, seq, "d" | "a", n) to the streams' tallies, a pipeline per
        shard; each tally lives as long as its stream's history could (HISTORY age)."""

        async def on_shard(shard: int, batch: list[tuple[str, str, int, str, int]]) -> None:
            def queue(pipe: Any) -> None:
                for stream, epoch, seq, field, n in batch:
                    pipe.hincrby(self.keys.stream_tally(stream), f"{field}:{epoch}:{seq}", n)
                for stream in {row[0] for row in batch}:
                    pipe.expire(self.keys.stream_tally(stream), TALLY_TTL_SECS)

            await self.pipelined(queue, what="delivery tallies", on=shard)

        await self.each_shard(counts, _first_of_five, on_shard)

    async def ledger(self, stream: str, *, count: int = 100) -> dict[str, Any]:
        """The last `count` messages of a stream, each marked sent / delivered / acknowledged
        (a user stream's marks), with how many sockets each was delivered to and acknowledged
        by (a tallied stream's counts, delivery/tallies.py; 0 for others)."""
        meta: Any
        entries: Any
        tally: Any
        with translated("ledger"):
            meta = await self.redis(stream).hgetall(self.keys.stream_meta(stream))
            entries = await self.redis(stream).xrevrange(self.keys.stream_log(stream), count=count)
            tally = await self.redis(stream).hgetall(self.keys.stream_tally(stream))
        delivered = int(meta.get(b"delivered", 0))
        acked = int(meta.get(b"acked", 0))
        epoch = _text(meta[b"epoch"]) if b"epoch" in meta else ""
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
                    "delivered_to": int(tally.get(f"d:{epoch}:{seq}".encode(), 0)),
                    "acked_by": int(tally.get(f"a:{epoch}:{seq}".encode(), 0)),
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
        self, consumer: str, *, shard: int, count: int, pending: bool = False
    ) -> QueuedBatch:
        """Up to `count` entries of the archive queue for `consumer`, which no other consumer of
        the group gets: new ones, or with `pending` those it read before and has not marked done
        (its write failed). The group is made the first time (and after Redis lost the queue),
        from the queue's start: what was queued before any archiver ran is archived too. Each
        shard has its queue, for the archived streams that live there."""
        _, batch = await self._archive_take(
            consumer, "0" if pending else ">", shard=shard, count=count
        )
        return batch

    async def archive_claim(
        self, consumer: str, *, shard: int, min_idle_ms: int, start: str = "0-0", count: int = 500
    ) -> tuple[str, QueuedBatch]:
        """Take over up to `count` entries that other consumers read and have not marked done
        for `min_idle_ms` (dead, or their database is down): where to continue (`0-0` once the
        whole pending list was scanned) and the entries, now `consumer`'s. Entries the cap
        dropped meanwhile leave the pending list here (XAUTOCLAIM does that)."""
        return await self._archive_take(
            consumer, "claim", shard=shard, count=count, min_idle_ms=min_idle_ms, start=start
        )

    async def _archive_take(
        self,
        consumer: str,
        what: str,
        *,
        shard: int,
        count: int,
        min_idle_ms: int = 0,
        start: str = "0-0",
    ) -> tuple[str, QueuedBatch]:
        packed = await self.run(
            scripts.ARCHIVE_TAKE,
            [self.keys.archive_queue()],
            [ARCHIVE_GROUP, consumer, count, what, min_idle_ms, start],
            on=shard,
        )
        return _unpack_queued(packed)

    async def archive_done(self, entry_ids: list[str], *, shard: int) -> None:
        """Entries written to the database: acknowledged and deleted in one round trip, so the
        queue holds only what still waits (its length is the archive's backlog)."""
        if not entry_ids:
            return
        queue = self.keys.archive_queue()

        def queue_commands(pipe: Any) -> None:
            pipe.xack(queue, ARCHIVE_GROUP, *entry_ids)
            pipe.xdel(queue, *entry_ids)

        await self.pipelined(queue_commands, what="archive queue done", on=shard)

    async def archive_backlog(self, *, shard: int | None = None) -> int:
        """Entries in the archive queue of `shard` (None: of all shards, which must all
        answer): not yet written to the database."""

        async def length(index: int) -> int:
            with translated(f"archive queue length on {self.describe(index)}"):
                return int(await self.redis(index).xlen(self.keys.archive_queue()))

        if shard is not None:
            return await length(shard)
        return sum(await asyncio.gather(*(length(i) for i in range(len(self.shards)))))

    async def archive_forget_consumers(self, *, shard: int, idle_ms: int) -> list[str]:
        """Remove the group's consumers idle that long with nothing pending (processes that
        ended: a consumer is named by its replica and process id, so every restart adds one)."""
        client = self.redis(shard)
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
        """Each stream's local socket count on `node` (by the stream its group carries: keys.py),
        valid for `valid_secs` (a dead process's counts expire); a count of 0 removes the node's
        entry. In pipelines of MEMBERSHIP_BATCH_GROUPS, so deliveries run in between; each
        shard's at once, and a shard that is down costs the others nothing."""
        expires_ms = int((time.time() + valid_secs) * 1000)

        async def on_shard(shard: int, streams: list[str]) -> None:
            # One script call per batch (lua/memberships.lua), through the automatic pipeline:
            # a redis-py pipeline of an HSET and a PEXPIRE per stream was ~5% of a replica's
            # CPU in a connect storm, most of it packing and reading replies in Python.
            for start in range(0, len(streams), MEMBERSHIP_BATCH_GROUPS):
                batch = streams[start : start + MEMBERSHIP_BATCH_GROUPS]
                keys = [self.keys.members(stream) for stream in batch]
                args = [node, expires_ms, int(valid_secs * 1000), *(counts[s] for s in batch)]
                await self.run(scripts.MEMBERSHIPS, keys, args, on=shard)

        await self.each_shard(counts, _itself, on_shard)

    # --- the username directory -------------------------------------------------------------------

    async def user_ids(self, names: list[str]) -> dict[str, int]:
        """The ids the shared directory holds for `names` (those it has), one round trip per
        shard."""
        replies = await self._batched(
            names,
            self.keys.username,
            lambda name: ("GET", self.keys.username(name)),
            what="usernames",
        )
        return {name: int(reply) for name, reply in replies if reply is not None}

    async def remember_user_ids(self, ids: dict[str, int], *, ttl_ms: int) -> None:
        """Put `ids` ({username: id}) in the shared directory for `ttl_ms`."""
        await self._batched(
            list(ids),
            self.keys.username,
            lambda name: ("SET", self.keys.username(name), ids[name], "PX", ttl_ms),
            what="usernames",
        )

    def forget_usernames_sync(self, names: Iterable[str]) -> None:
        """Drop `names` from the shared directory (a user saved or deleted, from sync code)."""
        by_shard: dict[int, list[str]] = {}
        for name in names:
            key = self.keys.username(name)
            by_shard.setdefault(self.shard_of(key), []).append(key)
        for shard, keys in by_shard.items():
            with translated(f"usernames on {self.describe(shard)}"):
                self.sync_redis(shard).delete(*keys)

    # --- rate limits ------------------------------------------------------------------------------

    async def hit(self, key: str, *, window_ms: int) -> int:
        """Count one hit on a fixed-window counter; the count in the current window."""
        return int(await self.run(scripts.LIMIT_HIT, [self.keys.limit(key)], [window_ms], on=key))


def _appended(reply: list[Any]) -> Appended:
    seq, epoch, receivers, sockets, duplicate, first_id, queued = reply
    return Appended(
        int(seq),
        _text(epoch),
        int(receivers),
        int(sockets),
        bool(duplicate),
        _text(first_id),
        int(queued),
    )


def _itself(name: str) -> str:
    return name


def _first(row: tuple[str, str, str, int]) -> str:
    return row[0]


def _first_of_five(row: tuple[str, str, int, str, int]) -> str:
    return row[0]


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
