"""Stream history in Redis: contiguous sequence numbers, epochs, replay, delivery marks.

Each stream (`user:42`, `room:lobby`, `broadcast`) has
  <prefix>:{<stream>}:meta  a hash: seq (the last one given), epoch, delivered, acked
  <prefix>:{<stream>}:log   a Redis Stream; entry id "<seq>-0", fields f (the frame) and t (ms)

Publishing is one Lua script, so it is atomic: take the next seq, append the frame to the log,
trim the log by length and age, PUBLISH the frame on the group's channel, and count the
sockets the group has. Because the PUBLISH happens inside the script, every subscriber sees a
stream's frames in seq order; a gap can only mean a frame was dropped, never reordered.

The epoch is a random id given to a stream when its meta hash is created. A Redis that lost its
data (restarted without persistence) starts streams afresh under new epochs, so a client's
position `(epoch, seq)` from before can be told apart from the same seq after.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from channels.layers import get_channel_layer
from django.conf import settings

_PUBLISH_LUA = """
-- KEYS: meta, log, members, idempotency key ('' for none)
-- ARGV: epoch candidate, body (envelope JSON without seq/epoch), maxlen, max age ms,
--       pub/sub channel, stream name, idempotency ttl secs, message id
if KEYS[4] ~= '' then
  local prior = redis.call('GET', KEYS[4])
  if prior then
    -- The first publish's seq, epoch and message id: a retry learns what it already sent.
    -- (Keys written before ids were stored have none: the id comes back empty.)
    local seq, epoch, id = string.match(prior, '^(%d+) (%S+) ?(%S*)$')
    return {tonumber(seq), epoch, 0, 0, 1, id}
  end
end
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('HSET', KEYS[1], 'epoch', epoch)
end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local frame = '{"seq":' .. seq .. ',"epoch":"' .. epoch .. '",' .. string.sub(ARGV[2], 2)
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], seq .. '-0', 'f', frame, 't', now_ms)
-- Trim by age on every 16th publish, up to 128 entries (8 per publish on average): each entry
-- is deleted once, so the cost stays flat, and the other 15 publishes skip the look-up (it was
-- a third of the script's time).
if seq % 16 == 0 then
  local cutoff = now_ms - tonumber(ARGV[4])
  local oldest = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 128)
  for _, entry in ipairs(oldest) do
    if tonumber(entry[2][4]) >= cutoff then break end
    redis.call('XDEL', KEYS[2], entry[1])
  end
end
redis.call('PEXPIRE', KEYS[2], ARGV[4])
local receivers = redis.call('PUBLISH', ARGV[5], 'F' .. seq .. ' ' .. epoch .. ' ' .. ARGV[6] .. '\\n' .. frame)
local sockets = 0
local members = redis.call('HGETALL', KEYS[3])
for i = 2, #members, 2 do
  local count, expires = string.match(members[i], '^(%d+)@(%d+)$')
  if count and tonumber(expires) >= now_ms then sockets = sockets + tonumber(count) end
end
if KEYS[4] ~= '' then
  redis.call('SET', KEYS[4], seq .. ' ' .. epoch .. ' ' .. ARGV[8], 'EX', ARGV[7])
