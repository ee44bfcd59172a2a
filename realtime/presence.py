"""Who is online, per stream and per user, across replicas — without trusting disconnect() to run.

Presence is kept for the streams whose kind has it (`presence=True` when the kind is registered,
realtime/streams.py: the chat's `room:<slug>`, a project's own kinds), never for the core's
user, broadcast and ops streams. Every connection has an entry that expires unless its replica
refreshes it on a heartbeat: one in each such stream it reads and one in its user's set, which
is also how many sockets the user has open (realtime/broker/keys.py lists the keys; the scripts
are realtime/broker/lua/presence_*).

A user is on a stream while any of their entries there has not expired. Each process (each
event loop) has one heartbeat task for all its connections: every beat it refreshes all their
entries in one pipeline and sweeps each stream it has connections on, once. (A new
connection's user entry is written by its admission, which also marks the user seen; its
entries on presence streams within 50 ms, in one pipeline with every other connection
registered meanwhile; a stream subscribed later is written at once.) A replica that
dies without running disconnect() stops refreshing; the next sweep by a live replica with a
connection on that stream removes the expired entries and announces who left, within one TTL.
Join/leave are decided inside Lua scripts, so two replicas sweeping at once announce a leave
once. However a socket ends (close, unsubscribe, access revoked, kicked), Session.release() or
leave() removes its entries; what a dead replica leaves behind expires.

Events are ephemeral frames on the stream itself (no seq, no history):
  {"type": "presence", "event": "join" | "leave", "user", "user_id", "stream", "origin"}
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

from django.conf import settings

from realtime import broker, groups, publish, streams
from realtime.broker import BrokerUnavailable, RedisBroker, scripts
from realtime.broker.errors import translated

logger = logging.getLogger(__name__)

# 5 s: presence changes show within seconds; a dead replica's users go offline within the TTL.
DEFAULT_HEARTBEAT_SECS = 5.0
# Three missed heartbeats before an entry counts as dead: one slow beat is not a departure.
TTL_HEARTBEATS = 3
# 50 ms: a connect storm's new connections are written in one pipeline per 50 ms instead of
# one per connection, and a page still shows the join at once.
REGISTER_FLUSH_SECS = 0.05
# 50 connections (a few hundred commands) per pipeline: building and reading one holds the
# event loop, and deliveries wait meanwhile. A beat over 333 sockets in one pipeline held it for
# ~100 ms, which showed as the p99 latency of pushes; in pieces, deliveries run in between.
BATCH_CONNECTIONS = 50


def heartbeat_secs() -> float:
    return float(getattr(settings, "PRESENCE_HEARTBEAT_SECS", DEFAULT_HEARTBEAT_SECS))


def ttl_ms() -> int:
    return int(heartbeat_secs() * TTL_HEARTBEATS * 1000)


def _broker() -> RedisBroker:
    return broker.current()


def _stream_key(stream: str) -> str:
    return _broker().keys.presence_stream(stream)


def _user_key(user_id: int) -> str:
    return _broker().keys.presence_user(user_id)


def _user_route(user_id: int) -> str:
    """A user's keys live on their user stream's shard (broker/keys.py)."""
    return groups.user_stream(user_id)


async def _run(script: scripts.Script, keys: list[str], args: list[Any], *, on: str) -> Any:
    return await _broker().run(script, keys, args, on=on)


async def _pipelined(queue: Callable[[Any], None], *, on: str | int) -> list[Any]:
    """One round trip through the broker (which loads the scripts after a NOSCRIPT) to the
    shard of `on`."""
    return await _broker().pipelined(queue, what="presence", on=on)


def _key_ttl(ttl: int) -> int:
    # Only garbage collection of idle keys: long enough that a sweep still finds expired
    # entries (to announce their leave) after their whole stream went quiet.
    return 2 * ttl + 60_000


def now_ms() -> int:
    return int(time.time() * 1000)


def has_presence(stream: str) -> bool:
    """Whether presence is kept for `stream` (its kind says so: realtime/streams.py)."""
    return streams.policy_for(stream).presence


# --- the operations (each one Redis round trip or script) ---------------------------------------


def _join_args(*, user_id: int, conn: str, now: int, ttl: int) -> list[Any]:
    return [f"{user_id}:", f"{user_id}:{conn}", now + ttl, now, _key_ttl(ttl)]


async def stream_enter(
    *, stream: str, user_id: int, username: str, conn: str, ttl: int | None = None
) -> bool:
    """Add or refresh a connection's entry; True when the user was not on the stream before."""
    ttl = ttl or ttl_ms()
    args = _join_args(user_id=user_id, conn=conn, now=now_ms(), ttl=ttl)
    joined = await _run(scripts.PRESENCE_JOIN, [_stream_key(stream)], args, on=stream)
    return bool(joined)


