"""Switchboard's channel layer: Channels' layer API over Redis pub/sub, built for fan-out.

Like channels_redis' RedisPubSubChannelLayer it publishes once per group and each process
subscribes once per group it has members in. It differs where reliable delivery needs it:

* One Redis connection per process (per shard, with several) carries every subscription: the
  process's own channel (for `send()` to a specific consumer) and its groups. Consumers do not
  cost a SUBSCRIBE each. With shards, a group is subscribed on its stream's shard, where the
  broker publishes it, and the process channel on the shard its id hashes to.
* `group_add()` returns only once Redis has confirmed the SUBSCRIBE, so a consumer that reads a
  stream's head right after it cannot miss a message published in between.
* Stream frames (published by the broker's Lua script, already JSON-encoded) go to the local
  hub (realtime/hub.py), which hands them to each socket's session (its *sink*) directly:
  decoded once per process, never per recipient, with no per-message task or queue hop through
  Channels' dispatch loop. Consumers without a sink get them as ordinary `rt.deliver` messages.
* When a subscription connection drops (Redis restarted, or dropped us for a full output
  buffer), it reconnects with backoff, resubscribes everything, and tells every sink to resync
  the streams of that shard: what was published meanwhile is then fetched from stream history.
  The other shards' subscriptions carry on meanwhile.
* A heartbeat writes how many local sockets each group has, so a publish can report how many
  sockets it reached, and so that a Redis restart forgets nothing for longer than one interval.

Redis itself is the broker's (realtime/broker/): this layer takes its connections, key names
and frame format from there. Wire format on a group's Redis channel: msgpack for ordinary
messages; stream frames as realtime/broker/frames.py describes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import Awaitable
from typing import Any

import msgpack
import redis.asyncio as aioredis
from channels.layers import BaseChannelLayer
from django.conf import settings

from realtime.broker import REDIS_FAILURES, BrokerUnavailable, RedisBroker
from realtime.broker.connections import shard_addresses
from realtime.broker.keys import stream_of_group
from realtime.broker.replies import read_replies
from realtime.hub import Hub, StreamSink

logger = logging.getLogger(__name__)


class StreamChannelLayer(BaseChannelLayer):
    extensions = ["groups", "flush", "sinks"]

    def __init__(
        self,
        hosts: list[str] | None = None,
        prefix: str = "sb",
        capacity: int = 1000,
        expiry: int = 60,
        node: str | None = None,
        heartbeat_secs: float = 10.0,
        sentinels: list[str] | None = None,
        sentinel_master: str | list[str] = "",
        **kwargs: Any,
    ) -> None:
        super().__init__(expiry=expiry, capacity=capacity)
        # A shard per Redis in `hosts`, or with `sentinels` per group named in
        # `sentinel_master` (the first host then gives the database number and credentials),
        # as channels_redis shards over its hosts.
        self.prefix = prefix
        addresses = shard_addresses(
            hosts or ["redis://127.0.0.1:6379/0"], sentinels or [], sentinel_master
        )
        self.node = node or settings.REPLICA_ID
        # Redis client names may not hold spaces; a REPLICA_ID is a host name and pid anyway.
        name = "switchboard:" + "".join(c if c.isalnum() or c in "-_.:" else "_" for c in self.node)
        self.broker = RedisBroker(
            addresses,
            prefix=prefix,
            client_name=name,
            timeout=float(settings.REDIS_TIMEOUT_SECS),
        )
        self.heartbeat_secs = heartbeat_secs
        self._loops: dict[asyncio.AbstractEventLoop, _LoopLayer] = {}

    def _layer(self) -> _LoopLayer:
        loop = asyncio.get_running_loop()
        layer = self._loops.get(loop)
        if layer is None:
            layer = self._loops[loop] = _LoopLayer(self)
        return layer

    # --- names ---------------------------------------------------------------------------------

    def group_channel(self, group: str) -> str:
        """The Redis pub/sub channel that carries `group`."""
        return self.broker.keys.group_channel(group)

    # --- Channels' layer API -------------------------------------------------------------------

    async def new_channel(self, prefix: str = "specific.") -> str:
        return await self._layer().new_channel(prefix)

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        await self._layer().send(channel, message)

    async def receive(self, channel: str) -> dict[str, Any]:
        return await self._layer().receive(channel)

    async def group_add(self, group: str, channel: str) -> None:
        """Join `group`; returns once Redis confirmed the subscription (or BrokerUnavailable)."""
        self.require_valid_group_name(group)
        try:
            await self._layer().group_add(group, channel)
        except REDIS_FAILURES as exc:
            raise BrokerUnavailable(f"subscribing to {group}: {exc!r}") from exc

    async def group_discard(self, group: str, channel: str) -> None:
        await self._layer().group_discard(group, channel)

    async def memberships_written(self) -> None:
        """Return once this loop's changed socket counts (what a publish reports as `sockets`)
        are written to Redis: they go out in the background, soon after a join or a leave."""
        await self._layer().memberships_written()

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        self.require_valid_group_name(group)
        try:
            await self._layer().group_send(group, message)
        except REDIS_FAILURES as exc:
            raise BrokerUnavailable(f"sending to {group}: {exc!r}") from exc

    async def flush(self) -> None:
        """End this loop's subscriptions and close its Redis connections (the broker's too)."""
        layer = self._loops.pop(asyncio.get_running_loop(), None)
        if layer is not None:
            await layer.close()
        await self.broker.close()
        self.broker.close_sync()

    # --- the sink extension --------------------------------------------------------------------

    def add_sink(self, channel: str, sink: StreamSink) -> None:
        self._layer().hub.attach(channel, sink)

    def remove_sink(self, channel: str) -> None:
        self._layer().hub.detach(channel)

    def discard_channel(self, channel: str) -> None:
        """Forget a channel that will never receive() again: its inbox, sink and groups. What
        receive() being cancelled does for consumers that read their inbox."""
        self._layer().forget(channel)

    def local_sinks(self) -> list[StreamSink]:
        """The sessions of this process's sockets (this loop's): draining and /metrics go
        through them."""
        return list(self._layer().hub.sinks.values())

    def local_sink(self, channel: str) -> StreamSink | None:
        """The session behind `channel` if its socket lives in this process (and loop), else
        None. A socket exists in one process's memory only: another replica cannot reach it
        except through a group or its channel, via Redis."""
        return self._layer().hub.sink(channel)

    def start(self) -> None:
        """Open this loop's subscription connections now rather than with the first socket
        (readiness asks for them: realtime/readiness.py)."""
        self._layer()._ensure_started()

    def redis(self, on: str | int = 0) -> aioredis.Redis:
        """This loop's Redis client for the shard of `on` (the broker's)."""
        return self.broker.redis(on)

    @property
    def connected(self) -> bool:
        """Every shard's subscription connection is up."""
        return all(self.shards_connected())

    def shards_connected(self) -> list[bool]:
        """Whether each shard's subscription connection is up, by shard."""
        return [s.subscribed_event.is_set() for s in self._layer().subscribers]


