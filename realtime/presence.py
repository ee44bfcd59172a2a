"""Who is online, per room and per user, across replicas — without trusting disconnect() to run.

Every connection has an entry that expires unless its replica refreshes it on a heartbeat:
  <prefix>:presence:room:<slug>   sorted set, member "<user id>:<connection id>", score = expiry ms
  <prefix>:presence:user:<id>     sorted set, member "<connection id>", score = expiry ms
  <prefix>:presence:seen          hash, user id -> last time (ms) one of their sockets was alive
  <prefix>:presence:names         hash, user id -> username (for events about expired entries)

A user is in a room while any of their entries there has not expired. A replica that dies
without running disconnect() stops refreshing; the next sweep (run by every live connection's
heartbeat for its rooms) removes the expired entries and announces who left, within one TTL.
Join/leave are decided inside Lua scripts, so two replicas sweeping at once announce a leave once.

Events are ephemeral frames on the room stream (no seq, no history):
  {"type": "presence", "event": "join" | "leave", "user", "user_id", "stream", "origin"}
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from channels.layers import get_channel_layer
from django.conf import settings
from redis.exceptions import RedisError

from realtime import groups, publish

logger = logging.getLogger(__name__)

# 5 s: presence changes show within seconds; a dead replica's users go offline within the TTL.
DEFAULT_HEARTBEAT_SECS = 5.0
# Three missed heartbeats before an entry counts as dead: one slow beat is not a departure.
TTL_HEARTBEATS = 3
REDIS_DOWN = (RedisError, OSError, asyncio.TimeoutError, ConnectionError)

# "Is any live entry of this user left in the room?" shared by the scripts below.
_HAS_LIVE = """
local function has_live(key, prefix, now)
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', key, now, '+inf')) do
    if string.sub(m, 1, #prefix) == prefix then return true end
  end
  return false
end
"""

# KEYS: room set; ARGV: user prefix "<uid>:", member, expiry ms, now ms, key ttl ms
# Returns 1 when the user was not in the room before (announce a join).
_JOIN_LUA = _HAS_LIVE + """
local was = has_live(KEYS[1], ARGV[1], ARGV[4])
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
if was then return 0 end
return 1
"""

# KEYS: room set; ARGV: user prefix, member, now ms. Returns 1 when that was the user's last entry.
_LEAVE_LUA = _HAS_LIVE + """
if redis.call('ZREM', KEYS[1], ARGV[2]) == 0 then return 0 end
if has_live(KEYS[1], ARGV[1], ARGV[3]) then return 0 end
return 1
"""

# KEYS: room set; ARGV: now ms. Removes expired entries; returns the user ids now gone.
_SWEEP_LUA = _HAS_LIVE + """
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])
if #expired == 0 then return {} end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])
local gone, seen = {}, {}
for _, m in ipairs(expired) do
  local uid = string.match(m, '^(%d+):')
  if uid and not seen[uid] then
    seen[uid] = true
    if not has_live(KEYS[1], uid .. ':', ARGV[1]) then table.insert(gone, uid) end
  end
end
return gone
"""


def heartbeat_secs() -> float:
    return float(getattr(settings, "PRESENCE_HEARTBEAT_SECS", DEFAULT_HEARTBEAT_SECS))


def ttl_ms() -> int:
    return int(heartbeat_secs() * TTL_HEARTBEATS * 1000)


def _prefix() -> str:
    return f"{get_channel_layer().prefix}:presence"  # type: ignore[union-attr]


def _room_key(slug: str) -> str:
    return f"{_prefix()}:room:{slug}"


def _user_key(user_id: int) -> str:
    return f"{_prefix()}:user:{user_id}"


def _redis() -> Any:
    return get_channel_layer().redis()  # type: ignore[union-attr]


_scripts: dict[tuple[int, str], Any] = {}


def _run(source: str, keys: list[str], args: list[Any]) -> Any:
    client = _redis()
    cache_key = (id(client), source)
    script = _scripts.get(cache_key)
    if script is None:
        script = _scripts[cache_key] = client.register_script(source)
    return script(keys, args)


def _key_ttl(ttl: int) -> int:
    # Only garbage collection of idle keys: long enough that a sweep still finds expired
    # entries (to announce their leave) after their whole room went quiet.
    return 2 * ttl + 60_000


def now_ms() -> int:
    return int(time.time() * 1000)


def slug_of(stream: str) -> str | None:
    """The room slug of a `room:<slug>` stream, None for other streams."""
    kind, _, key = stream.partition(":")
    return key if kind == "room" else None


# --- the operations (each one Redis round trip or script) ---------------------------------------


async def room_enter(*, slug: str, user_id: int, username: str, conn: str, ttl: int | None = None) -> bool:
    """Add or refresh a connection's entry; True when the user was not in the room before."""
    ttl = ttl or ttl_ms()
    now = now_ms()
    joined = await _run(
        _JOIN_LUA, [_room_key(slug)], [f"{user_id}:", f"{user_id}:{conn}", now + ttl, now, _key_ttl(ttl)]
    )
    return bool(joined)


async def room_exit(*, slug: str, user_id: int, conn: str) -> bool:
    """Remove a connection's entry; True when it was the user's last one in the room."""
    left = await _run(_LEAVE_LUA, [_room_key(slug)], [f"{user_id}:", f"{user_id}:{conn}", now_ms()])
    return bool(left)


async def room_sweep(*, slug: str, now: int | None = None) -> list[int]:
    """Drop expired entries; the ids of users who thereby left the room."""
    gone = await _run(_SWEEP_LUA, [_room_key(slug)], [now or now_ms()])
    return [int(uid) for uid in gone]