async def stream_exit(*, stream: str, user_id: int, conn: str) -> bool:
    """Remove a connection's entry; True when it was the user's last one on the stream."""
    args = [f"{user_id}:", f"{user_id}:{conn}", now_ms()]
    left = await _run(scripts.PRESENCE_LEAVE, [_stream_key(stream)], args, on=stream)
    return bool(left)


async def stream_sweep(*, stream: str, now: int | None = None) -> list[int]:
    """Drop expired entries; the ids of users who thereby left the stream."""
    gone = await _run(scripts.PRESENCE_SWEEP, [_stream_key(stream)], [now or now_ms()], on=stream)
    return [int(uid) for uid in gone]


async def stream_online(*, stream: str) -> list[int]:
    """Ids of the users with a live connection on the stream."""
    members: Any
    with translated("presence"):
        members = await _broker().redis(stream).zrangebyscore(_stream_key(stream), now_ms(), "+inf")
    return sorted({int(m.split(b":", 1)[0]) for m in members})


def _queue_touch(pipe: Any, conns: Iterable[tuple[int, str, str]], *, now: int, ttl: int) -> None:
    """Queue on `pipe` what marks each (user id, username, connection id) alive: users whose
    keys live on the pipeline's shard."""
    users: dict[int, tuple[str, dict[str, int]]] = {}
    for user_id, username, conn in conns:
        users.setdefault(user_id, (username, {}))[1][conn] = now + ttl
    if not users:
        return
    # One script call for all of them (lua/presence_touch.lua): three commands per user in a
    # redis-py pipeline, packed and answered in Python, cost a beat 43-66 µs per socket.
    keys = _broker().keys
    touched = [_user_key(user_id) for user_id in users]
    args: list[Any] = [now, _key_ttl(ttl)]
    for user_id, (username, expiries) in users.items():
        args += [user_id, username, len(expiries)]
        for conn, expiry in expiries.items():
            args += [conn, expiry]
    scripts.PRESENCE_TOUCH.queue(
        pipe, [*touched, keys.presence_seen(), keys.presence_names()], args
    )


async def user_touch(*, user_id: int, username: str, conn: str, ttl: int | None = None) -> None:
    """Mark a connection of the user alive (user-level status) and remember when."""
    ttl = ttl or ttl_ms()
    now = now_ms()
    await _pipelined(
        lambda pipe: _queue_touch(pipe, [(user_id, username, conn)], now=now, ttl=ttl),
        on=_user_route(user_id),
    )


async def user_admit(
    *, user_id: int, username: str, conn: str, limit: int, ttl: int | None = None
) -> bool:
    """Register a new socket of the user, unless they have `limit` live sockets already (on any
    replica). Its entry is the one the heartbeat refreshes and close() removes; admitted, the
    user is marked seen and named as the heartbeat's touch does."""
    ttl = ttl or ttl_ms()
    now = now_ms()
    keys = _broker().keys
    args = [conn, now + ttl, now, limit, _key_ttl(ttl), user_id, username]
    admitted = await _run(
        scripts.PRESENCE_ADMIT,
        [_user_key(user_id), keys.presence_seen(), keys.presence_names()],
        args,
        on=_user_route(user_id),
    )
    return bool(admitted)


