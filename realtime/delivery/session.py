"""One socket's streams, delivered in order whatever the transport.

Per stream the session keeps a cursor (delivery/cursor.py). Frames from the layer go into one
bounded queue per socket, and one writer task drains it in order, repairing gaps from history.
The common case skips all that: the next seq, nothing queued, written at once through the
transport's fast path (`send_now`). When the queue is full a frame is dropped and its stream
marked dirty; once the queue is empty the writer reads the stream's head and fetches whatever
is missing. So a slow socket costs bounded memory, and nothing is lost within the history's
retention. The session is the layer's sink for its channel (realtime/layer.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings
from django.db import DatabaseError

from realtime import (
    access,
    broker,
    control,
    groups,
    presence,
    protocol,
    sealing,
    session_watch,
    streams,
)
from realtime.broker import BrokerUnavailable
from realtime.delivery.cursor import Cursor, Decision
from realtime.delivery.marks import delivered_marks
from realtime.lifetimes import counted
from realtime.limits import SocketLimits
from realtime.protocol import Position
from realtime.selectors import archived_messages_read
from realtime.stats import replica_stats
from realtime.transport import SocketClosed, SocketWriter

logger = logging.getLogger(__name__)

# History entries a replay reads per round trip from Redis (or the archive) at most;
# REPLAY_BATCH_BYTES bounds the bytes (the first read assumes entries as large as
# MAX_PAYLOAD_BYTES, later ones size themselves by the largest entry seen).
REPLAY_BATCH = 500


@dataclass
class Replay:
    """What one replay did: frames sent, whether some were lost (said to the client as a gap),
    whether some came from the archive; and the largest frame seen, which sizes its batches."""

    sent: int = 0
    lost: bool = False
    from_archive: bool = False
    largest: int = 0

    def batch_count(self) -> int:
        """Entries the next read may ask for: REPLAY_BATCH_BYTES by the largest frame seen (a
        payload of MAX_PAYLOAD_BYTES until the first batch was read)."""
        largest = self.largest or settings.MAX_PAYLOAD_BYTES + 200
        return max(1, min(REPLAY_BATCH, settings.REPLAY_BATCH_BYTES // largest))


def _archived(stream: str) -> bool:
    """Whether `stream`'s kind keeps an archive (a kind unregistered meanwhile keeps none)."""
    try:
        return streams.policy_for(stream).archive
    except ValueError:
        return False


