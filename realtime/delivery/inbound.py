"""What a client's frames do: budgets, parsing, and one handler per frame type.

Every frame is charged to the socket's frame budget first (limits.py): over it, the frame gets
`rate_limited` (with its id, so it can be sent again), and a socket that keeps on is closed with
1008. Then it is parsed (protocol.parse_client_frame: strict JSON, known types, fields) and
handled; whatever a handler raises becomes an error frame, and the socket stays open, also
when the error is ours (`internal_error`).
"""

from __future__ import annotations

import contextlib
import logging
import traceback
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings

from realtime import broker, groups, protocol, publish, publish_hooks
from realtime.broker import BrokerUnavailable
from realtime.delivery.session import Session
from realtime.delivery.tallies import tallied, tallies
from realtime.lifetimes import counted
from realtime.limits import SocketLimits
from realtime.protocol import ClientFrame, InvalidFrame, Position
from realtime.selectors import StreamDenied, stream_check_readable, stream_check_writable
from realtime.stats import replica_stats
from realtime.transport import SocketClosed

logger = logging.getLogger(__name__)


class RateLimited(InvalidFrame):
    """A frame refused by one of the socket's budgets: the client may send it again later."""

    def __init__(self, message: str, *, ref: str | None, retry_after_ms: int) -> None:
        super().__init__("rate_limited", message, ref)
        self.retry_after_ms = retry_after_ms


def too_many_streams(stream: str) -> InvalidFrame:
    return InvalidFrame(
        "too_many_streams",
        f"Not subscribed to {stream[:60]!r}: a connection may hold at most "
        f"{settings.MAX_STREAMS_PER_SOCKET} streams. Unsubscribe from one first.",
    )


