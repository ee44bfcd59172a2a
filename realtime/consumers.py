"""The WebSocket consumer: authenticate, join stream groups, deliver every stream in order.

Per connection and stream the consumer keeps a cursor (epoch, last seq delivered). Frames from
the layer go into one bounded queue per connection, and one writer task drains it in order:
  seq == last + 1  -> send;   seq <= last -> a duplicate, drop;
  seq  > last + 1  -> a gap: read the missing range from history, send it, then this frame.
When the queue is full a frame is dropped and its stream marked dirty; once the queue is empty
the writer reads the stream's head and fetches whatever is missing. So a slow socket costs
bounded memory, and nothing is lost within the history's retention.

Close codes a client sees:
  4401  not logged in, or the login ended (logout, session deleted or expired, password
        changed, deactivated): do not retry until the user logs in
  4429  the user has MAX_SOCKETS_PER_USER sockets open already: try again later
  4503  try again later, with backoff (Redis unreachable at connect). RFC 6455's code for this
        is 1013, but Autobahn (under Daphne) lets an application send only 1000 and 3000-4999.
  1008  policy violation: the socket kept sending past its rate limit (realtime/limits.py)
  1009  frame above Daphne's 1 MiB limit (sent by Daphne itself)

However the consumer ends (a close, a dropped connection, an exception), `_release()` runs once:
counters, presence, group memberships, the session watch and the user's socket count are given
back. An unexpected exception while handling one client frame answers `internal_error` and the
socket stays open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import traceback
from collections import deque
from dataclasses import dataclass
from typing import Any

from autobahn.exception import Disconnected
from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.auth import get_user_model

from realtime import (
    broker,
    chat,
    direct_send,
    groups,
    presence,
    protocol,
    publish,
    session_watch,
)
from realtime.broker import BrokerUnavailable
from realtime.limits import SocketLimits
from realtime.protocol import InvalidFrame, Position
from realtime.selectors import StreamDenied, stream_check_readable, stream_check_writable
from realtime.stats import replica_stats

logger = logging.getLogger(__name__)

CLOSE_UNAUTHORIZED = 4401
CLOSE_TOO_MANY_SOCKETS = 4429
CLOSE_TRY_AGAIN_LATER = 4503
CLOSE_POLICY_VIOLATION = 1008
# Errors that mean "Redis is not answering": the caller reports it and nothing else breaks.
# How often a process records how far its sockets have delivered user streams (the ledger).
DELIVERED_MARK_SECS = 0.5
MARKS_PER_PIPELINE = 100
# History entries a replay reads per round trip from Redis at most; REPLAY_BATCH_BYTES bounds
# the bytes (the first read assumes entries as large as MAX_PAYLOAD_BYTES, later ones size
# themselves by the largest entry seen).
REPLAY_BATCH = 500


@dataclass
class Cursor:
    epoch: str | None
    last: int


class DeliveredMarks:
    """The delivery ledger's `delivered` marks for every socket of one event loop: a socket notes
    how far it has delivered a user stream, and every DELIVERED_MARK_SECS the streams that moved
    are written together, a pipeline per MARKS_PER_PIPELINE, rather than a script call per
    socket and stream (which, under a push storm, cost as many round trips as the pushes)."""

    def __init__(self) -> None:
        self.pending: dict[str, tuple[str, int]] = {}  # stream -> (epoch, seq)
        self.timer: asyncio.TimerHandle | None = None

    def note(self, stream: str, epoch: str, seq: int) -> None:
        noted = self.pending.get(stream)
        if noted is None or noted[0] != epoch or seq > noted[1]:
            self.pending[stream] = (epoch, seq)
        if self.timer is None:
            self.timer = asyncio.get_running_loop().call_later(DELIVERED_MARK_SECS, self._flush)

    def _flush(self) -> None:
        self.timer = None
        marks, self.pending = self.pending, {}
        task = asyncio.ensure_future(self._write(list(marks.items())))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _write(self, marks: list[tuple[str, tuple[str, int]]]) -> None:
        for start in range(0, len(marks), MARKS_PER_PIPELINE):
            batch = marks[start : start + MARKS_PER_PIPELINE]
            with contextlib.suppress(BrokerUnavailable):
                await broker.current().mark_many([(s, "delivered", epoch, seq) for s, (epoch, seq) in batch])


_delivered_marks: dict[asyncio.AbstractEventLoop, DeliveredMarks] = {}


def delivered_marks() -> DeliveredMarks:
    loop = asyncio.get_running_loop()
    marks = _delivered_marks.get(loop)
    if marks is None:
        # One loop per process in production; tests run many, so closed ones are dropped.
        for old in [other for other in _delivered_marks if other.is_closed()]:
            del _delivered_marks[old]
        marks = _delivered_marks[loop] = DeliveredMarks()
    return marks


class RealtimeConsumer(AsyncWebsocketConsumer):
    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.cursors: dict[str, Cursor] = {}
        self.queue: deque[tuple[Any, ...]] = deque()
        self.dirty: set[str] = set()
        self.writer: asyncio.Task[None] | None = None
        self.ready = False
        self.counted = False
        self.released = False
        self.presence: presence.ConnectionPresence | None = None
        self.session_digest: str | None = None
        # Made on the first frame from the client or the first replay: most sockets only listen.
        self._limits: SocketLimits | None = None
        # Daphne's socket, for writing in-order stream frames directly (None: the usual path).
        self.wire = direct_send.ws_protocol_of(send)
        layer = get_channel_layer(self.channel_layer_alias)
        try:
            if "sinks" not in getattr(layer, "extensions", ()):
                await super().__call__(scope, receive, send)
                return
            # Channels' own loop would also wait on the layer's inbox for this channel: a queue
            # and a task per socket. Here every layer message reaches the consumer through its
            # sink (stream frames, and on_layer_message for the rest), so the only inbox is the
            # socket's.
            self.scope = scope
            self.channel_layer = layer
            self.channel_name = await layer.new_channel()
            layer.add_sink(self.channel_name, self)
            self.daphne_send = send
            self.base_send = send if self.wire is None else self._send_after_queued_frames
            try:
                while True:
                    await self.dispatch(await receive())
            except StopConsumer:
                pass
        finally:
            # However it ended: a close, a dropped connection, or an exception that will close
            # it with 1011. Before, a crash skipped disconnect() and its socket stayed counted
            # and "online" until the replica restarted.
            await self._release()
            if getattr(self, "channel_name", None) is not None:
                layer.discard_channel(self.channel_name)

    async def _send_after_queued_frames(self, message: dict[str, Any]) -> None:
        # Stream frames written by send_now wait for the end of the loop turn (direct_send.py);
        # anything sent another way goes after them, never ahead.
        direct_send.flush_socket(self.wire)
        await self.daphne_send(message)

    async def dispatch(self, message: dict[str, Any]) -> None:
        # Channels would first run close_old_connections() in a worker thread, a thread hop per
        # message; the handlers here reach the database only through database_sync_to_async,
        # which does that itself.
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    # --- connecting ----------------------------------------------------------------------------

    async def connect(self) -> None:
        user = self.scope["user"]
        if not user.is_authenticated:
            await self._refuse("unauthorized", "Log in first; then reconnect.", CLOSE_UNAUTHORIZED)
            return
        self.user = user
        # The session's proof of the password it was made with (as Django checks it per request):
        # a password change since then ends this socket too (rt_recheck).
        self.auth_hash = user.get_session_auth_hash()
        problems: list[InvalidFrame | StreamDenied] = []
        try:
            resume = protocol.parse_resume_query(self.scope.get("query_string", b""))
        except InvalidFrame as exc:
            resume, problems = {}, [exc]
        own = [groups.user_stream(user.pk), groups.BROADCAST_STREAM]
        wanted = own + [stream for stream in resume if stream not in own]
        allowed = []
        for stream in wanted:
            if len(allowed) >= settings.MAX_STREAMS_PER_SOCKET:
                problems.append(_too_many_streams(stream))
                continue
            try:
                if stream not in own:
                    await database_sync_to_async(stream_check_readable)(user=user, stream=stream)
                allowed.append(stream)
            except StreamDenied as exc:
                problems.append(exc)
        self.channel_layer.add_sink(self.channel_name, self)
        self.presence = presence.ConnectionPresence(
            user_id=user.pk, username=user.username, scope_query=self.scope.get("query_string", b"")
        )
        try:
            try:
                admitted = await presence.user_admit(
                    user_id=user.pk, conn=self.presence.conn, limit=settings.MAX_SOCKETS_PER_USER
                )
            except BrokerUnavailable:
                # Counted like presence, best effort: if the count cannot be read the socket is
                # let in (the delivery calls below still need Redis, and refuse it if it is down).
                admitted = True
            if not admitted:
                self.presence = None  # registered nowhere: nothing to give back
                logger.info(
                    "user=%s refused: %d sockets open", user.username, settings.MAX_SOCKETS_PER_USER
                )
                await self._refuse(
                    "too_many_sockets",
                    f"You have {settings.MAX_SOCKETS_PER_USER} connections open already, the most "
                    "one user may; close a tab or another device's app, then reconnect.",
                    CLOSE_TOO_MANY_SOCKETS,
                )  # fmt: skip
                return
            for stream in allowed:
                group = groups.group_for_stream(stream)
                await self.channel_layer.group_add(group, self.channel_name)
            heads = await broker.current().heads(allowed)
        except BrokerUnavailable as exc:
            logger.warning("user=%s connect failed: Redis unavailable (%r)", user.username, exc)
            await self._refuse(
                "unavailable", "Messaging is unavailable; retry shortly.", CLOSE_TRY_AGAIN_LATER
            )
            return
        for stream in allowed:
            self._place_cursor(stream, resume.get(stream), heads[stream])
        await self.accept()
        replica_stats.open_connections += 1
        replica_stats.connections_total += 1
        self.counted = True
        logger.info("connected user=%s replica=%s resume=%d", user.username, settings.REPLICA_ID, len(resume))
        await self._send_text(
            protocol.encode(
                {
                    "type": "hello",
                    "replica": settings.REPLICA_ID,
                    "user": user.username,
                    "user_id": user.pk,
                    # Names this socket on its replica: the transport lab's "direct" answer
                    # finds it with the layer's local_sink() only on that replica.
                    "connection": self.channel_name,
                    "streams": {s: {"epoch": c.epoch, "seq": c.last} for s, c in self.cursors.items()},
                }
            )
        )
        for problem in problems:
            await self._send_error(problem.code, problem.message)
        self.ready = True
        self._wake_writer()
        # Presence: this socket's entries in its rooms, refreshed on a heartbeat (presence.py).
        await self.presence.start(list(self.cursors))
        session_key = self.scope.get("session_key")
        if session_key:
            self.session_digest = session_watch.session_digest(session_key)
            session_watch.watch(self, session_key)

    def _place_cursor(self, stream: str, wanted: Position | None, head: broker.Position) -> None:
        """A fresh subscription starts at the head; a resumed one where the client left off,
        with a catch-up queued before any live frame."""
        if wanted is None:
            self.cursors[stream] = Cursor(head.epoch, head.seq)
        else:
            self.cursors[stream] = Cursor(wanted.epoch, wanted.seq)
            self.queue.appendleft(("catch_up", stream, True))

    async def _refuse(self, code: str, message: str, close_code: int) -> None:
        # Accept only to close with a code a browser can read (a refused handshake is a bare 403).
        await self._leave_all_groups()
        await self.accept()
        await self._send_error(code, message)
        await self.close(code=close_code)

    async def disconnect(self, code: int) -> None:
        await self._release()

    async def _release(self) -> None:
        """Give back all this socket holds; once, however the consumer ends."""
        if self.released:
            return
        self.released = True
        self.ready = False
        session_watch.unwatch(self)
        if self.counted:
            replica_stats.open_connections -= 1
            self.counted = False
        if self.writer is not None:
            self.writer.cancel()
        if self.presence is not None:
            presence_, self.presence = self.presence, None
            await presence_.close()
        if getattr(self, "channel_layer", None) is not None and getattr(self, "channel_name", None):
            await self._leave_all_groups()

    async def _leave_all_groups(self) -> None:
        self.channel_layer.remove_sink(self.channel_name)
        for stream in list(self.cursors):
            await self._leave(stream)

    async def _leave(self, stream: str) -> None:
        self.cursors.pop(stream, None)
        with contextlib.suppress(BrokerUnavailable):
            await self.channel_layer.group_discard(groups.group_for_stream(stream), self.channel_name)

    # --- frames from the layer (the sink) ------------------------------------------------------

    async def on_stream_frame(self, stream: str, seq: int, epoch: str, frame: str) -> None:
        if self.send_now(stream, seq, epoch, frame):
            return
        if self.wire is not None and direct_send.backlogged(self.wire):
            # The client reads slower than frames come: hold nothing for it but the stream's
            # name; the writer fetches from history what it missed once the socket drained.
            self.dirty.add(stream)
            replica_stats.frames_deferred += 1
        elif len(self.queue) >= settings.DELIVERY_QUEUE_MAX_FRAMES:
            # Backpressure: drop it, and fetch it from history once the writer has caught up.
            self.dirty.add(stream)
            replica_stats.frames_dropped += 1
        else:
            self.queue.append(("frame", stream, seq, epoch, frame))
        self._wake_writer()

    def on_layer_message(self, message: dict[str, Any]) -> None:
        """Any other message for this socket from the layer (typing, presence): in line with the
        stream frames, through the same bounded queue."""
        if len(self.queue) >= settings.DELIVERY_QUEUE_MAX_FRAMES:
            replica_stats.frames_dropped += 1  # ephemeral: nothing to fetch back later
            return
        self.queue.append(("message", message))
        self._wake_writer()

    def send_now(self, stream: str, seq: int, epoch: str, frame: str) -> bool:
        """Write the common case at once: the next seq, nothing queued, no writer running. It
        skips the queue, a writer task and Channels' send chain per socket (direct_send.py).
        The layer calls it first for every local socket (see layer.StreamSink)."""
        cursor = self.cursors.get(stream)
        wire = self.wire
        if (
            wire is None or not self.ready or self.writer is not None or self.queue or self.dirty
            or cursor is None or seq != cursor.last + 1 or epoch != cursor.epoch
            or not direct_send.is_open(wire) or direct_send.backlogged(wire)
        ):  # fmt: skip
            return False
        direct_send.write_frame(wire, frame)
        cursor.last = seq  # after the write: had it failed, the next frame repairs the gap
        replica_stats.frames_out += 1
        self._note_delivered(stream, cursor)
        return True

    async def on_resync(self) -> None:
        """The layer lost Redis for a while: anything may have been published meanwhile."""
        self.dirty.update(self.cursors)
        self._wake_writer()

    async def rt_ephemeral(self, event: dict[str, Any]) -> None:
        # Typing and presence frames (publish.publish_ephemeral): no seq, written as they come,
        # and only to sockets that asked for them with ?ephemeral=1 (the chat page does).
        if self.presence is not None and self.presence.wanted and event.get("stream") in self.cursors:
            await self._send_text(event["frame"])

    async def rt_recheck(self, event: dict[str, Any]) -> None:
        """Access changed while this socket was open (realtime/access.py): check its streams
        again with a fresh copy of its user; leave what it may no longer read. An event naming
        an ended session (logout, deletion) closes only the socket opened with it."""
        if "ended_session" in event:
            if event["ended_session"] == self.session_digest:
                await self.session_ended()
            return
        user = await get_user_model()._default_manager.filter(pk=self.user.pk).afirst()
        if user is None or not user.is_active or user.get_session_auth_hash() != self.auth_hash:
            # Deactivated, deleted, or the password changed: Django logs the session out on its
            # next request; the socket goes now, and the client must log in again.
            await self._send_error("access_revoked", "Your login is no longer valid; log in again.")
            await self.close(code=CLOSE_UNAUTHORIZED)
            return
        self.user = user
        own = (groups.user_stream(user.pk), groups.BROADCAST_STREAM)
        streams = [event["stream"]] if event.get("stream") else list(self.cursors)
        for stream in streams:
            if stream in own or stream not in self.cursors:
                continue
            try:
                await database_sync_to_async(stream_check_readable)(user=user, stream=stream)
            except StreamDenied as exc:
                logger.info("access revoked user=%s stream=%s", user.username, stream)
                if self.presence is not None:
                    await self.presence.exit(stream)
                await self._leave(stream)
                await self._send_error(
                    "access_revoked", f"You may no longer read {stream}: {exc.message}",
                    stream=stream,
                )  # fmt: skip

    async def session_ended(self) -> None:
        """The login session this socket was opened with is gone (session_watch.py)."""
        if not self.ready:
            return
        self.ready = False
        logger.info("user=%s socket closed: its session ended", self.user.username)
        await self._send_error(
            "session_ended", "Your login session ended (logged out or expired); log in again."
        )
        await self.close(code=CLOSE_UNAUTHORIZED)

    async def rt_deliver(self, event: dict[str, Any]) -> None:
        # Only reached if the sink was never attached; kept for Channels' plain path.
        await self.on_stream_frame(event["stream"], event["seq"], event["epoch"], event["frame"])

    def _wake_writer(self) -> None:
        if self.ready and self.writer is None and (self.queue or self.dirty):
            self.writer = asyncio.get_running_loop().create_task(self._write())

    async def _write(self) -> None:
        try:
            while self.queue or self.dirty:
                if self.queue:
                    item = self.queue.popleft()
                    if item[0] == "message":
                        await self._dispatch_quietly(item[1])
                        continue
                    try:
                        if item[0] == "frame":
                            await self._deliver_in_order(*item[1:])
                        else:
                            await self._catch_up(item[1], notify=item[2])
                    except BrokerUnavailable as exc:
                        # History unreachable: the stream is checked again on the next frame, or
                        # when the layer resyncs after Redis is back.
                        logger.info("catch-up of %s deferred: %r", item[1], exc)
                        self.dirty.add(item[1])
                        if not self.queue:
                            return
                else:
                    stream = self.dirty.pop()
                    try:
                        await self._catch_up(stream, notify=False)
                    except BrokerUnavailable:
                        self.dirty.add(stream)
                        return
        except Disconnected:
            pass  # the socket closed under a replay; disconnect() is on its way
        finally:
            self.writer = None

    async def _dispatch_quietly(self, message: dict[str, Any]) -> None:
        try:
            await self.dispatch(message)
        except Exception:
            # A bad layer message must not stop the writer (and with it the streams).
            logger.exception("handling %s failed", message.get("type"))

    async def _deliver_in_order(self, stream: str, seq: int, epoch: str, frame: str) -> None:
        cursor = self.cursors.get(stream)
        if cursor is None:
            return  # unsubscribed meanwhile
        if epoch != cursor.epoch:
            if cursor.epoch is not None or cursor.last:
                await self._send_resumed(stream, recovered=False, reason="epoch", epoch=epoch, seq=0)
            cursor.epoch, cursor.last = epoch, 0
        if seq <= cursor.last:
            replica_stats.duplicates_dropped += 1
            return
        if seq > cursor.last + 1:
            replica_stats.gaps_repaired += 1
            await self._replay(stream, cursor, upto=seq - 1)
        cursor.last = seq
        await self._send_stream_frame(stream, cursor, frame)

    async def _catch_up(self, stream: str, *, notify: bool) -> None:
        """Compare the cursor with the stream's head and deliver what is missing."""
        cursor = self.cursors.get(stream)
        if cursor is None:
            return
        head = (await broker.current().heads([stream]))[stream]
        replayed, recovered, reason = 0, True, "resume"
        if head.epoch is None:
            if cursor.epoch is not None or cursor.last:
                # The stream is gone (Redis lost it) and nothing new was sent yet: say so now,
                # whether or not the client asked, since its position means nothing any more.
                await self._send_resumed(stream, recovered=False, reason="epoch", epoch=None, seq=0)
                notify = False
            cursor.epoch, cursor.last = None, 0
        elif head.epoch != cursor.epoch:
            if cursor.epoch is not None or cursor.last:
                recovered, reason = False, "epoch"
                await self._send_resumed(stream, recovered=False, reason=reason, epoch=head.epoch, seq=0)
                notify = False
            cursor.epoch, cursor.last = head.epoch, 0
            replayed = await self._replay(stream, cursor, upto=head.seq)
        elif head.seq < cursor.last:
            await self._send_error(
                "seq_ahead",
                f"{stream} is at seq {head.seq}; you resumed from {cursor.last}, which it never "
                "reached. Continuing from the head.",
            )
            cursor.last, recovered, reason = head.seq, False, "ahead"
        elif head.seq > cursor.last:
            replayed = await self._replay(stream, cursor, upto=head.seq)
        if notify:
            await self._send_resumed(
                stream, recovered=recovered, reason=reason, epoch=cursor.epoch, seq=cursor.last,
                replayed=replayed,
            )  # fmt: skip

    async def _replay(self, stream: str, cursor: Cursor, *, upto: int) -> int:
        """Send frames cursor.last+1 .. upto from history; say so if some are gone for good.

        Memory: history is read in batches of at most REPLAY_BATCH_BYTES, and the next batch is
        read only once this one is written (each write waits for the socket to drain), so a
        socket that stops reading holds about SOCKET_BACKLOG_MAX_BYTES plus one batch. Before, a
        batch was 500 entries whatever their size: 30 MB for a room of 60 KB messages, per
        stuck socket. The socket's replay budget paces what it may ask for (limits.py)."""
        replayed = 0
        largest = settings.MAX_PAYLOAD_BYTES + 200  # a guess until the first batch is read
        while cursor.last < upto:
            count = max(1, min(REPLAY_BATCH, settings.REPLAY_BATCH_BYTES // largest))
            entries = await broker.current().read(stream, after=cursor.last, upto=upto, limit=count)
            if not entries:
                break
            sizes = [len(frame) for _, frame in entries]  # characters: bytes for ASCII JSON
            largest, held = max(sizes), sum(sizes)
            await self._pace_replay(held)
            replica_stats.replay_bytes_in_flight += held
            replica_stats.replay_bytes_in_flight_max = max(
                replica_stats.replay_bytes_in_flight_max, replica_stats.replay_bytes_in_flight
            )
            try:
                first = entries[0][0]
                if first > cursor.last + 1:
                    await self._send_resumed(
                        stream, recovered=False, reason="gap", epoch=cursor.epoch, seq=first - 1
                    )
                for (seq, frame), size in zip(entries, sizes, strict=True):
                    cursor.last = seq
                    await self._send_stream_frame(stream, cursor, frame)
                    replayed += 1
                    held -= size
                    replica_stats.replay_bytes_in_flight -= size
            finally:
                replica_stats.replay_bytes_in_flight -= held  # what a close left unsent
            del entries
        if cursor.last < upto:  # trimmed away entirely
            await self._send_resumed(stream, recovered=False, reason="gap", epoch=cursor.epoch, seq=upto)
            cursor.last = upto
        return replayed

    async def _pace_replay(self, size: int) -> None:
        """Charge `size` bytes of replay to this socket's budget; past it, wait until it has
        refilled (the replay goes on, slower) and tell the client once."""
        limits = self.limits()
        wait_secs = limits.replay.spend(size)
        if wait_secs <= 0:
            return
        replica_stats.replays_paced += 1
        if not limits.replay_limited_told:
            limits.replay_limited_told = True
            await self._send_error(
                "replay_limited",
                f"This connection asked for more history than "
                f"{settings.SOCKET_REPLAY_BYTES_PER_MIN // (1024 * 1024)} MiB a minute: the "
                "rest follows at that pace. Nothing is lost.",
            )  # fmt: skip
        await asyncio.sleep(wait_secs)

    async def _send_stream_frame(self, stream: str, cursor: Cursor, frame: str) -> None:
        if self.wire is not None:
            await direct_send.drained(self.wire)  # a replay waits for a slow client, no faster
        await self._send_text(frame)
        self._note_delivered(stream, cursor)

    @staticmethod
    def _note_delivered(stream: str, cursor: Cursor) -> None:
        """For the delivery ledger: how far this socket has delivered a user stream."""
        if cursor.epoch is not None and stream.startswith("user:"):
            delivered_marks().note(stream, cursor.epoch, cursor.last)

    async def _send_resumed(
        self, stream: str, *, recovered: bool, reason: str, epoch: str | None, seq: int,
        replayed: int = 0,
    ) -> None:  # fmt: skip
        await self._send_text(
            protocol.encode(
                {"type": "resumed", "stream": stream, "recovered": recovered, "reason": reason,
                 "epoch": epoch, "seq": seq, "replayed": replayed}
            )  # fmt: skip
        )

    # --- frames from the client ----------------------------------------------------------------

    def limits(self) -> SocketLimits:
        if self._limits is None:
            self._limits = SocketLimits()
        return self._limits

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        replica_stats.frames_in += 1
        if not self.ready:
            return  # closing (refused, or the session ended): nothing more is handled
        limits = self.limits()
        if not limits.frames.take():
            await self._refuse_frame(limits, text_data)
            return
        if text_data is None:
            await self._send_error(
                "binary_not_supported", "Binary frames are not supported; send JSON text frames."
            )
            return
        try:
            frame = protocol.parse_client_frame(text_data, max_bytes=settings.MAX_CLIENT_FRAME_BYTES)
        except InvalidFrame as exc:
            await self._send_error(exc.code, exc.message, exc.ref)
            return
        try:
            await getattr(self, f"on_{frame.type}")(frame)
        except RateLimited as exc:
            await self._send_error(exc.code, exc.message, exc.ref, retry_after_ms=exc.retry_after_ms)
        except InvalidFrame as exc:
            await self._send_error(exc.code, exc.message, exc.ref)
        except StreamDenied as exc:
            await self._send_error(exc.code, exc.message, frame.id)
        except BrokerUnavailable:
            await self._send_error(
                "unavailable", "Messaging is unavailable; retry shortly.", frame.id
            )
        except Disconnected:
            pass  # the socket closed while answering; _release() is on its way
        except Exception as exc:
            # A bug of ours, not the client's: one line with where it happened (the traceback
            # at DEBUG, so a client repeating the frame cannot flood the log), an answer, and
            # the socket stays open.
            where = traceback.extract_tb(exc.__traceback__)[-1]
            logger.warning(
                "frame %s from user=%s failed: %r at %s:%s", frame.type, self.user.username,
                exc, where.filename, where.lineno,
            )  # fmt: skip
            logger.debug("frame %s failed", frame.type, exc_info=True)
            replica_stats.internal_errors += 1
            await self._send_error(
                "internal_error", "The server failed to handle this frame; it was not acted on. "
                "Your connection is fine.", frame.id,
            )  # fmt: skip

    async def _refuse_frame(self, limits: SocketLimits, text: str | None) -> None:
        """Over the frame rate: answer `rate_limited` (with the frame's id, so a client can
        send it again later), or close with 1008 once the socket has used up its strikes."""
        replica_stats.frames_rate_limited += 1
        if not limits.strikes.take():
            logger.info("user=%s closed: kept sending past the frame rate", self.user.username)
            await self._send_error(
                "rate_limited", f"Closing: this connection kept sending more than "
                f"{settings.SOCKET_FRAMES_PER_SEC:g} frames a second.",
            )  # fmt: skip
            self.ready = False
            if self.wire is not None:
                direct_send.close_with_code(self.wire, CLOSE_POLICY_VIOLATION, "rate limit")
            else:
                await self.close(code=CLOSE_POLICY_VIOLATION)
            return
        ref = None
        if text is not None:
            with contextlib.suppress(InvalidFrame):
                ref = protocol.parse_client_frame(text, max_bytes=settings.MAX_CLIENT_FRAME_BYTES).id
        await self._send_error(
            "rate_limited",
            f"Too many frames: at most {settings.SOCKET_FRAMES_PER_SEC:g} a second (bursts of "
            f"{settings.SOCKET_FRAME_BURST}). This one was not acted on; send it again later.",
            ref, retry_after_ms=1000,
        )  # fmt: skip

    async def on_echo(self, frame: protocol.ClientFrame) -> None:
        await self._answer(frame, {"type": "echo", "replica": settings.REPLICA_ID,
                                   "payload": frame.data.get("payload")})  # fmt: skip

    async def on_ping(self, frame: protocol.ClientFrame) -> None:
        await self._answer(frame, {"type": "pong", "replica": settings.REPLICA_ID})

    async def on_subscribe(self, frame: protocol.ClientFrame) -> None:
        await self._subscribe({frame.data["stream"]: frame.data.get("from")}, ref=frame.id)

    async def on_resume(self, frame: protocol.ClientFrame) -> None:
        await self._subscribe(frame.data["streams"], ref=frame.id)

    async def _subscribe(self, wanted: dict[str, Position | None], *, ref: str | None) -> None:
        for stream, position in wanted.items():
            try:
                await self._subscribe_one(stream, position)
            except (StreamDenied, InvalidFrame) as exc:
                await self._send_error(exc.code, exc.message, ref)

    async def _subscribe_one(self, stream: str, position: Position | None) -> None:
        await database_sync_to_async(stream_check_readable)(user=self.user, stream=stream)
        cursor = self.cursors.get(stream)
        if cursor is not None:
            # Already streaming: move forward to the client's position if it is ahead, never
            # back (that would replay out of order). Then say where the stream stands.
            if position is not None and position.epoch == cursor.epoch and position.seq > cursor.last:
                cursor.last = position.seq
            self.queue.append(("catch_up", stream, True))
            self._wake_writer()
            return
        if len(self.cursors) >= settings.MAX_STREAMS_PER_SOCKET:
            raise _too_many_streams(stream)
        await self.channel_layer.group_add(groups.group_for_stream(stream), self.channel_name)
        head = (await broker.current().heads([stream]))[stream]
        self._place_cursor(stream, position, head)
        if position is None:
            await self._send_text(
                protocol.encode({"type": "subscribed", "stream": stream, "epoch": head.epoch, "seq": head.seq})
            )
        # After `subscribed`: the room's presence frames, this socket's own join among them,
        # reach the socket on their own, and should follow the answer to its subscribe.
        if self.presence is not None:
            await self.presence.enter(stream)
        self._wake_writer()

    async def on_unsubscribe(self, frame: protocol.ClientFrame) -> None:
        stream = frame.data["stream"]
        if stream not in self.cursors:
            raise InvalidFrame("not_subscribed", f"You are not subscribed to {stream[:120]!r}.", frame.id)
        if self.presence is not None:
            await self.presence.exit(stream)
        await self._leave(stream)
        await self._answer(frame, {"type": "unsubscribed", "stream": stream})

    async def on_publish(self, frame: protocol.ClientFrame) -> None:
        stream, payload = frame.data["stream"], frame.data["payload"]
        limits = self.limits()
        typing = chat.is_typing(stream, payload)
        budget, what = (limits.typing, "typing frames") if typing else (limits.publishes, "publishes")
        if not budget.take():
            raise RateLimited(
                f"Too many {what}: at most {budget.rate:g} a second (bursts of {budget.burst:g}). "
                + ("It was not sent; the next keystroke sends another." if typing
                   else "It was not published; send it again later."),
                ref=frame.id, retry_after_ms=int(1000 / budget.rate),
            )  # fmt: skip
        await database_sync_to_async(stream_check_writable)(user=self.user, stream=stream)
        # Chat lines are stored first and published after the commit; typing is ephemeral.
        chat_ack = await chat.socket_publish(
            user=self.user, stream=stream, payload=frame.data["payload"], client_id=frame.id or ""
        )
        if chat_ack is not None:
            await self._answer(frame, chat_ack)
            return
        try:
            result = await publish.publish(
                stream=stream,
                payload=frame.data["payload"],
                sender=self.user.username,
                # Per user and stream: the same client id on another stream is another message.
                idempotency=publish.idempotency_key(f"u{self.user.pk}:{stream}", frame.id or ""),
            )
        except publish.InvalidPayload as exc:
            raise InvalidFrame("bad_payload", str(exc), frame.id) from None
        await self._answer(
            frame,
            {"type": "ack", "stream": stream, "seq": result.seq, "epoch": result.epoch,
             "duplicate": result.duplicate},
        )  # fmt: skip

    async def on_ack(self, frame: protocol.ClientFrame) -> None:
        stream, seq = frame.data["stream"], frame.data["seq"]
        cursor = self.cursors.get(stream)
        if cursor is None or seq > cursor.last or cursor.epoch is None:
            raise InvalidFrame(
                "bad_ack", f"You cannot ack {stream[:120]!r} seq {seq}: it was not delivered here.",
                frame.id,
            )  # fmt: skip
        if stream.startswith("user:"):
            await broker.current().mark(stream, field="acked", epoch=cursor.epoch, seq=seq)

    # --- sending -------------------------------------------------------------------------------

    async def _answer(self, frame: protocol.ClientFrame, answer: dict[str, Any]) -> None:
        if frame.id is not None:
            answer["id"] = frame.id
        await self._send_text(protocol.encode(answer))

    async def _send_text(self, text: str) -> None:
        replica_stats.frames_out += 1
        await self.send(text_data=text)

    async def _send_error(
        self, code: str, message: str, ref: str | None = None, *, stream: str | None = None,
        retry_after_ms: int | None = None,
    ) -> None:  # fmt: skip
        replica_stats.errors_sent += 1
        await self._send_text(
            protocol.error_frame(code, message, ref, stream=stream, retry_after_ms=retry_after_ms)
        )


class RateLimited(InvalidFrame):
    """A frame refused by one of the socket's budgets: the client may send it again later."""

    def __init__(self, message: str, *, ref: str | None, retry_after_ms: int) -> None:
        super().__init__("rate_limited", message, ref)
        self.retry_after_ms = retry_after_ms


def _too_many_streams(stream: str) -> InvalidFrame:
    return InvalidFrame(
        "too_many_streams",
        f"Not subscribed to {stream[:60]!r}: a connection may hold at most "
        f"{settings.MAX_STREAMS_PER_SOCKET} streams. Unsubscribe from one first.",
    )
