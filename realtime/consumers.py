"""The WebSocket consumer: authenticate, admit, open a session, hand frames in and out.

Everything a socket does once it is open lives elsewhere: its streams and their delivery in
realtime/delivery/session.py, what the client's frames do in delivery/inbound.py, how bytes
reach the socket in realtime/transport/ (Daphne's fast path, or plain ASGI), access changes in
realtime/access.py. However the socket ends (a close, a dropped connection, an exception), the
session's `release()` gives back what it held, once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings

from realtime import (
    archive,
    broker,
    drain,
    metrics,
    presence,
    protocol,
    session_watch,
    transport,
    user_directory,
)
from realtime.asgi_types import ASGIApp, Receive, Scope, Send
from realtime.broker import BrokerUnavailable
from realtime.delivery.inbound import (
    Inbound,
    check_token_scope,
    own_streams,
    too_many_streams,
)
from realtime.delivery.session import Session
from realtime.lifetimes import counted
from realtime.limits import TokenBucket
from realtime.protocol import InvalidFrame
from realtime.selectors import StreamDenied, stream_check_readable
from realtime.stats import replica_stats
from realtime.transport import sse

logger = logging.getLogger(__name__)


@counted
class RealtimeConsumer:
    """The ASGI application behind /ws/ and /sse/ (realtime/routing.py), one per socket: the same
    session over a WebSocket or over Server-Sent Events (realtime/transport/sse.py), whose
    client frames arrive through the channel layer from POST /sse/send on any replica."""

    @classmethod
    def as_asgi(cls) -> ASGIApp:
        # Not a coroutine function: it returns the consumer's own coroutine, so no frame of its
        # own waits on it for the socket's life (~0.3 KiB a socket). Called by
        # realtime/socket_auth.py, which awaits what it returns.
        def app(scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
            return cls()(scope, receive, send)

        app._asgi_single_callable = True  # type: ignore[attr-defined]  # asgiref's hint
        return app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        layer: Any = get_channel_layer()
        writer = transport.writer_for(scope, send)
        channel = await layer.new_channel()
        session: Session | None = None
        counted = False
        try:
            if not await _connected(scope, receive):
                return
            session = await self._open(scope, writer, layer, channel)
            if session is None:
                return
            replica_stats.open_connections += 1
            replica_stats.connections_total += 1
            counted = True
            inbound = Inbound(session)
            session.inbound = inbound
            if scope["type"] == "http":
                await _until_disconnected(receive, writer)
                return
            while True:
                message = await receive()
                if message["type"] == "websocket.receive":
                    await inbound.receive(message.get("text"))
                elif message["type"] == "websocket.disconnect":
                    break
        finally:
            if counted:
                replica_stats.open_connections -= 1
            if session is not None:
                await session.release()
            layer.discard_channel(channel)

    async def _open(
        self, scope: Scope, writer: transport.SocketWriter, layer: Any, channel: str
    ) -> Session | None:
        """Accept the socket with its streams placed, or refuse it with a code and a reason."""
        if drain.is_draining():
            # Sent elsewhere: HAProxy takes a draining replica out within two checks, and the
            # client reconnects (1012: service restart) to one that is not.
            await _refuse(
                writer,
                code="draining",
                message="This server is restarting; reconnecting to another.",
                close_code=drain.CLOSE_SERVICE_RESTART,
            )
            return None
        overload = overloaded()
        if overload:
            logger.warning("socket refused: %s replica=%s", overload, settings.REPLICA_ID)
            await _refuse(writer, code="overloaded", message=overload, close_code=CLOSE_OVERLOADED)
            return None
        user = scope["user"]
        if not user.is_authenticated:
            # A refused connection token says why (realtime/connect_tokens.py).
            token_error = scope.get("token_error")
            if token_error:
                await _refuse(
                    writer,
                    code="bad_token",
                    message=token_error,
                    close_code=protocol.CLOSE_UNAUTHORIZED,
                )
                return None
            await _refuse(
                writer,
                code="unauthorized",
                message="Log in first; then reconnect.",
                close_code=protocol.CLOSE_UNAUTHORIZED,
            )
            return None
        # Pushes by name to this user, from any replica, need not ask the database.
        user_directory.note_connected(user.get_username(), user.pk)
        problems: list[InvalidFrame | StreamDenied] = []
        try:
            resume = protocol.parse_resume_query(scope.get("query_string", b""))
        except InvalidFrame as exc:
            resume, problems = {}, [exc]
        own = own_streams(user)
        allowed: list[str] = []
        for stream in own + [stream for stream in resume if stream not in own]:
            if len(allowed) >= settings.MAX_STREAMS_PER_SOCKET:
                problems.append(too_many_streams(stream))
                continue
            try:
                if stream not in own:
                    check_token_scope(scope.get("token_streams"), stream, own)
                    await database_sync_to_async(stream_check_readable)(user=user, stream=stream)
                allowed.append(stream)
            except StreamDenied as exc:
                problems.append(exc)
        query = scope.get("query_string", b"")
        presence_ = presence.ConnectionPresence(
            user_id=user.pk, username=user.username, scope_query=query
        )
        session = Session(
            user=user, writer=writer, layer=layer, channel_name=channel, presence_=presence_
        )
        # The session's proof of the password it was made with (as Django checks it per
        # request): a password change since then ends this socket too (access.recheck_socket).
        session.auth_hash = user.get_session_auth_hash()
        session.token_streams = scope.get("token_streams")
        layer.add_sink(channel, session)
        try:
            if not await _admitted(user, presence_.conn):
                await session.release()
                logger.info("user=%s refused: too many sockets open", user.username)
                await _refuse(
                    writer,
                    code="too_many_sockets",
                    message=f"You have {settings.MAX_SOCKETS_PER_USER} connections open already, "
                    "the most one user may; close a tab or another device's app, then reconnect.",
                    close_code=protocol.CLOSE_TOO_MANY_SOCKETS,
                )
                return None
            for stream in allowed:
                await session.join(stream)
            heads = await broker.current().heads(allowed)
        except BrokerUnavailable as exc:
            logger.warning("user=%s connect failed: Redis unavailable (%r)", user.username, exc)
            await session.release()
            await _refuse(
                writer,
                code="unavailable",
                message="Messaging is unavailable; retry shortly.",
                close_code=protocol.CLOSE_TRY_AGAIN_LATER,
            )
            return None
        for stream in allowed:
            session.place_cursor(stream, resume.get(stream), heads[stream])
        await writer.accept()
        logger.info(
            "connected user=%s replica=%s resume=%d",
            user.username,
            settings.REPLICA_ID,
            len(resume),
        )
        await session.send_frame(
            {
                "type": "hello",
                "replica": settings.REPLICA_ID,
                "user": user.username,
                "user_id": user.pk,
                # Names this socket on its replica: the transport lab's "direct" answer finds
                # it with the layer's local_sink() only on that replica.
                "connection": channel,
                "streams": {
                    s: {"epoch": c.epoch, "seq": c.last} for s, c in session.cursors.items()
                },
            }
        )
        for problem in problems:
            await session.send_error(problem.code, problem.message)
        session.ready = True
        session.wake()
        # Presence: this socket's entries on its presence streams, refreshed on a heartbeat.
        await presence_.start(list(session.cursors))
        if scope.get("session_key"):
            session.session_digest = session_watch.session_digest(scope["session_key"])
            session_watch.watch(session, scope["session_key"])
        # The replica's archiver (realtime/archive.py) starts with its first socket: Daphne sends
        # no lifespan events, and a replica that serves sockets is one that runs.
        archive.start()
        metrics.watch_loop_lag()
        return session


async def _connected(scope: Scope, receive: Receive) -> bool:
    """The opening message: a WebSocket's connect, or an SSE request's (empty) body."""
    message = await receive()
    if scope["type"] == "websocket":
        return bool(message["type"] == "websocket.connect")
    while message["type"] == "http.request" and message.get("more_body"):
        message = await receive()
    return bool(message["type"] == "http.request")


async def _until_disconnected(receive: Receive, writer: transport.SocketWriter) -> None:
    """An SSE stream's life: a comment every SSE_HEARTBEAT_SECS until the client goes away."""
    while writer.is_open():
        try:
            async with asyncio.timeout(settings.SSE_HEARTBEAT_SECS):
                if (await receive())["type"] == "http.disconnect":
                    return
        except TimeoutError:
            await sse.heartbeat(writer)