async def user_sockets(*, user_id: int) -> dict[str, int]:
    """How many live sockets the user has on each replica (from their admission entries)."""
    conns: Any
    with translated("presence"):
        conns = (
            await _broker()
            .redis(_user_route(user_id))
            .zrangebyscore(_user_key(user_id), now_ms(), "+inf")
        )
    counts: dict[str, int] = {}
    for conn in conns:
        replica = conn.decode().rpartition("/")[0] or "?"
        counts[replica] = counts.get(replica, 0) + 1
    return counts


async def stream_users(*, stream: str) -> list[dict[str, Any]]:
    """The users with a live connection on the stream: [{"id", "username"}], by id."""
    ids = await stream_online(stream=stream)
    return [{"id": i, "username": n} for i, n in zip(ids, await _names(ids), strict=True)]


# --- the chat's rooms, by slug (room:<slug> is a stream like any other with presence) -----------


async def room_enter(
    *, slug: str, user_id: int, username: str, conn: str, ttl: int | None = None
) -> bool:
    return await stream_enter(
        stream=groups.room_stream(slug), user_id=user_id, username=username, conn=conn, ttl=ttl
    )


async def room_sweep(*, slug: str, now: int | None = None) -> list[int]:
    return await stream_sweep(stream=groups.room_stream(slug), now=now)


async def room_online(*, slug: str) -> list[int]:
    return await stream_online(stream=groups.room_stream(slug))


async def user_gone(*, user_id: int, conn: str) -> None:
    key, seen, now = _user_key(user_id), _broker().keys.presence_seen(), now_ms()

    def queue(pipe: Any) -> None:
        pipe.zrem(key, conn)
        pipe.hset(seen, str(user_id), now)

    await _pipelined(queue, on=_user_route(user_id))


@dataclass(frozen=True)
class UserStatus:
    user_id: int
    online: bool  # a live connection on any replica, whatever it reads
    last_seen_ms: int | None


async def user_statuses(*, user_ids: list[int]) -> dict[int, UserStatus]:
    if not user_ids:
        return {}
    now, keys = now_ms(), _broker().keys

    async def on_shard(shard: int, batch: list[int]) -> list[Any]:
        def queue(pipe: Any) -> None:
            for user_id in batch:
                pipe.zcount(keys.presence_user(user_id), now, "+inf")
            pipe.hmget(keys.presence_seen(), [str(u) for u in batch])

        return await _pipelined(queue, on=shard)

    statuses = {}
    for batch, (*counts, seen) in await _broker().each_shard(user_ids, _user_route, on_shard):
        for uid, count, last in zip(batch, counts, seen, strict=True):
            statuses[uid] = UserStatus(uid, count > 0, int(last) if last else None)
    return {uid: statuses[uid] for uid in user_ids}


async def _names(user_ids: list[int]) -> list[str]:
    key = _broker().keys.presence_names()

    async def on_shard(shard: int, batch: list[int]) -> list[Any]:
        (names,) = await _pipelined(lambda pipe: pipe.hmget(key, [str(u) for u in batch]), on=shard)
        return names  # type: ignore[no-any-return]

    found: dict[int, bytes | None] = {}
    for batch, names in await _broker().each_shard(user_ids, _user_route, on_shard):
        found.update(zip(batch, names, strict=True))
    return [name.decode() if (name := found[u]) else f"user {u}" for u in user_ids]


async def announce(*, stream: str, event: str, user_id: int, username: str) -> None:
    logger.info(
        "presence %s stream=%s user=%s replica=%s", event, stream, username, settings.REPLICA_ID
    )
    await publish.publish_ephemeral(
        stream=stream,
        frame={"type": "presence", "event": event, "user": username, "user_id": user_id},
    )