async def room_online(*, slug: str) -> list[int]:
    """Ids of the users with a live connection in the room."""
    members = await _redis().zrangebyscore(_room_key(slug), now_ms(), "+inf")
    return sorted({int(m.split(b":", 1)[0]) for m in members})


async def user_touch(*, user_id: int, username: str, conn: str, ttl: int | None = None) -> None:
    """Mark a connection of the user alive (user-level status) and remember when."""
    ttl = ttl or ttl_ms()
    now = now_ms()
    async with _redis().pipeline(transaction=False) as pipe:
        pipe.zadd(_user_key(user_id), {conn: now + ttl})
        pipe.zremrangebyscore(_user_key(user_id), "-inf", f"({now}")
        pipe.pexpire(_user_key(user_id), _key_ttl(ttl))
        pipe.hset(f"{_prefix()}:seen", str(user_id), now)
        pipe.hset(f"{_prefix()}:names", str(user_id), username)
        await pipe.execute()


async def user_gone(*, user_id: int, conn: str) -> None:
    async with _redis().pipeline(transaction=False) as pipe:
        pipe.zrem(_user_key(user_id), conn)
        pipe.hset(f"{_prefix()}:seen", str(user_id), now_ms())
        await pipe.execute()


@dataclass(frozen=True)
class UserStatus:
    user_id: int
    online: bool  # a live connection on any replica, in any room or none
    last_seen_ms: int | None


async def user_statuses(*, user_ids: list[int]) -> dict[int, UserStatus]:
    if not user_ids:
        return {}
    now = now_ms()
    async with _redis().pipeline(transaction=False) as pipe:
        for user_id in user_ids:
            pipe.zcount(_user_key(user_id), now, "+inf")
        pipe.hmget(f"{_prefix()}:seen", [str(u) for u in user_ids])
        *counts, seen = await pipe.execute()
    return {
        uid: UserStatus(uid, count > 0, int(last) if last else None)
        for uid, count, last in zip(user_ids, counts, seen, strict=True)
    }


async def _names(user_ids: list[int]) -> list[str]:
    if not user_ids:
        return []  # HMGET needs at least one field
    names = await _redis().hmget(f"{_prefix()}:names", [str(u) for u in user_ids])
    return [n.decode() if n else f"user {u}" for u, n in zip(user_ids, names, strict=True)]


async def announce(*, slug: str, event: str, user_id: int, username: str) -> None:
    logger.info("presence %s room=%s user=%s replica=%s", event, slug, username, settings.REPLICA_ID)
    await publish.publish_ephemeral(
        stream=groups.room_stream(slug),
        frame={"type": "presence", "event": event, "user": username, "user_id": user_id},
    )


# --- one connection's presence, driven by the consumer ------------------------------------------


class ConnectionPresence:
    """A socket's entries: added when it subscribes to a room, refreshed on a heartbeat, removed
    when it unsubscribes or closes. Best effort: Redis trouble never breaks the socket."""

    def __init__(self, *, user_id: int, username: str, scope_query: bytes = b"") -> None:
        self.user_id = user_id
        self.username = username
        # Whether the socket wants typing/presence frames: opt-in (?ephemeral=1), so that
        # clients counting stream frames are not handed frames without a seq.
        self.wanted = b"ephemeral=1" in scope_query.split(b"&")
        self.conn = uuid.uuid4().hex[:12]
        self.rooms: set[str] = set()
        self.task: asyncio.Task[None] | None = None

    async def start(self, streams: list[str]) -> None:
        # Registered by the heartbeat task's first beat, not here: connecting costs no extra
        # Redis round trips (the benchmark's connect storm measures exactly that).
        self.rooms.update(slug for slug in map(slug_of, streams) if slug is not None)
        self.task = asyncio.get_running_loop().create_task(self._beat())

    async def enter(self, stream: str) -> None:
        slug = slug_of(stream)
        if slug is None:
            return
        self.rooms.add(slug)
        with contextlib.suppress(*REDIS_DOWN, publish.RealtimeUnavailable):
            if await room_enter(slug=slug, user_id=self.user_id, username=self.username, conn=self.conn):
                await announce(slug=slug, event="join", user_id=self.user_id, username=self.username)

    async def exit(self, stream: str) -> None:
        slug = slug_of(stream)
        if slug is None or slug not in self.rooms:
            return
        self.rooms.discard(slug)
        with contextlib.suppress(*REDIS_DOWN, publish.RealtimeUnavailable):
            if await room_exit(slug=slug, user_id=self.user_id, conn=self.conn):
                await announce(slug=slug, event="leave", user_id=self.user_id, username=self.username)

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            self.task = None
        for slug in list(self.rooms):
            await self.exit(groups.room_stream(slug))
        with contextlib.suppress(*REDIS_DOWN):
            await user_gone(user_id=self.user_id, conn=self.conn)

    async def _beat(self) -> None:
        while True:
            try:
                await self.refresh()
            except REDIS_DOWN + (publish.RealtimeUnavailable,) as exc:
                # Entries come back on the next beat after Redis does (a restart wipes them).
                logger.debug("presence heartbeat failed user=%s: %r", self.username, exc)
            await asyncio.sleep(heartbeat_secs())

    async def refresh(self) -> None:
        await user_touch(user_id=self.user_id, username=self.username, conn=self.conn)
        for slug in list(self.rooms):
            if slug not in self.rooms:
                continue  # left while this beat was running: do not bring the entry back
            if await room_enter(slug=slug, user_id=self.user_id, username=self.username, conn=self.conn):
                await announce(slug=slug, event="join", user_id=self.user_id, username=self.username)
            gone = await room_sweep(slug=slug)
            for user_id, name in zip(gone, await _names(gone), strict=True):
                await announce(slug=slug, event="leave", user_id=user_id, username=name)