class _LoopLayer:
    """The layer's state for one event loop: connections, local channels, groups, sinks."""

    def __init__(self, owner: StreamChannelLayer) -> None:
        self.owner = owner
        self.broker = owner.broker
        self.keys = owner.broker.keys
        self.process_id = uuid.uuid4().hex[:12]
        self.process_channel = self.keys.process_channel(self.process_id)
        self.hub = Hub(capacity=owner.capacity)
        self.subscribers = [
            _ShardSubscriber(self, shard) for shard in range(owner.broker.shard_count)
        ]
        self._heartbeat: asyncio.Task[None] | None = None
        self._membership_dirty: set[str] = set()
        self._membership_writer: asyncio.Task[None] | None = None

    def subscriber(self, group: str) -> _ShardSubscriber:
        """The subscription connection of `group`'s shard (its stream's: keys.stream_of_group)."""
        if len(self.subscribers) == 1:
            return self.subscribers[0]
        return self.subscribers[self.broker.shard_of(stream_of_group(group))]

    # --- channels ------------------------------------------------------------------------------

    async def new_channel(self, prefix: str) -> str:
        self._ensure_started()
        # uuid4's 128 random bits as 32 hex digits, without building a UUID (a connect makes one).
        name = f"{self.owner.prefix}.{prefix}{self.process_id}!{os.urandom(16).hex()}"
        self.hub.open_inbox(name)
        return name

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        if self.hub.is_local(channel):
            self.hub.put(channel, message)
            return
        # Channel names end in "<process id: 12 hex>!<uuid>"; the process id names its inbox.
        process_id = channel.partition("!")[0][-12:]
        if "!" not in channel or len(process_id) != 12:
            raise ValueError(f"{channel!r} is not a channel made by this layer")
        payload = msgpack.packb({"__to": channel, **message}, use_bin_type=True)
        await self.broker.redis(process_id).publish(self.keys.process_channel(process_id), payload)

    async def receive(self, channel: str) -> dict[str, Any]:
        try:
            return await self.hub.receive(channel)
        except asyncio.CancelledError:
            # Channels cancels receive() when the consumer ends: forget the channel entirely.
            self.forget(channel)
            raise

    def forget(self, channel: str) -> None:
        for group in self.hub.forget(channel):
            self._spawn(self.subscriber(group).unsubscribe(group))
            self._membership_changed(group)

    # --- groups --------------------------------------------------------------------------------

    async def group_add(self, group: str, channel: str) -> None:
        self._ensure_started()
        first = self.hub.join(group, channel)
        subscriber = self.subscriber(group)
        if first or subscriber.is_pending(group):
            try:
                await subscriber.subscribe(group)
            except BaseException:
                await self.group_discard(group, channel)
                raise
        self._membership_changed(group)

    async def group_discard(self, group: str, channel: str) -> None:
        emptied = self.hub.leave(group, channel)
        if emptied is None:
            return
        if emptied:
            await self.subscriber(group).unsubscribe(group)
        self._membership_changed(group)

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        await self.broker.redis(stream_of_group(group)).publish(
            self.owner.group_channel(group), msgpack.packb(message, use_bin_type=True)
        )

    # --- the subscription connections ----------------------------------------------------------

    def _ensure_started(self) -> None:
        for subscriber in self.subscribers:
            subscriber.ensure_started()
        if self._heartbeat is None or self._heartbeat.done():
            self._heartbeat = asyncio.get_running_loop().create_task(self._heartbeat_forever())

    async def on_message(self, redis_channel: bytes, data: bytes) -> None:
        name = redis_channel.decode()
        if name == self.process_channel:
            self.hub.deliver_to_channel(data)
        else:
            await self.hub.deliver(self.keys.group_of_channel(name), data)

    async def resync(self, shard: int) -> None:
        """A shard's subscription came back: its streams' sinks catch up from history."""
        if len(self.subscribers) == 1:
            await self.hub.resync()
        else:
            await self.hub.resync(lambda stream: self.broker.shard_of(stream) == shard)

    # --- membership counts -----------------------------------------------------------------

    def _membership_changed(self, group: str) -> None:
        """Record `group`'s local socket count in Redis, soon. Writes are batched: while one
        pipeline is in flight the changes collect and go out together in the next, so a storm of
        connects costs a few round trips rather than one per socket and group."""
        self._membership_dirty.add(group)
        if self._membership_writer is None:
            loop = asyncio.get_running_loop()
            self._membership_writer = loop.create_task(self._write_changed_memberships())

    async def memberships_written(self) -> None:
        """Return once the counts changed so far are written (or failed to be): they go out in
        the background, and a publish made meanwhile may report the count before the change."""
        writer = self._membership_writer
        if writer is not None:
            await asyncio.shield(writer)

    async def _write_changed_memberships(self) -> None:
        try:
            while self._membership_dirty:
                changed = list(self._membership_dirty)
                self._membership_dirty.clear()
                with contextlib.suppress(BrokerUnavailable):
                    await self._write_membership(changed)
        finally:
            self._membership_writer = None

    async def _write_membership(self, groups: list[str]) -> None:
        """Each group's local count, valid for three heartbeats: a dead process's expire."""
        counts = {stream_of_group(group): self.hub.count(group) for group in groups}
        await self.broker.write_memberships(
            self.owner.node, counts, valid_secs=3 * self.owner.heartbeat_secs
        )

    async def _heartbeat_forever(self) -> None:
        while True:
            await asyncio.sleep(self.owner.heartbeat_secs)
            try:
                await self._write_membership(list(self.hub.groups))
            except BrokerUnavailable as exc:
                logger.debug("membership heartbeat failed: %r", exc)

    def _spawn(self, coroutine: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coroutine)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def close(self) -> None:
        for subscriber in self.subscribers:
            subscriber.closing = True
        tasks = [s.reader for s in self.subscribers if s.reader is not None]
        tasks += [t for t in (self._heartbeat, self._membership_writer) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            # Bounded: a reader cancelled while its consumer still runs can linger in redis-py;
            # closing must never hang a shutdown.
            await asyncio.wait(tasks, timeout=2)
        # A reader that outlived its cancel (redis-py swallowed it, seen with three shards)
        # stayed blocked on its connection for good, and the event loop's own shutdown then
        # waited on it forever. Its connection is dropped: the read fails, and a closing reader
        # returns instead of reconnecting.
        lingering = [s.reader for s in self.subscribers if s.reader and not s.reader.done()]
        for subscriber in self.subscribers:
            if subscriber.reader in lingering:
                await subscriber.drop_connection()
        if lingering:
            await asyncio.wait(lingering, timeout=2)
        await self.broker.close()


def _cancel_swallowed() -> bool:
    """Whether this task was asked to stop and is running on regardless. redis-py writes a
    command through `asyncio.wait_for`, which in Python 3.11 can lose a cancel that comes as the
    write finishes (CPython gh-86296, fixed in 3.12): seen as the sharded tier's hang, a test's
    loop waiting at shutdown for a reader that had subscribed through its cancel."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class _ShardSubscriber:
    """One shard's subscription connection in one event loop: the groups of this process whose
    streams live on the shard, and the process channel."""

    def __init__(self, layer: _LoopLayer, shard: int) -> None:
        self.layer = layer
        self.shard = shard
        self.subscribed_event = asyncio.Event()
        self.reader: asyncio.Task[None] | None = None
        self._pubsub: Any = None
        self._pending: dict[str, asyncio.Future[None]] = {}
        # SUBSCRIBEs and UNSUBSCRIBEs asked for and not sent yet: those of one turn of the loop
        # go out together, in the order asked (_send_queued).
        self._queued: list[tuple[str, str]] = []
        self._sender: asyncio.Task[None] | None = None  # (held: the loop keeps tasks weakly)
        self._confirmed_initial: set[str] = set()
        self.closing = False  # the layer is closing: a lost connection ends the reader

    async def drop_connection(self) -> None:
        """Close the subscription connection under the reader, whatever it is waiting on."""
        connection = getattr(self._pubsub, "connection", None)
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.disconnect(nowait=True)

    def is_pending(self, group: str) -> bool:
        return self.layer.owner.group_channel(group) in self._pending

    def ensure_started(self) -> None:
        if self.reader is None or self.reader.done():
            self.reader = asyncio.get_running_loop().create_task(self._read_forever())

    def _channels(self) -> list[str]:
        """Everything this connection carries: its groups, and the process channel. That is
        published on the home shard only, but every shard's connection subscribes to it: a
        connection always has a subscription, whose confirmation shows that the shard is up
        before any group lives there."""
        layer = self.layer
        channels = [layer.process_channel]
        channels += [
            layer.owner.group_channel(g) for g in layer.hub.groups if layer.subscriber(g) is self
        ]
        return channels

    async def subscribe(self, group: str) -> None:
        """SUBSCRIBE and wait for Redis to confirm it (see the module docstring for why)."""
        channel = self.layer.owner.group_channel(group)
        if not self.subscribed_event.is_set():  # (checked first: wait_for makes a task)
            try:
                # Short: if the subscription connection is not up by then, Redis is down, and
                # the caller should say so now rather than keep a client waiting.
                await asyncio.wait_for(self.subscribed_event.wait(), timeout=2)
            except TimeoutError:
                raise ConnectionError(
                    f"the layer has no subscription connection to "
                    f"{self.layer.broker.describe(self.shard)}"
                ) from None
        future = self._pending.get(channel)
        if future is None:
            future = self._pending[channel] = asyncio.get_running_loop().create_future()
            self._queue("SUBSCRIBE", channel)
        async with asyncio.timeout(5):  # not wait_for: no task made per connect
            await asyncio.shield(future)

    async def unsubscribe(self, group: str) -> None:
        if self.layer.hub.count(group) or self._pubsub is None:
            return
        if not self.subscribed_event.is_set():
            return
        channel = self.layer.owner.group_channel(group)
        if channel in self._pending:
            # Its SUBSCRIBE is not confirmed yet: the confirmation unsubscribes it if nobody
            # joined meanwhile (_on_subscribed). An UNSUBSCRIBE now would be undone by that
            # SUBSCRIBE's answer, which the next join would take as its own.
            return
        self._queue("UNSUBSCRIBE", channel)

    def _queue(self, command: str, channel: str) -> None:
        """Send `command` for `channel` with the others asked for in this turn of the loop. A
        connect storm's sockets each subscribe to their own user's stream, and one redis-py
        call each cost a connect ~2% of its CPU; queued, a turn's subscriptions are one
        command. One queue for both kinds keeps their order: an UNSUBSCRIBE asked for after a
        SUBSCRIBE is never sent before it."""
        self._queued.append((command, channel))
        # One sender at a time, which takes whatever was queued while it sent: two could
        # interleave their commands out of order.
        if self._sender is None or self._sender.done():
            self._sender = asyncio.get_running_loop().create_task(self._send_queued())

    async def _send_queued(self) -> None:
        while self._queued:
            queued, self._queued = self._queued, []
            runs: list[tuple[str, list[str]]] = []
            for command, channel in queued:
                if runs and runs[-1][0] == command:
                    runs[-1][1].append(channel)
                else:
                    runs.append((command, [channel]))
            for index, (command, channels) in enumerate(runs):
                pubsub = self._pubsub
                try:
                    if pubsub is None:
                        raise ConnectionError("the subscription connection is down")
                    if command == "SUBSCRIBE":
                        await pubsub.subscribe(*channels)
                    else:
                        await pubsub.unsubscribe(*channels)
                except REDIS_FAILURES as exc:
                    # The reader reconnects and subscribes to every group still held; what
                    # waits on a SUBSCRIBE not sent is told now (group_add() raises
                    # BrokerUnavailable).
                    self._fail_pending(exc, [c for _, failed in runs[index:] for c in failed])
                    break

    async def _read_forever(self) -> None:
        backoff = 0.05
        resync = False
        while not self.closing:
            pubsub = self.layer.broker.redis(self.shard).pubsub()
            try:
                channels = self._channels()
                await pubsub.subscribe(*channels)
                # redis-py's subscribe() can swallow a cancel (below): a closing layer's, or the
                # event loop's at its shutdown. The reader then went on to read for good, and
                # whoever cancelled it waited for it forever.
                if self.closing:
                    return
                self._pubsub = pubsub
                self._confirmed_initial = set(channels)
                while True:
                    if _cancel_swallowed():
                        raise asyncio.CancelledError
                    replies = await read_replies(pubsub.connection, pubsub=True)
                    if self.closing:
                        return
                    for reply in replies:
                        if isinstance(reply, Exception):
                            raise reply  # an error reply: this connection is reconnected
                        kind = reply[0]
                        if kind == b"message":
                            await self.layer.on_message(reply[1], reply[2])
                            continue
                        # (Un)subscribe confirmations through redis-py, which keeps its record
                        # of the connection's channels by them.
                        await pubsub.handle_message(reply)
                        if kind == b"subscribe":
                            self._on_subscribed(reply[1].decode())
                            if not self.subscribed_event.is_set() and not self._confirmed_initial:
                                await self._up(resync)
                                backoff, resync = 0.05, False
            except REDIS_FAILURES as exc:
                if self.closing:
                    return
                if self.subscribed_event.is_set():
                    logger.warning(
                        "layer lost its subscription to %s (%r); reconnecting",
                        self.layer.broker.describe(self.shard),
                        exc,
                    )
                self.subscribed_event.clear()
                self._fail_pending(exc)
                resync = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                self._pubsub = None
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def _up(self, resync: bool) -> None:
        self.subscribed_event.set()
        if resync:
            await self.layer.resync(self.shard)

    def _on_subscribed(self, channel: str) -> None:
        self._confirmed_initial.discard(channel)
        future = self._pending.pop(channel, None)
        if future is not None and not future.done():
            future.set_result(None)
        layer = self.layer
        if channel != layer.process_channel and not layer.hub.count(
            layer.keys.group_of_channel(channel)
        ):
            # Everyone left before Redis confirmed it (or while the connection came back).
            self._queue("UNSUBSCRIBE", channel)

    def _fail_pending(self, exc: BaseException, channels: list[str] | None = None) -> None:
        """Those waiting on `channels`' SUBSCRIBEs (all of them by default) fail with `exc`."""
        for channel in list(self._pending) if channels is None else channels:
            future = self._pending.pop(channel, None)
            if future is not None and not future.done():
                future.set_exception(ConnectionError(f"Redis subscription lost: {exc!r}"))
                future.exception()  # consumed here, so an unawaited one is not reported
