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


# What a subscribed connection receives as RESP3 pushes and its reader handles: the rest
# (a managed Redis' maintenance notices, client-side caching's invalidations) are redis-py's.
PUBSUB_KINDS = frozenset(
    {b"message", b"subscribe", b"unsubscribe", b"pmessage", b"psubscribe", b"punsubscribe"}
)


async def read_replies(connection: Any, *, pubsub: bool = False) -> list[Any]:
    """The replies `connection` has received and nobody has read, in order (at least one: this
    waits for one). An error reply comes as its exception, not raised (redis-py's class for
    it: ResponseError, NoScriptError, …, or a ConnectionError kind such as BusyLoadingError);
    a lost connection is raised (RedisConnectionError or OSError, as redis-py's reads raise),
    and the connection closed.

    RESP3 pushes are not replies to anything: those that are not `pubsub` messages (a managed
    Redis' MOVING or MIGRATING notices, invalidations) go to redis-py's own handling, as its
    reads send them, and are never handed out, so that no caller takes one for its reply."""
    parser = connection._parser
    reader = getattr(parser, "_reader", None)
    stream = getattr(connection, "_reader", None)
    if reader is None or stream is None or not hasattr(reader, "gets"):
        # Without hiredis (it is optional: realtime/broker/connections.py), redis-py's own
        # parser, a reply at a time; it handles the pushes that are not the subscriber's.
        try:
            return [await connection.read_response(timeout=math.inf, push_request=pubsub)]
        except ResponseError as exc:
            return [exc]
    push_type = getattr(parser, "_hiredis_PushNotificationType", None)
    while True:
        replies = []
        reply = reader.gets()
        while reply is not NOT_ENOUGH_DATA:
            if push_type is not None and isinstance(reply, push_type):
                if not (pubsub and reply and reply[0] in PUBSUB_KINDS):
                    await parser.handle_push_response(reply)
                    reply = reader.gets()
                    continue
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