@counted
class Session:
    """A socket's delivery state. Made by the consumer once the socket is accepted."""

    # One per socket, so no __dict__ (about 1 KiB a socket saved).
    __slots__ = (
        "_limits", "acked", "auth_hash", "channel_name", "cursors", "dirty", "inbound", "layer",
        "presence", "queue", "ready", "released", "session_digest", "task", "token_streams",
        "user", "writer",
    )  # fmt: skip
    # Layer messages for this socket, by type: the method that takes each (in queue order).
    LAYER_HANDLERS = {
        "rt.ephemeral": "on_ephemeral",
        "rt.deliver": "on_deliver",
        "rt.recheck": "on_recheck",
        "rt.client_frame": "on_client_frame",
        "rt.kick": "on_kick",
        "rt.unsubscribe": "on_unsubscribe",
    }

    def __init__(
        self,
        *,
        user: Any,
        writer: SocketWriter,
        layer: Any,
        channel_name: str,
        presence_: presence.ConnectionPresence | None = None,
    ) -> None:
        self.user = user
        self.writer = writer
        # stream -> the last seq this socket acknowledged, for tallied streams (tallies.py);
        # made by the first such ack (most sockets never send one).
        self.acked: dict[str, tuple[str, int]] | None = None
        self.layer = layer
        self.channel_name = channel_name
        self.presence = presence_
        self.cursors: dict[str, Cursor] = {}
        # What the writer task has to do, in order; a deque from the first item on (an empty
        # deque is ~600 bytes, and most sockets never queue anything), none again once drained.
        self.queue: deque[tuple[Any, ...]] | tuple[()] = ()
        self.dirty: set[str] = set()
        self.task: asyncio.Task[None] | None = None
        self.ready = False  # accepted and greeted; False again once it is closing
        self.released = False
        self.session_digest: str | None = None
        self.auth_hash = ""  # the login's password proof when the socket opened (access.py)
        # Opened with a connection token that names its streams: only those (and its own).
        self.token_streams: frozenset[str] | None = None
        # Made on the first frame from the client or the first replay: most sockets only listen.
        self._limits: SocketLimits | None = None
        # The client's frames that arrive through the layer (SSE's POSTs): set by the consumer.
        self.inbound: Any = None

    def _queue(self) -> deque[tuple[Any, ...]]:
        queue = self.queue
        if isinstance(queue, tuple):
            queue = self.queue = deque()
        return queue

    def limits(self) -> SocketLimits:
        if self._limits is None:
            self._limits = SocketLimits()
        return self._limits

    # --- streams ---------------------------------------------------------------------------

    def place_cursor(self, stream: str, wanted: Position | None, head: broker.Position) -> None:
        """A fresh subscription starts at the head; a resumed one where the client left off,
        with a catch-up queued before any live frame."""
        if wanted is None:
            self.cursors[stream] = Cursor(head.epoch, head.seq)
        else:
            self.cursors[stream] = Cursor(wanted.epoch, wanted.seq)
            self._queue().appendleft(("catch_up", stream, True))

    async def join(self, stream: str) -> None:
        """Join the stream's group; returns once Redis confirmed it, so a head read after this
        cannot miss a message published in between."""
        await self.layer.group_add(groups.group_for_stream(stream), self.channel_name)

    def catch_up_soon(self, stream: str) -> None:
        self._queue().append(("catch_up", stream, True))
        self.wake()

    async def leave(self, stream: str) -> None:
        self.cursors.pop(stream, None)
        if self.presence is not None:
            await self.presence.exit(stream)
        with contextlib.suppress(BrokerUnavailable):
            await self.layer.group_discard(groups.group_for_stream(stream), self.channel_name)

    async def release(self) -> None:
        """Give back all this socket holds; once, however it ends."""
        if self.released:
            return
        self.released = True
        self.ready = False
        session_watch.unwatch(self)
        if self.task is not None:
            self.task.cancel()
        if self.presence is not None:
            presence_, self.presence = self.presence, None
            await presence_.close()
        self.layer.remove_sink(self.channel_name)
        for stream in list(self.cursors):
            await self.leave(stream)
        # The inbound half and the session point at each other: without this, a closed socket's
        # whole object graph waits for a full garbage collection instead of being freed by
        # reference counting when the consumer returns (docs/memory.md).
        self.inbound = None

    async def close(self, code: int, reason: str = "") -> None:
        self.ready = False
        await self.writer.close(code, reason)

    async def session_ended(self) -> None:
        """The login session this socket was opened with is gone (session_watch.py)."""
        if not self.ready:
            return
        logger.info("user=%s socket closed: its session ended", self.user.username)
        await self.send_error(
            "session_ended", "Your login session ended (logged out or expired); log in again."
        )
        await self.close(protocol.CLOSE_UNAUTHORIZED)

    # --- the layer's sink ------------------------------------------------------------------

    def send_now(self, stream: str, seq: int, epoch: str, frame: str) -> bool:
        """Write the common case at once: the next seq, nothing queued, no writer running. It
        skips the queue and a writer task per socket. The layer calls it first for every local
        socket (hub.StreamSink)."""
        cursor = self.cursors.get(stream)
        if (
            not self.ready
            or self.task is not None
            or self.queue
            or self.dirty
            or cursor is None
            or not cursor.is_next(seq, epoch)
            or not self.writer.write_now(frame)
        ):
            return False
        # After the write: had it failed, the next frame repairs the gap.
        cursor.epoch, cursor.last = epoch, seq
        replica_stats.frames_out += 1
        self._note_delivered(stream, cursor)
        return True

    async def on_stream_frame(self, stream: str, seq: int, epoch: str, frame: str) -> None:
        if self.send_now(stream, seq, epoch, frame):
            return
        if self.writer.backlogged():
            # The client reads slower than frames come: hold nothing for it but the stream's
            # name; the writer fetches from history what it missed once the socket drained.
            self.dirty.add(stream)
            replica_stats.frames_deferred += 1
        elif len(self.queue) >= settings.DELIVERY_QUEUE_MAX_FRAMES:
            # Backpressure: drop it, and fetch it from history once the writer has caught up.
            self.dirty.add(stream)
            replica_stats.frames_dropped += 1
        else:
            self._queue().append(("frame", stream, seq, epoch, frame))
        self.wake()

    def on_layer_message(self, message: dict[str, Any]) -> None:
        """Any other message for this socket from the layer (typing, presence, rechecks): in
        line with the stream frames, through the same bounded queue."""
        if len(self.queue) >= settings.DELIVERY_QUEUE_MAX_FRAMES:
            replica_stats.frames_dropped += 1  # ephemeral: nothing to fetch back later
            return
        self._queue().append(("message", message))
        self.wake()

    async def on_resync(self, only: Callable[[str], bool] | None = None) -> None:
        """The layer lost Redis (or the shard of the streams `only` accepts) for a while:
        anything may have been published meanwhile."""
        self.dirty.update(s for s in self.cursors if only is None or only(s))
        self.wake()

    async def on_ephemeral(self, event: dict[str, Any]) -> None:
        # Typing and presence frames (publish.publish_ephemeral): no seq, written as they come,
        # and only to sockets that asked for them with ?ephemeral=1 (the chat page does).
        wanted = self.presence is not None and self.presence.wanted
        if wanted and event.get("stream") in self.cursors:
            await self.send_text(event["frame"])

    async def on_recheck(self, event: dict[str, Any]) -> None:
        await access.recheck_socket(self, event)

    async def on_kick(self, event: dict[str, Any]) -> None:
        await control.kick_socket(self, event)

    async def on_unsubscribe(self, event: dict[str, Any]) -> None:
        await control.unsubscribe_socket(self, event)

    async def on_client_frame(self, event: dict[str, Any]) -> None:
        if self.inbound is not None:
            await self.inbound.relayed(event)

    async def on_deliver(self, event: dict[str, Any]) -> None:
        # Only reached if the sink was never attached; kept for Channels' plain path.
        await self.on_stream_frame(event["stream"], event["seq"], event["epoch"], event["frame"])

    # --- the writer task -------------------------------------------------------------------

    def wake(self) -> None:
        if self.ready and self.task is None and (self.queue or self.dirty):
            self.task = asyncio.get_running_loop().create_task(self._drain_queue())

    async def _drain_queue(self) -> None:
        try:
            while self.queue or self.dirty:
                if self.queue:
                    item = self._queue().popleft()
                    if item[0] == "message":
                        await self._handle_quietly(item[1])
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
                    # Each dirty stream once: one whose shard is down must not hold back the
                    # others (it stays dirty, and the shard's resync wakes it again).
                    failed = set()
                    while self.dirty and not self.queue:
                        stream = self.dirty.pop()
                        try:
                            await self._catch_up(stream, notify=False)
                        except BrokerUnavailable:
                            failed.add(stream)
                    self.dirty |= failed
                    if failed and not self.queue:
                        return
        except SocketClosed:
            pass  # the socket closed under a replay; release() is on its way
        finally:
            self.task = None
            if not self.queue:
                self.queue = ()

    async def _handle_quietly(self, message: dict[str, Any]) -> None:
        name = self.LAYER_HANDLERS.get(message.get("type", ""))
        if name is None:
            logger.warning("no handler for layer message %r", message.get("type"))
            return
        handler = getattr(self, name)
        try:
            await handler(message)
        except Exception:
            # A bad layer message must not stop the writer (and with it the streams).
            logger.exception("handling %s failed", message.get("type"))

    async def _deliver_in_order(self, stream: str, seq: int, epoch: str, frame: str) -> None:
        cursor = self.cursors.get(stream)
        if cursor is None:
            return  # unsubscribed meanwhile
        if cursor.new_epoch(epoch):
            await self.send_resumed(stream, reason="epoch", epoch=epoch, seq=0)
        decision = cursor.decide(seq)
        if decision is Decision.DUPLICATE:
            replica_stats.duplicates_dropped += 1
            return
        if decision is Decision.GAP:
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
        replay, reason = Replay(), "resume"
        if head.epoch is None:
            if cursor.restart(None):
                # The stream is gone (Redis lost it) and nothing new was sent yet: say so now,
                # whether or not the client asked, since its position means nothing any more.
                await self.send_resumed(stream, reason="epoch", epoch=None, seq=0)
                notify = False
        elif head.epoch != cursor.epoch:
            if cursor.new_epoch(head.epoch):
                reason = "epoch"
                await self.send_resumed(stream, reason=reason, epoch=head.epoch, seq=0)
                notify = False
            replay = await self._replay(stream, cursor, upto=head.seq)
        elif head.seq < cursor.last:
            await self.send_error(
                "seq_ahead",
                f"{stream} is at seq {head.seq}; you resumed from {cursor.last}, which it never "
                "reached. Continuing from the head.",
            )
            cursor.last, reason = head.seq, "ahead"
        elif head.seq > cursor.last:
            replay = await self._replay(stream, cursor, upto=head.seq)
            if replay.lost:
                # The replay answered already: resumed, recovered: false, reason "gap" (history
                # trimmed, or a kind that keeps none). A recovered: true after it would read as
                # the answer to the resume.
                notify = False
            elif replay.from_archive:
                reason = "archive"
        if notify:
            await self.send_resumed(
                stream, reason=reason, epoch=cursor.epoch, seq=cursor.last, replayed=replay.sent
            )

    async def _replay(self, stream: str, cursor: Cursor, *, upto: int) -> Replay:
        """Send frames cursor.last+1 .. upto from history: the Redis window, and before it the
        archive for a stream whose kind keeps one; say so if some are gone for good (trimmed and
        not archived, or never kept: a kind without history).

        Memory: history is read in batches of at most REPLAY_BATCH_BYTES, and the next batch is
        read only once this one is written (each write waits for the socket to drain), so a
        socket that stops reading holds about SOCKET_BACKLOG_MAX_BYTES plus one batch. Before, a
        batch was 500 entries whatever their size: 30 MB for a room of 60 KB messages, per
        stuck socket. The socket's replay budget paces what it may ask for (limits.py), the
        archive's rows as the window's entries."""
        replay = Replay()
        archived: bool | None = None  # whether the stream's kind keeps an archive, once asked
        while cursor.last < upto:
            entries = await broker.current().read(
                stream, after=cursor.last, upto=upto, limit=replay.batch_count()
            )
            first = entries[0][0] if entries else upto + 1
            if first > cursor.last + 1:
                # The Redis window no longer holds cursor.last + 1 (trimmed by length or age).
                if archived is None:
                    archived = _archived(stream) and cursor.epoch is not None
                if archived:
                    del entries  # read again after the archive's part: Redis may trim meanwhile
                    await self._replay_archive(stream, cursor, before=first, replay=replay)
                    continue
            if not entries:
                break
            await self._send_batch(stream, cursor, entries, replay)
            del entries
        if cursor.last < upto:  # trimmed away entirely
            replay.lost = True
            await self.send_resumed(stream, reason="gap", epoch=cursor.epoch, seq=upto)
            cursor.last = upto
        return replay

    async def _replay_archive(
        self, stream: str, cursor: Cursor, *, before: int, replay: Replay
    ) -> None:
        """Send cursor.last+1 .. before-1 from the archive (the database), as the Redis path sends
        its entries; what the archive lacks too (not written yet when Redis dropped it) is a
        gap, said as one."""
        assert cursor.epoch is not None  # _replay asks only then
        while cursor.last < before - 1:
            try:
                rows = await database_sync_to_async(archived_messages_read)(
                    stream=stream,
                    epoch=cursor.epoch,
                    after=cursor.last,
                    before=before,
                    limit=replay.batch_count(),
                )
            except DatabaseError as exc:
                # Said as lost rather than held back: the client reloads its state once, which
                # beats waiting on a database that may not come back soon.
                logger.warning("archive read failed stream=%s: %r", stream, exc)
                break
            if not rows:
                break
            replay.from_archive = True
            replica_stats.frames_from_archive += len(rows)
            await self._send_batch(stream, cursor, rows, replay)
            del rows
        if cursor.last < before - 1:
            replay.lost = True
            await self.send_resumed(stream, reason="gap", epoch=cursor.epoch, seq=before - 1)
            cursor.last = before - 1

    async def _send_batch(
        self, stream: str, cursor: Cursor, entries: list[tuple[int, str]], replay: Replay
    ) -> None:
        """Send one batch of (seq, frame) in order; a gap before its first is said first."""
        sizes = [len(frame) for _, frame in entries]  # characters: bytes for ASCII JSON
        replay.largest, held = max(sizes), sum(sizes)
        await self._pace_replay(held)
        replica_stats.replay_bytes_in_flight += held
        replica_stats.replay_bytes_in_flight_max = max(
            replica_stats.replay_bytes_in_flight_max, replica_stats.replay_bytes_in_flight
        )
        try:
            first = entries[0][0]
            if first > cursor.last + 1:
                replay.lost = True
                await self.send_resumed(stream, reason="gap", epoch=cursor.epoch, seq=first - 1)
            for (seq, frame), size in zip(entries, sizes, strict=True):
                cursor.last = seq
                await self._send_stream_frame(stream, cursor, sealing.open_frame(frame))
                replay.sent += 1
                replica_stats.frames_replayed += 1
                held -= size
                replica_stats.replay_bytes_in_flight -= size
        finally:
            replica_stats.replay_bytes_in_flight -= held  # what a close left unsent

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
            await self.send_error(
                "replay_limited",
                f"This connection asked for more history than "
                f"{settings.SOCKET_REPLAY_BYTES_PER_MIN // (1024 * 1024)} MiB a minute: the "
                "rest follows at that pace. Nothing is lost.",
            )
        await asyncio.sleep(wait_secs)

    async def _send_stream_frame(self, stream: str, cursor: Cursor, frame: str) -> None:
        await self.writer.drained()  # a replay waits for a slow client, no faster
        await self.send_text(frame)
        self._note_delivered(stream, cursor)

    @staticmethod
    def _note_delivered(stream: str, cursor: Cursor) -> None:
        """For the delivery ledger: how far this socket has delivered a user stream."""
        if cursor.epoch is not None and stream.startswith("user:"):
            delivered_marks().note(stream, cursor.epoch, cursor.last)

    # --- writing ---------------------------------------------------------------------------

    async def send_text(self, text: str) -> None:
        replica_stats.frames_out += 1
        await self.writer.write(text)

    async def send_frame(self, frame: dict[str, Any], *, ref: str | None = None) -> None:
        if ref is not None:
            frame["id"] = ref
        await self.send_text(protocol.encode(frame))

    async def send_error(
        self,
        code: str,
        message: str,
        ref: str | None = None,
        *,
        stream: str | None = None,
        retry_after_ms: int | None = None,
    ) -> None:
        replica_stats.errors_sent += 1
        await self.send_text(
            protocol.error_frame(code, message, ref, stream=stream, retry_after_ms=retry_after_ms)
        )

    async def send_resumed(
        self, stream: str, *, reason: str, epoch: str | None, seq: int, replayed: int = 0
    ) -> None:
        """`resumed`, with the `recovered` its reason has (protocol.RESUMED_REASONS)."""
        recovered, _ = protocol.RESUMED_REASONS[reason]
        await self.send_frame(
            {
                "type": "resumed",
                "stream": stream,
                "recovered": recovered,
                "reason": reason,
                "epoch": epoch,
                "seq": seq,
                "replayed": replayed,
            }
        )