@counted
class Inbound:
    """The client → server half of one socket."""

    __slots__ = ("session",)

    def __init__(self, session: Session) -> None:
        self.session = session

    async def receive(self, text: str | None) -> None:
        session = self.session
        replica_stats.frames_in += 1
        if not session.ready:
            return  # closing (refused, or the session ended): nothing more is handled
        limits = session.limits()
        if not limits.frames.take():
            await self._refuse_frame(limits, text)
            return
        if text is None:
            await session.send_error(
                "binary_not_supported", "Binary frames are not supported; send JSON text frames."
            )
            return
        try:
            frame = protocol.parse_client_frame(text, max_bytes=settings.MAX_CLIENT_FRAME_BYTES)
        except InvalidFrame as exc:
            await session.send_error(exc.code, exc.message, exc.ref)
            return
        try:
            await HANDLERS[frame.type](self, frame)
        except RateLimited as exc:
            await session.send_error(
                exc.code, exc.message, exc.ref, retry_after_ms=exc.retry_after_ms
            )
        except InvalidFrame as exc:
            await session.send_error(exc.code, exc.message, exc.ref)
        except StreamDenied as exc:
            await session.send_error(exc.code, exc.message, frame.id)
        except BrokerUnavailable:
            await session.send_error(
                "unavailable", "Messaging is unavailable; retry shortly.", frame.id
            )
        except SocketClosed:
            pass  # the socket closed while answering; release() is on its way
        except Exception as exc:
            # A bug of ours, not the client's: one line with where it happened (the traceback
            # at DEBUG, so a client repeating the frame cannot flood the log), an answer, and
            # the socket stays open.
            where = traceback.extract_tb(exc.__traceback__)[-1]
            logger.warning(
                "frame %s from user=%s failed: %r at %s:%s",
                frame.type,
                session.user.username,
                exc,
                where.filename,
                where.lineno,
            )
            logger.debug("frame %s failed", frame.type, exc_info=True)
            replica_stats.internal_errors += 1
            await session.send_error(
                "internal_error",
                "The server failed to handle this frame; it was not acted on. "
                "Your connection is fine.",
                frame.id,
            )

    async def relayed(self, event: dict[str, Any]) -> None:
        """A frame POSTed to /sse/send on any replica and relayed here (rt.client_frame): only
        the socket's own user may send on it."""
        if event.get("user_id") != self.session.user.pk:
            logger.warning(
                "relayed frame for user=%s from user id %s dropped",
                self.session.user.username,
                event.get("user_id"),
            )
            return
        await self.receive(event.get("text"))

    async def _refuse_frame(self, limits: SocketLimits, text: str | None) -> None:
        """Over the frame rate: answer `rate_limited` (with the frame's id, so a client can
        send it again later), or close with 1008 once the socket has used up its strikes."""
        session = self.session
        replica_stats.frames_rate_limited += 1
        if not limits.strikes.take():
            logger.info("user=%s closed: kept sending past the frame rate", session.user.username)
            await session.send_error(
                "rate_limited",
                f"Closing: this connection kept sending more than "
                f"{settings.SOCKET_FRAMES_PER_SEC:g} frames a second.",
            )
            await session.close(protocol.CLOSE_POLICY_VIOLATION, "rate limit")
            return
        ref = None
        if text is not None:
            with contextlib.suppress(InvalidFrame):
                ref = protocol.parse_client_frame(
                    text, max_bytes=settings.MAX_CLIENT_FRAME_BYTES
                ).id
        await session.send_error(
            "rate_limited",
            f"Too many frames: at most {settings.SOCKET_FRAMES_PER_SEC:g} a second (bursts of "
            f"{settings.SOCKET_FRAME_BURST}). This one was not acted on; send it again later.",
            ref,
            retry_after_ms=1000,
        )

    # --- one handler per frame type (protocol.CLIENT_FRAMES) ---------------------------------

    async def on_echo(self, frame: ClientFrame) -> None:
        answer = {
            "type": "echo",
            "replica": settings.REPLICA_ID,
            "payload": frame.data.get("payload"),
        }
        await self.session.send_frame(answer, ref=frame.id)

    async def on_ping(self, frame: ClientFrame) -> None:
        await self.session.send_frame(
            {"type": "pong", "replica": settings.REPLICA_ID}, ref=frame.id
        )

    async def on_subscribe(self, frame: ClientFrame) -> None:
        await self.subscribe({frame.data["stream"]: frame.data.get("from")}, ref=frame.id)

    async def on_resume(self, frame: ClientFrame) -> None:
        await self.subscribe(frame.data["streams"], ref=frame.id)

    async def subscribe(self, wanted: dict[str, Position | None], *, ref: str | None) -> None:
        for stream, position in wanted.items():
            try:
                await self._subscribe_one(stream, position)
            except (StreamDenied, InvalidFrame) as exc:
                await self.session.send_error(exc.code, exc.message, ref)

    async def _subscribe_one(self, stream: str, position: Position | None) -> None:
        session = self.session
        check_token_scope(session.token_streams, stream, own_streams(session.user))
        await database_sync_to_async(stream_check_readable)(user=session.user, stream=stream)
        cursor = session.cursors.get(stream)
        if cursor is not None:
            # Already streaming: move forward to the client's position if it is ahead, never
            # back (that would replay out of order). Then say where the stream stands.
            if position is not None and position.epoch == cursor.epoch:
                cursor.move_forward(position.seq)
            session.catch_up_soon(stream)
            return
        if len(session.cursors) >= settings.MAX_STREAMS_PER_SOCKET:
            raise too_many_streams(stream)
        await session.join(stream)
        head = (await broker.current().heads([stream]))[stream]
        session.place_cursor(stream, position, head)
        if position is None:
            await session.send_frame(
                {"type": "subscribed", "stream": stream, "epoch": head.epoch, "seq": head.seq}
            )
        # After `subscribed`: the room's presence frames, this socket's own join among them,
        # reach the socket on their own, and should follow the answer to its subscribe.
        if session.presence is not None:
            await session.presence.enter(stream)
        session.wake()

    async def on_unsubscribe(self, frame: ClientFrame) -> None:
        stream = frame.data["stream"]
        if stream not in self.session.cursors:
            raise InvalidFrame(
                "not_subscribed", f"You are not subscribed to {stream[:120]!r}.", frame.id
            )
        await self.session.leave(stream)
        await self.session.send_frame({"type": "unsubscribed", "stream": stream}, ref=frame.id)

    async def on_publish(self, frame: ClientFrame) -> None:
        session = self.session
        stream, payload = frame.data["stream"], frame.data["payload"]
        limits = session.limits()
        typing = publish_hooks.is_ephemeral(stream, payload)
        budget, what = (
            (limits.typing, "typing frames") if typing else (limits.publishes, "publishes")
        )
        if not budget.take():
            raise RateLimited(
                f"Too many {what}: at most {budget.rate:g} a second (bursts of {budget.burst:g}). "
                + (
                    "It was not sent; the next keystroke sends another."
                    if typing
                    else "It was not published; send it again later."
                ),
                ref=frame.id,
                retry_after_ms=int(1000 / budget.rate),
            )
        await database_sync_to_async(stream_check_writable)(user=session.user, stream=stream)
        # An app's own kinds of publish (the chat's lines and typing: chat/services.py).
        app_ack = await publish_hooks.handle(
            user=session.user, stream=stream, payload=payload, client_id=frame.id or ""
        )
        if app_ack is not None:
            await session.send_frame(app_ack, ref=frame.id)
            return
        try:
            result = await publish.publish(
                stream=stream,
                payload=payload,
                sender=session.user.username,
                # Per user and stream: the same client id on another stream is another message.
                idempotency=publish.idempotency_key(f"u{session.user.pk}:{stream}", frame.id or ""),
            )
        except publish.InvalidPayload as exc:
            raise InvalidFrame("bad_payload", str(exc), frame.id) from None
        ack = {
            "type": "ack",
            "stream": stream,
            "seq": result.seq,
            "epoch": result.epoch,
            "duplicate": result.duplicate,
        }
        await session.send_frame(ack, ref=frame.id)

    async def on_ack(self, frame: ClientFrame) -> None:
        stream, seq = frame.data["stream"], frame.data["seq"]
        cursor = self.session.cursors.get(stream)
        if cursor is None or seq > cursor.last or cursor.epoch is None:
            raise InvalidFrame(
                "bad_ack",
                f"You cannot ack {stream[:120]!r} seq {seq}: it was not delivered here.",
                frame.id,
            )
        if stream.startswith("user:"):
            await broker.current().mark(stream, field="acked", epoch=cursor.epoch, seq=seq)
        elif tallied(stream):
            # Counted once per message and socket: from this socket's last ack on.
            acked = self.session.acked
            if acked is None:
                acked = self.session.acked = {}
            epoch, last = acked.get(stream, (cursor.epoch, 0))
            if epoch != cursor.epoch:
                last = 0  # a new epoch starts its seqs again
            if seq > last:
                acked[stream] = (cursor.epoch, seq)
                tallies().acked(stream, cursor.epoch, range(last + 1, seq + 1))


# Frame type -> its handler, looked up once: a name built per frame for getattr() would also
# sit in CPython's type attribute cache for good, one more small object pinning heap memory.
HANDLERS = {kind: getattr(Inbound, f"on_{kind}") for kind in protocol.CLIENT_FRAMES}


def check_token_scope(token_streams: frozenset[str] | None, stream: str, own: list[str]) -> None:
    """A socket opened with a connection token that lists streams reads only those, and its
    own (realtime/connect_tokens.py); StreamDenied otherwise."""
    if token_streams is not None and stream not in token_streams and stream not in own:
        raise StreamDenied(
            "forbidden_stream", f"Your connection token does not include {stream[:80]}."
        )


def own_streams(user: Any) -> list[str]:
    """The streams every socket of a user has from the start."""
    return [groups.user_stream(user.pk), groups.BROADCAST_STREAM]