# --- many connections at once: the heartbeat's writes ------------------------------------------


def _queue_refresh(
    pipe: Any,
    conns: list[ConnectionPresence],
    entries: list[tuple[str, ConnectionPresence]],
    swept: list[str],
    *,
    now: int,
    ttl: int,
) -> None:
    _queue_touch(pipe, ((c.user_id, c.username, c.conn) for c in conns), now=now, ttl=ttl)
    for stream, conn in entries:
        args = _join_args(user_id=conn.user_id, conn=conn.conn, now=now, ttl=ttl)
        scripts.PRESENCE_JOIN.queue(pipe, [_stream_key(stream)], args)
    # After the joins: this beat's own entries are fresh when the sweeps run.
    for stream in swept:
        scripts.PRESENCE_SWEEP.queue(pipe, [_stream_key(stream)], [now])


async def _refresh(
    conns: list[ConnectionPresence],
    entries: list[tuple[str, ConnectionPresence]],
    swept: list[str],
    *,
    now: int,
    ttl: int,
) -> tuple[dict[tuple[str, ConnectionPresence], Any], dict[str, Any]]:
    """Touch `conns`' users, write `entries` and sweep `swept`: one pipeline per shard, all at
    once. What the join and sweep scripts answered, for each entry and swept stream whose shard
    answered; BrokerUnavailable if no shard did."""
    items: list[tuple[str, Any]] = [("touch", c) for c in conns]
    items += [("join", e) for e in entries] + [("sweep", s) for s in swept]

    def route(item: tuple[str, Any]) -> str:
        kind, what = item
        return _user_route(what.user_id) if kind == "touch" else what[0] if kind == "join" else what

    async def on_shard(shard: int, batch: list[tuple[str, Any]]) -> list[Any]:
        mine = {kind: [w for k, w in batch if k == kind] for kind in ("touch", "join", "sweep")}
        queue = partial(
            _queue_refresh, conns=mine["touch"], entries=mine["join"], swept=mine["sweep"],
            now=now, ttl=ttl,
        )  # fmt: skip
        replies = await _pipelined(queue, on=shard)
        return replies[len(replies) - len(mine["join"]) - len(mine["sweep"]) :]

    failures: list[BrokerUnavailable] = []
    joined: dict[tuple[str, ConnectionPresence], Any] = {}
    left: dict[str, Any] = {}
    answered = await _broker().each_shard(items, route, on_shard, failures=failures)
    if failures and not answered:
        raise failures[0]
    if failures:
        logger.debug("presence: a shard did not answer: %r", failures[0])
    for batch, replies in answered:
        # The scripts' replies come joins first, then sweeps, as _queue_refresh queued them.
        scripted = [i for i in batch if i[0] == "join"] + [i for i in batch if i[0] == "sweep"]
        for (kind, what), reply in zip(scripted, replies, strict=True):
            if kind == "join":
                joined[what] = reply
            else:
                left[what] = reply
    return joined, left


async def connections_refresh(conns: list[ConnectionPresence], *, sweep: bool) -> None:
    """Refresh every entry of `conns` (user and streams) and announce the joins the scripts
    report (a user whose entries had expired, or were lost with a Redis restart); with `sweep`,
    then sweep each of their streams once and announce who left. One pipeline per
    BATCH_CONNECTIONS."""
    joins: list[tuple[str, ConnectionPresence]] = []
    gone: list[tuple[str, int]] = []
    for start in range(0, len(conns), BATCH_CONNECTIONS):
        batch = conns[start : start + BATCH_CONNECTIONS]
        last = start + BATCH_CONNECTIONS >= len(conns)
        # Read when the batch is built, not when the beat began: a stream left meanwhile is not
        # written back.
        entries = [(stream, conn) for conn in batch for stream in conn.streams]
        swept = sorted({s for conn in conns for s in conn.streams}) if sweep and last else []
        joined, left = await _refresh(batch, entries, swept, now=now_ms(), ttl=ttl_ms())
        joins += [entry for entry in entries if joined.get(entry)]
        gone += [(s, int(uid)) for s in swept for uid in left.get(s, ())]
    for stream, conn in joins:
        await announce(stream=stream, event="join", user_id=conn.user_id, username=conn.username)
    if not gone:
        return
    names = await _names([user_id for _, user_id in gone])
    for (stream, user_id), name in zip(gone, names, strict=True):
        await announce(stream=stream, event="leave", user_id=user_id, username=name)