async def _admitted(user: Any, conn: str) -> bool:
    """Whether the user may open one more socket (MAX_SOCKETS_PER_USER, whole cluster).
    Counted like presence, best effort: if the count cannot be read the socket is let in (the
    delivery calls that follow still need Redis, and refuse it if it is down)."""
    try:
        return await presence.user_admit(
            user_id=user.pk,
            username=user.username,
            conn=conn,
            limit=settings.MAX_SOCKETS_PER_USER,
        )
    except BrokerUnavailable:
        return True


# RFC 6455's "try again later" (written on Daphne's protocol: Autobahn refuses it to apps).
CLOSE_OVERLOADED = 1013
# New sockets this process accepts per second, as a bucket (a burst of twice that).
_connects: TokenBucket | None = None


def overloaded() -> str:
    """Why this replica takes no new socket now, or "" (realtime/readiness.py says the same
    to HAProxy, which then sends new sockets elsewhere)."""
    global _connects
    if replica_stats.open_connections >= settings.MAX_SOCKETS_PER_REPLICA:
        return (
            f"This server holds its most sockets ({settings.MAX_SOCKETS_PER_REPLICA}); "
            "reconnecting to another."
        )
    rate = settings.MAX_CONNECTS_PER_SEC
    if _connects is None or _connects.rate != rate:
        _connects = TokenBucket(rate=rate, burst=2 * rate)
    if not _connects.take():
        return f"This server takes at most {rate:g} new sockets a second; retrying shortly."
    return ""


async def _refuse(
    writer: transport.SocketWriter, *, code: str, message: str, close_code: int
) -> None:
    # Accept only to close with a code a browser can read (a refused handshake is a bare 403).
    await writer.accept()
    metrics.connect_results[code] += 1
    replica_stats.errors_sent += 1
    await writer.write(protocol.error_frame(code, message))
    await writer.close(close_code)
