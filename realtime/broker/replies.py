"""Replies from a redis-py connection, every one a socket read brought, in one call.

redis-py's asyncio connections hand out one reply per `read_response()`, through four or five
coroutine frames (the connection's, with its timeout and error wrapping, then the parser's),
and its `PubSub.listen()` adds as many again (its health check, its retry wrapper) and, with
RESP3, a push handler that calls `logging.getLogger` and formats the whole message as text for
every message, even when nothing is logged. On the bench (docs/performance.md, the eighth
round) that was ~12% of what a replica spent on each pushed message it delivered. Here the
replies already complete in the connection's hiredis reader are taken in one go, and the
socket is read (once) only when there are none; callers handle them in a plain loop. The
connection itself (connect, AUTH, TLS, Sentinel, the commands written) stays redis-py's: only
the reading changes, and only for connections whose replies nothing else reads (the automatic
pipeline's and the layer's subscription connection).
"""

from __future__ import annotations

import math
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

try:  # what redis-py's hiredis reader answers while a reply is incomplete
    from redis._parsers.hiredis import NOT_ENOUGH_DATA
except ImportError:  # hiredis is optional: realtime/broker/connections.py
    NOT_ENOUGH_DATA = False

# What one read asks the socket for: a burst of replies comes in a few reads.
READ_BYTES = 64 * 1024


async def read_replies(connection: Any) -> list[Any]:
    """The replies `connection` has received and nobody has read, in order (at least one: this
    waits for one). An error reply comes as its exception, not raised (redis-py's class for
    it: ResponseError, NoScriptError, …, or a ConnectionError kind such as BusyLoadingError);
    a lost connection is raised (RedisConnectionError or OSError, as redis-py's reads raise),
    and the connection closed."""
    reader = getattr(connection._parser, "_reader", None)
    stream = getattr(connection, "_reader", None)
    if reader is None or stream is None or not hasattr(reader, "gets"):
        # Without hiredis (it is optional: realtime/broker/connections.py), redis-py's own
        # parser, a reply at a time.
        try:
            return [await connection.read_response(timeout=math.inf, push_request=True)]
        except ResponseError as exc:
            return [exc]
    replies = []
    while True:
        reply = reader.gets()
        while reply is not NOT_ENOUGH_DATA:
            replies.append(reply)
            reply = reader.gets()
        if replies:
            return replies
        try:
            data = await stream.read(READ_BYTES)
        except BaseException:
            # As redis-py's reads do: a read that failed or was cancelled (its loop shutting
            # down, say) leaves the connection closed, never open with nobody to close it.
            await connection.disconnect(nowait=True)
            raise
        if not data:
            await connection.disconnect(nowait=True)
            raise RedisConnectionError("Redis closed the connection.")
        reader.feed(data)
