"""The Lua scripts (lua/*.lua) and the one runner for them.

Scripts go to Redis as EVALSHA; a NOSCRIPT reply (Redis restarted, or its script cache was
flushed) loads every script and runs the call or pipeline again — here and nowhere else.
redis-py's Script objects would do the loading too, but a pipeline holding one first sends
SCRIPT EXISTS: a second round trip on every presence heartbeat and delivery-mark flush.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError

T = TypeVar("T")

LUA_DIR = Path(__file__).resolve().parent / "lua"
# Prepended to the scripts that share functions (Lua in Redis has no include).
_PRELUDES = {
    "publish": "publish_one",
    "publish_many": "publish_one",
    "presence_join": "presence_has_live",
    "presence_leave": "presence_has_live",
    "presence_sweep": "presence_has_live",
}


@dataclass(frozen=True)
class Script:
    name: str
    source: str
    sha: str

    def queue(self, pipe: Any, keys: list[str], args: list[Any]) -> None:
        """Add a call of this script to a pipeline (run by `pipelined`)."""
        pipe.evalsha(self.sha, len(keys), *keys, *args)


def _load(name: str) -> Script:
    source = (LUA_DIR / f"{name}.lua").read_text()
    if name in _PRELUDES:
        source = (LUA_DIR / f"{_PRELUDES[name]}.lua").read_text() + source
    return Script(name, source, hashlib.sha1(source.encode()).hexdigest())


PUBLISH = _load("publish")
PUBLISH_MANY = _load("publish_many")
MARK = _load("mark")
PRESENCE_JOIN = _load("presence_join")
PRESENCE_LEAVE = _load("presence_leave")
PRESENCE_SWEEP = _load("presence_sweep")
PRESENCE_ADMIT = _load("presence_admit")
PRESENCE_TOUCH = _load("presence_touch")
LIMIT_HIT = _load("limit_hit")
ARCHIVE_TAKE = _load("archive_take")
MEMBERSHIPS = _load("memberships")
ALL = (
    PUBLISH,
    PUBLISH_MANY,
    MARK,
    PRESENCE_JOIN,
    PRESENCE_LEAVE,
    PRESENCE_SWEEP,
    PRESENCE_ADMIT,
    PRESENCE_TOUCH,
    LIMIT_HIT,
    ARCHIVE_TAKE,
    MEMBERSHIPS,
)


async def pipelined(client: Any, queue: Callable[[Any], None]) -> list[Any]:
    """Run the commands `queue` adds to a pipeline in one round trip; their replies, in order.

    On NOSCRIPT every script is loaded and the pipeline runs again: each script call in it
    failed the first time, and the plain commands in it can run twice (all of ours are
    idempotent: ZADD, HSET, PEXPIRE…). Any other error reply is raised."""
    for attempt in range(2):
        async with client.pipeline(transaction=False) as pipe:
            queue(pipe)
            replies: list[Any] = await pipe.execute(raise_on_error=False)
        if attempt == 0 and any(isinstance(reply, NoScriptError) for reply in replies):
            async with client.pipeline(transaction=False) as pipe:
                for script in ALL:
                    pipe.script_load(script.source)
                await pipe.execute()
            continue
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        break
    return replies


def run_sync(client: Any, script: Script, keys: list[str], args: list[Any]) -> Any:
    """One script call on a sync client: EVALSHA, and on NOSCRIPT every script loaded and the
    call made again (no pipeline: one call is one round trip either way)."""
    try:
        return client.evalsha(script.sha, len(keys), *keys, *args)
    except NoScriptError:
        with client.pipeline(transaction=False) as pipe:
            for each in ALL:
                pipe.script_load(each.source)
            pipe.execute()
        return client.evalsha(script.sha, len(keys), *keys, *args)


async def retried(call: Callable[..., Awaitable[T]], *args: Any, deadline: float) -> T:
    """`call(*args)` on the automatic pipeline, made once more if the connection failed under
    it, as redis-py's Retry did for each command (a publish whose first write did reach Redis is
    then stored twice: callers that must not see that send an idempotency key). Both attempts
    answer by `deadline` (the pipeline's loop time), or TimeoutError."""
    try:
        return await call(*args, deadline=deadline)
    except (RedisConnectionError, ConnectionError):
        return await call(*args, deadline=deadline)


async def run(pipeline: Any, client: Any, script: Script, keys: list[str], args: list[Any]) -> Any:
    """One script call through the loop's automatic pipeline (autopipeline.py), retried once on
    a failed connection: EVALSHA, and on NOSCRIPT every script loaded (through `client`) and the
    call made again. All of it within the pipeline's one timeout (TimeoutError past it)."""
    call = ("EVALSHA", script.sha, len(keys), *keys, *args)
    deadline = pipeline.deadline()
    try:
        return await retried(pipeline.call, *call, deadline=deadline)
    except NoScriptError:
        async with asyncio.timeout_at(deadline):
            async with client.pipeline(transaction=False) as pipe:
                for each in ALL:
                    pipe.script_load(each.source)
                await pipe.execute()
        return await pipeline.call(*call, deadline=deadline)