# --- one connection's presence, driven by the consumer ------------------------------------------


class ConnectionPresence:
    """A socket's entries: added when it subscribes to a stream with presence, refreshed by its
    process's heartbeat, removed when it unsubscribes or closes. Best effort: Redis trouble
    never breaks the socket."""

    # One per socket, so kept small: no __dict__, no task of its own.
    __slots__ = ("conn", "streams", "user_id", "username", "wanted")

    def __init__(self, *, user_id: int, username: str, scope_query: bytes = b"") -> None:
        self.user_id = user_id
        self.username = username
        # Whether the socket wants typing/presence frames: opt-in (?ephemeral=1), so that
        # clients counting stream frames are not handed frames without a seq.
        self.wanted = b"ephemeral=1" in scope_query.split(b"&")
        # "<replica>/<random>": the server API counts a user's sockets per replica from it.
        self.conn = f"{settings.REPLICA_ID}/{os.urandom(6).hex()}"
        # The streams this socket has presence on (a subset of what it reads): at most
        # MAX_STREAMS_PER_SOCKET entries, however many the client asks for.
        self.streams: set[str] = set()

    async def start(self, streams: list[str]) -> None:
        # No Redis round trip here. The user entry is the admission's (user_admit); the entries
        # on presence streams, if any, are written within REGISTER_FLUSH_SECS, in one pipeline
        # with every socket that connected meanwhile. From then on the heartbeat refreshes all.
        self.streams.update(stream for stream in streams if has_presence(stream))
        _heartbeat().add(self, flush=bool(self.streams))

    async def enter(self, stream: str) -> None:
        # Written at once, not on the next beat: the user just opened the stream's page. The
        # user-level entry goes in the same pipeline: whoever is on a stream is online.
        if not has_presence(stream):
            return
        self.streams.add(stream)
        with contextlib.suppress(BrokerUnavailable):
            joined, _ = await _refresh([self], [(stream, self)], [], now=now_ms(), ttl=ttl_ms())
            if joined.get((stream, self)):
                await self._announce(stream, "join")

    async def exit(self, stream: str) -> None:
        if stream not in self.streams:
            return
        self.streams.discard(stream)
        await _settle()
        await self._leave(stream)

    async def close(self) -> None:
        heartbeat = _heartbeats.get(asyncio.get_running_loop())
        if heartbeat is not None:
            heartbeat.discard(self)
        await _settle()
        for stream in list(self.streams):
            self.streams.discard(stream)
            await self._leave(stream)
        with contextlib.suppress(BrokerUnavailable):
            await user_gone(user_id=self.user_id, conn=self.conn)

    async def refresh(self) -> None:
        """Refresh this socket's entries and sweep its streams now (the heartbeat does it for
        all)."""
        await connections_refresh([self], sweep=True)

    async def _leave(self, stream: str) -> None:
        with contextlib.suppress(BrokerUnavailable):
            if await stream_exit(stream=stream, user_id=self.user_id, conn=self.conn):
                await self._announce(stream, "leave")

    async def _announce(self, stream: str, event: str) -> None:
        await announce(stream=stream, event=event, user_id=self.user_id, username=self.username)


