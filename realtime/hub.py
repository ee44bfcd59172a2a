"""The local hub: which sockets of this process read which group, and the fan-out to them.

One per process and event loop (the channel layer keeps it, realtime/layer.py). A message from
Redis reaches a process once, however many of its sockets read the group; the hub decodes a
stream frame's header once and hands the same frame text to each local session: the common
case is written at once (`send_now`), the rest queued by the session. Consumers without a sink
(plain Channels code) get an inbox queue per channel, as with any Channels layer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import msgpack
from channels.exceptions import ChannelFull

from realtime import metrics, sealing
from realtime.broker import frames
from realtime.delivery.tallies import tallied, tallies

logger = logging.getLogger(__name__)


class StreamSink(Protocol):
    """What a socket's session (realtime/delivery/session.py) implements to receive stream
    frames directly from the hub."""

    def on_stream_frame(self, stream: str, seq: int, epoch: str, frame: str) -> Awaitable[None]: ...

    def on_resync(self, only: Callable[[str], bool] | None = None) -> Awaitable[None]: ...


# A sink may also have `send_now(stream, seq, epoch, frame) -> bool`: a synchronous write of the
# common case (the next seq, nothing queued). When it returns True the hub skips
# on_stream_frame, so a fan-out to N local sockets costs no coroutine per socket.
#
# And a sink may have `on_layer_message(message) -> None`: it then takes every other message for
# its channel (group_send, send) directly, and its channel has no inbox queue: a session that
# never calls receive() costs no queue and no waiting task per socket.


class Hub:
    def __init__(self, *, capacity: int) -> None:
        self.capacity = capacity
        self.queues: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        self.groups: dict[str, set[str]] = {}  # group -> local channel names
        self.sinks: dict[str, StreamSink] = {}

    # --- channels ----------------------------------------------------------------------------

    def open_inbox(self, channel: str) -> None:
        self.queues[channel] = asyncio.Queue()

    def is_local(self, channel: str) -> bool:
        return channel in self.queues or channel in self.sinks

    def attach(self, channel: str, sink: StreamSink) -> None:
        self.sinks[channel] = sink
        if hasattr(sink, "on_layer_message"):
            self.queues.pop(channel, None)  # everything goes to the sink from now on

    def detach(self, channel: str) -> None:
        self.sinks.pop(channel, None)

    def sink(self, channel: str) -> StreamSink | None:
        return self.sinks.get(channel)

    async def receive(self, channel: str) -> dict[str, Any]:
        queue = self.queues.get(channel)
        if queue is None:
            queue = self.queues[channel] = asyncio.Queue()
        return await queue.get()

    def forget(self, channel: str) -> list[str]:
        """Drop a channel with its inbox, sink and memberships; the groups it left empty."""
        self.queues.pop(channel, None)
        self.sinks.pop(channel, None)
        emptied = []
        for group in [g for g, members in self.groups.items() if channel in members]:
            self.groups[group].discard(channel)
            if not self.groups[group]:
                del self.groups[group]
                emptied.append(group)
        return emptied

    def put(self, channel: str, message: dict[str, Any]) -> None:
        """A message for one channel: to its sink, else its inbox (ChannelFull past capacity)."""
        sink = self.sinks.get(channel)
        on_layer_message = getattr(sink, "on_layer_message", None)
        if on_layer_message is not None:
            on_layer_message(message)
            return
        queue = self.queues.get(channel)
        if queue is None:
            return
        if queue.qsize() >= self.capacity:
            raise ChannelFull(channel)
        queue.put_nowait(message)

    # --- groups ------------------------------------------------------------------------------

    def join(self, group: str, channel: str) -> bool:
        """Add a member; True when it is the group's first here (subscribe to it)."""
        members = self.groups.setdefault(group, set())
        first = not members
        members.add(channel)
        return first

    def leave(self, group: str, channel: str) -> bool | None:
        """Remove a member; True when the group is now empty here (unsubscribe), None when the
        channel was not a member."""
        members = self.groups.get(group)
        if not members or channel not in members:
            return None
        members.discard(channel)
        if members:
            return False
        del self.groups[group]
        return True

    def count(self, group: str) -> int:
        return len(self.groups.get(group, ()))

    # --- delivery ----------------------------------------------------------------------------

    async def deliver(self, group: str, data: bytes) -> None:
        """One message from a group's Redis channel to each local member, decoded once."""
        members = self.groups.get(group)
        if not members:
            return
        if frames.is_frame_message(data):
            stream, seq, epoch, frame = frames.decode_message(data)
            frame = sealing.open_frame(frame)  # once here, not per socket
            for channel in list(members):
                sink = self.sinks.get(channel)
                try:
                    if sink is not None:
                        send_now = getattr(sink, "send_now", None)
                        if send_now is None or not send_now(stream, seq, epoch, frame):
                            await sink.on_stream_frame(stream, seq, epoch, frame)
                    else:
                        self.put(channel, {"type": "rt.deliver", "stream": stream, "seq": seq,
                                           "epoch": epoch, "frame": frame})  # fmt: skip
                except ChannelFull:
                    pass  # at-most-once for plain consumers, as in channels_redis
                except Exception:
                    # One broken socket must not stop delivery to the others.
                    logger.exception("delivery to %s failed", channel)
            metrics.fanned_out(stream, len(members), frame)
            if tallied(stream):
                tallies().delivered(stream, epoch, seq, len(members))
            return
        message = msgpack.unpackb(data, raw=False)
        for channel in list(members):
            with contextlib.suppress(ChannelFull):
                self.put(channel, dict(message))

    def deliver_to_channel(self, data: bytes) -> None:
        """A message sent to one channel of this process (its process channel in Redis)."""
        message = msgpack.unpackb(data, raw=False)
        with contextlib.suppress(ChannelFull):
            self.put(message.pop("__to"), message)

    async def resync(self, only: Callable[[str], bool] | None = None) -> None:
        """Redis (or one shard of it) came back: anything may have been published meanwhile;
        every sink catches up on its streams, or on those `only` accepts (the shard's)."""
        logger.info("hub: resyncing %d sink(s) in %d group(s)", len(self.sinks), len(self.groups))
        for sink in list(self.sinks.values()):
            try:
                await sink.on_resync(only)
            except Exception:
                logger.exception("a sink failed to resync")