end
return {seq, epoch, receivers, sockets, 0, ARGV[8]}
"""

# Raise a delivery mark (delivered / acked) but never lower it, and only within the epoch the
# client saw: a mark for a lost epoch must not land on the new one.
_MARK_LUA = """
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return 0 end
local current = tonumber(redis.call('HGET', KEYS[1], ARGV[2]) or '0')
local wanted = tonumber(ARGV[3])
if wanted > current then redis.call('HSET', KEYS[1], ARGV[2], wanted) end
return 1
"""


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


def _prefix() -> str:
    return get_channel_layer().prefix  # type: ignore[no-any-return, union-attr]


def meta_key(stream: str) -> str:
    return f"{_prefix()}:{{{stream}}}:meta"


def log_key(stream: str) -> str:
    return f"{_prefix()}:{{{stream}}}:log"


def idempotency_key(scope: str, key: str) -> str:
    return f"{_prefix()}:idem:{scope}:{key}"


_scripts: dict[tuple[int, str], Any] = {}


def _script(client: Any, source: str) -> Any:
    # One Script object per client: it caches the SHA and reloads after a Redis restart.
    cache_key = (id(client), source[:40])
    script = _scripts.get(cache_key)
    if script is None:
        script = _scripts[cache_key] = client.register_script(source)
    return script


def _redis() -> Any:
    return get_channel_layer().redis()  # type: ignore[union-attr]


async def append(
    *, stream: str, group: str, body: str, message_id: str, idempotency: str | None
) -> Appended:
    """Publish `body` (envelope JSON without seq/epoch) to `stream`: see the module docstring."""
    layer = get_channel_layer()
    client = _redis()
    keys = [meta_key(stream), log_key(stream), layer.members_key(group), idempotency or ""]  # type: ignore[union-attr]
    args = [
        uuid.uuid4().hex[:12],
        body,
        settings.HISTORY_MAXLEN,
        int(settings.HISTORY_MAX_AGE_SECS * 1000),
        layer.group_channel(group),  # type: ignore[union-attr]
        stream,
        settings.IDEMPOTENCY_TTL_SECS,
        message_id,
    ]
    seq, epoch, receivers, sockets, duplicate, first_id = await _script(client, _PUBLISH_LUA)(keys, args)
    return Appended(
        int(seq), _text(epoch), int(receivers), int(sockets), bool(duplicate), _text(first_id)
    )


async def heads(streams: list[str]) -> dict[str, Position]:
    """Each stream's current position, in one round trip."""
    async with _redis().pipeline(transaction=False) as pipe:
        for stream in streams:
            pipe.hmget(meta_key(stream), "epoch", "seq")
        rows = await pipe.execute()
    return {
        stream: Position(_text(epoch) if epoch else None, int(seq or 0))
        for stream, (epoch, seq) in zip(streams, rows, strict=True)
    }


async def read(stream: str, *, after: int, upto: int | None = None, limit: int = 500) -> list[tuple[int, str]]:
    """Frames with after < seq <= upto (or to the end), oldest first, at most `limit`."""
    entries = await _redis().xrange(
        log_key(stream), min=f"{after + 1}-0", max=f"{upto}-0" if upto else "+", count=limit
    )
    return [(int(entry_id.split(b"-")[0]), fields[b"f"].decode()) for entry_id, fields in entries]


async def mark(stream: str, *, field: str, epoch: str, seq: int) -> None:
    """Raise the stream's `delivered` or `acked` mark to `seq` (never lowers it)."""
    assert field in ("delivered", "acked")
    await _script(_redis(), _MARK_LUA)([meta_key(stream)], [epoch, field, seq])


async def mark_many(marks: list[tuple[str, str, str, int]]) -> None:
    """Several marks, (stream, field, epoch, seq) each, in one round trip."""
    client = _redis()
    script = _script(client, _MARK_LUA)
    async with client.pipeline(transaction=False) as pipe:
        for stream, field, epoch, seq in marks:
            assert field in ("delivered", "acked")
            await script(keys=[meta_key(stream)], args=[epoch, field, seq], client=pipe)
        await pipe.execute()


async def ledger(stream: str, *, count: int = 100) -> dict[str, Any]:
    """The last `count` messages of a stream, each marked sent / delivered / acknowledged."""
    client = _redis()
    meta = await client.hgetall(meta_key(stream))
    entries = await client.xrevrange(log_key(stream), count=count)
    delivered = int(meta.get(b"delivered", 0))
    acked = int(meta.get(b"acked", 0))
    rows = []
    for entry_id, fields in entries:
        seq = int(entry_id.split(b"-")[0])
        state = "acknowledged" if seq <= acked else "delivered" if seq <= delivered else "sent"
        rows.append(
            {"seq": seq, "frame": fields[b"f"].decode(), "stored_at": int(fields[b"t"]), "state": state}
        )
    return {
        "epoch": _text(meta[b"epoch"]) if b"epoch" in meta else None,
        "seq": int(meta.get(b"seq", 0)),
        "delivered": delivered,
        "acked": acked,
        "messages": rows,
    }


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def now_ms() -> int:
    return int(time.time() * 1000)