# --- the heartbeat: one task per process (per event loop) for all its sockets --------------------


class _Heartbeat:
    """The live ConnectionPresence objects of one event loop, and the one task refreshing them.

    The task runs while there are sockets: it ends on the first beat that finds none, and add()
    starts it again. Sockets added between beats with entries on presence streams have them
    first written by a flush REGISTER_FLUSH_SECS later, all in one pipeline (their user entries
    are their admissions').
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.live: set[ConnectionPresence] = set()
        self.fresh: set[ConnectionPresence] = set()  # added, not yet written
        self.task: asyncio.Task[None] | None = None
        self.flusher: asyncio.Task[None] | None = None
        # Writes in flight: leaving waits for them, so that a refresh sent before a LEAVE
        # cannot land after it and bring the entry back.
        self.writes: set[asyncio.Future[None]] = set()

    def add(self, conn: ConnectionPresence, *, flush: bool = True) -> None:
        """Refresh `conn` from the next beat on; with `flush`, write its entries within
        REGISTER_FLUSH_SECS too (a socket whose entries are not all written yet)."""
        self.live.add(conn)
        if flush:
            self.fresh.add(conn)
            if self.flusher is None:
                self.flusher = self.loop.create_task(self._flush_soon(), name="presence-flush")
        if self.task is None:
            self.task = self.loop.create_task(self._beat_forever(), name="presence-heartbeat")

    def discard(self, conn: ConnectionPresence) -> None:
        self.live.discard(conn)
        self.fresh.discard(conn)

    async def settled(self) -> None:
        """Return once the writes in flight now have finished."""
        if self.writes:
            await asyncio.wait(list(self.writes))

    async def beat(self) -> None:
        """Refresh every socket's entries and sweep their streams."""
        self.fresh.clear()  # written by this beat: the flush has nothing left to do
        await self._write(list(self.live), sweep=True)

    async def _beat_forever(self) -> None:
        try:
            while True:
                await asyncio.sleep(heartbeat_secs())
                if not self.live:
                    break
                await self.beat()
        finally:
            self.task = None
            self._forget_if_idle()

    async def _flush_soon(self) -> None:
        try:
            await asyncio.sleep(REGISTER_FLUSH_SECS)
        finally:
            self.flusher = None  # sockets added from now on get a flush of their own
        fresh, self.fresh = list(self.fresh), set()
        if fresh:
            await self._write(fresh, sweep=False)
        self._forget_if_idle()

    async def _write(self, conns: list[ConnectionPresence], *, sweep: bool) -> None:
        done = self.loop.create_future()
        self.writes.add(done)
        try:
            await connections_refresh(conns, sweep=sweep)
        except BrokerUnavailable as exc:
            # Entries come back on the next beat after Redis does (a restart wipes them).
            logger.debug("presence heartbeat failed sockets=%d: %r", len(conns), exc)
        except Exception:
            # Logged, and the next beat tries again: a dead heartbeat would take every socket
            # of this process offline one TTL later.
            logger.exception(
                "presence heartbeat failed sockets=%d replica=%s", len(conns), settings.REPLICA_ID
            )
        finally:
            self.writes.discard(done)
            done.set_result(None)

    def _forget_if_idle(self) -> None:
        idle = not self.live and self.task is None and self.flusher is None and not self.writes
        if idle and _heartbeats.get(self.loop) is self:
            del _heartbeats[self.loop]


_heartbeats: dict[asyncio.AbstractEventLoop, _Heartbeat] = {}


def _heartbeat() -> _Heartbeat:
    loop = asyncio.get_running_loop()
    heartbeat = _heartbeats.get(loop)
    if heartbeat is None:
        heartbeat = _heartbeats[loop] = _Heartbeat(loop)
    return heartbeat


async def _settle() -> None:
    heartbeat = _heartbeats.get(asyncio.get_running_loop())
    if heartbeat is not None:
        await heartbeat.settled()
