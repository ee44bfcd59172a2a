"""Switchboard's channel layer and the publish path against a real redis-server.

Two layer instances stand for two replicas: each has its own Redis connections and nothing in
common in memory, so whatever crosses between them crossed Redis.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest
from channels.layers import channel_layers
from pytest_django.fixtures import Settings as SettingsWrapper
from redis.asyncio.client import PubSub

from devtools.cluster import free_port
from realtime import broker, publish
from realtime.layer import StreamChannelLayer
from tests.integration.conftest import eventually

T = TypeVar("T")


class Collector:
    """A sink that records the stream frames a layer hands it."""

    def __init__(self) -> None:
        self.frames: list[tuple[str, int, str]] = []
        self.resyncs = 0
        self.changed = asyncio.Event()

    async def on_stream_frame(self, stream: str, seq: int, epoch: str, frame: str) -> None:
        self.frames.append((stream, seq, frame))
        self.changed.set()

    async def on_resync(self, only: Any = None) -> None:
        self.resyncs += 1

    async def wait_count(self, count: int, timeout: float = 3) -> None:
        async with asyncio.timeout(timeout):
            while len(self.frames) < count:
                self.changed.clear()
                await self.changed.wait()


def hosts_of(layer: StreamChannelLayer) -> list[str]:
    """The Redis URLs of `layer`'s shards: another replica's layer is configured alike."""
    return [address.url for address in layer.broker.shards]


async def test_a_publish_reaches_a_sink_on_another_layer_and_nowhere_else(
    layer: StreamChannelLayer, redis_url: str
) -> None:
    other = StreamChannelLayer(hosts=hosts_of(layer), prefix=layer.prefix, node="other")
    alice, bob = Collector(), Collector()
    alice_channel, bob_channel = await other.new_channel(), await other.new_channel()
    other.add_sink(alice_channel, alice)
    other.add_sink(bob_channel, bob)
    await other.group_add("user.11", alice_channel)
    await other.group_add("user.12", bob_channel)
    await other.memberships_written()  # what the publish reports as `sockets`
    result = await publish.push_to_user(user_id=11, payload={"n": 1})
    await alice.wait_count(1)
    stream, seq, frame = alice.frames[0]
    assert (stream, seq, result.seq, result.replicas, result.sockets) == ("user:11", 1, 1, 1, 1)
    assert '"payload":{"n":1}' in frame and f'"epoch":"{result.epoch}"' in frame
    # Both users' groups arrive over the one subscription connection in publish order: once
    # alice has a later push, a stray copy of hers for bob would already be there.
    await publish.push_to_user(user_id=11, payload={"n": 2})
    await alice.wait_count(2)
    assert bob.frames == []
    await other.flush()


async def subscribe_calls(layer: StreamChannelLayer) -> int:
    """How many SUBSCRIBE commands the layer's Redis servers have run."""
    calls = 0
    for shard in range(layer.broker.shard_count):
        stats = await layer.broker.redis(shard).info("commandstats")
        calls += stats.get("cmdstat_subscribe", {}).get("calls", 0)
    return calls


async def test_sockets_joining_in_one_turn_share_a_subscribe_and_each_gets_only_its_own(
    layer: StreamChannelLayer,
) -> None:
    other = StreamChannelLayer(hosts=hosts_of(layer), prefix=layer.prefix, node="other")
    first = Collector()
    channel = await other.new_channel()
    other.add_sink(channel, first)
    await other.group_add("user.300", channel)  # the subscription connection is up
    before = await subscribe_calls(layer)
    sinks = {user_id: Collector() for user_id in range(301, 341)}
    channels = {user_id: await other.new_channel() for user_id in sinks}
    for user_id, sink in sinks.items():
        other.add_sink(channels[user_id], sink)
    await asyncio.gather(*(other.group_add(f"user.{u}", channels[u]) for u in sinks))
    # One SUBSCRIBE for the forty (one per shard the groups live on), not one each.
    assert await subscribe_calls(layer) - before <= layer.broker.shard_count
    for user_id in sinks:
        await publish.push_to_user(user_id=user_id, payload={"to": user_id})
    for user_id, sink in sinks.items():
        await sink.wait_count(1)
        [(stream, seq, frame)] = sink.frames
        assert (stream, seq) == (f"user:{user_id}", 1) and f'"to":{user_id}' in frame
    # Leaving and joining again in one turn: the UNSUBSCRIBE is never sent after the SUBSCRIBE.
    await other.group_discard("user.301", channels[301])
    await other.group_add("user.301", channels[301])
    await publish.push_to_user(user_id=301, payload={"to": "again"})
    await sinks[301].wait_count(2)
    assert first.frames == []
    await other.flush()


async def test_a_publish_counts_the_sockets_joined_and_none_once_they_left(
    layer: StreamChannelLayer,
) -> None:
    other = StreamChannelLayer(hosts=hosts_of(layer), prefix=layer.prefix, node="other")
    channels = [await other.new_channel() for _ in range(3)]
    await asyncio.gather(*(other.group_add("user.400", channel) for channel in channels))
    await other.memberships_written()
    first = await publish.push_to_user(user_id=400, payload=1)
    assert (first.sockets, first.replicas) == (3, 1)
    for channel in channels:
        await other.group_discard("user.400", channel)
    await other.memberships_written()
    second = await publish.push_to_user(user_id=400, payload=2)
    assert (second.sockets, second.replicas) == (0, 0)
    members = layer.broker.keys.members("user:400")
    assert await layer.broker.redis("user:400").hgetall(members) == {}  # the entry is gone
    await other.flush()


async def first_step(coroutine: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """`coroutine` as a task, once its first step has run: a callback queued behind that step
    sets an event, so this waits for the step itself, not for time (a timer could let Redis
    answer what the step asked first)."""
    task = asyncio.ensure_future(coroutine)
    stepped = asyncio.Event()
    asyncio.get_running_loop().call_soon(stepped.set)
    async with asyncio.timeout(5):
        await stepped.wait()
    return task


async def subscriptions_up(layer: StreamChannelLayer) -> None:
    """Every shard's subscription connection is up (a join waits first for its own shard's),
    so a join's first step queues its SUBSCRIBE at once."""

    async def up() -> bool:
        return all(s.subscribed_event.is_set() for s in layer._layer().subscribers)

    await eventually(up)


def unconfirmed(layer: StreamChannelLayer, group: str) -> bool:
    """Whether `group` has a member here whose SUBSCRIBE Redis has not confirmed yet."""
    loop_layer = layer._layer()
    return bool(loop_layer.hub.count(group)) and loop_layer.subscriber(group).is_pending(group)


async def subscribers(layer: StreamChannelLayer, group: str) -> int:
    """How many connections Redis has subscribed to `group`'s channel."""
    channel = layer.group_channel(group)
    stream = group.replace(".", ":", 1)
    [(_, count)] = await layer.broker.redis(stream).pubsub_numsub(channel)
    return int(count)


async def test_a_group_left_and_joined_again_before_redis_confirmed_stays_subscribed(
    layer: StreamChannelLayer,
) -> None:
    other = StreamChannelLayer(hosts=hosts_of(layer), prefix=layer.prefix, node="other")
    warm = await other.new_channel()
    await other.group_add("user.601", warm)
    await subscriptions_up(other)
    first, second = await other.new_channel(), await other.new_channel()
    sink = Collector()
    other.add_sink(second, sink)
    joining = await first_step(other.group_add("user.600", first))
    assert unconfirmed(other, "user.600"), "joined; its SUBSCRIBE not confirmed yet"
    await other.group_discard("user.600", first)  # left before the confirmation
    await other.group_add("user.600", second)  # joined again: the same SUBSCRIBE's answer
    await joining
    await publish.push_to_user(user_id=600, payload="still here")
    await sink.wait_count(1)
    assert await subscribers(layer, "user.600") == 1
    await other.flush()


async def test_a_group_everyone_left_before_redis_confirmed_is_unsubscribed_after(
    layer: StreamChannelLayer,
) -> None:
    other = StreamChannelLayer(hosts=hosts_of(layer), prefix=layer.prefix, node="other")
    warm = await other.new_channel()
    await other.group_add("user.611", warm)
    await subscriptions_up(other)
    channel = await other.new_channel()
    joining = await first_step(other.group_add("user.610", channel))
    assert unconfirmed(other, "user.610"), "joined; its SUBSCRIBE not confirmed yet"
    await other.group_discard("user.610", channel)
    await joining

    async def gone() -> bool:
        return await subscribers(layer, "user.610") == 0

    await eventually(gone, timeout=3)
    await other.flush()


async def test_plain_group_messages_cross_layers(layer: StreamChannelLayer, redis_url: str) -> None:
    other = StreamChannelLayer(hosts=hosts_of(layer), prefix=layer.prefix, node="other")
    channel = await other.new_channel()
    await other.group_add("room.lobby", channel)
    await layer.group_send("room.lobby", {"type": "rt.note", "text": "hi"})
    message = await asyncio.wait_for(other.receive(channel), 3)
    assert message == {"type": "rt.note", "text": "hi"}
    # send() to one specific channel goes through its process's inbox.
    await layer.send(channel, {"type": "rt.direct", "n": 2})
    assert await asyncio.wait_for(other.receive(channel), 3) == {"type": "rt.direct", "n": 2}
    await other.flush()


async def test_seqs_are_contiguous_per_stream_under_concurrent_publishers(
    layer: StreamChannelLayer,
) -> None:
    results = await asyncio.gather(
        *(publish.publish(stream="room:busy", payload=n) for n in range(200)),
        *(publish.broadcast(payload=n) for n in range(50)),
    )
    room_seqs = sorted(r.seq for r in results if r.stream == "room:busy")
    assert room_seqs == list(range(1, 201))
    stored = await broker.current().read("room:busy", after=0, limit=1000)
    assert [seq for seq, _ in stored] == list(range(1, 201))
    assert len({r.epoch for r in results if r.stream == "room:busy"}) == 1


async def test_an_idempotency_key_publishes_once(layer: StreamChannelLayer) -> None:
    key = publish.idempotency_key("tests", uuid.uuid4().hex)
    first = await publish.publish(stream="room:once", payload=1, idempotency=key)
    again = await publish.publish(stream="room:once", payload=1, idempotency=key)
    assert (first.seq, first.duplicate) == (1, False)
    assert (again.seq, again.duplicate) == (1, True)
    assert again.id == first.id  # the retry learns the id of the message it already sent
    assert len(await broker.current().read("room:once", after=0)) == 1


async def test_history_is_trimmed_to_its_length(
    layer: StreamChannelLayer, settings: SettingsWrapper
) -> None:
    settings.HISTORY_MAXLEN = 10
    for n in range(300):
        await publish.publish(stream="room:trim", payload=n)
    stored = await broker.current().read("room:trim", after=0, limit=1000)
    # Redis trims whole radix-tree nodes (MAXLEN ~), so a few more than 10 may stay.
    assert 10 <= len(stored) < 300
    assert stored[-1][0] == 300


def _redis_ms(time_reply: tuple[int, int]) -> int:
    seconds, micros = time_reply
    return seconds * 1000 + micros // 1000


async def test_history_is_trimmed_by_age(
    layer: StreamChannelLayer, settings: SettingsWrapper
) -> None:
    settings.HISTORY_MAX_AGE_SECS = 0.05
    for n in range(15):
        await publish.publish(stream="room:aged", payload=n)
    # Wait until Redis' own clock (the one the script trims by) is past the entries' max age.
    log_key = broker.current().keys.stream_log("room:aged")
    [(_, newest)] = await layer.redis("room:aged").xrevrange(log_key, count=1)
    newest_ms = int(newest[b"t"])
    async with asyncio.timeout(5):
        # Polls Redis' clock: there is no event to wait on.
        while _redis_ms(await layer.redis("room:aged").time()) <= newest_ms + 50:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    await publish.publish(stream="room:aged", payload=15)  # seq 16: the script trims by age
    stored = await broker.current().read("room:aged", after=0)
    assert [seq for seq, _ in stored] == [16]
    # The stream's position survives its log: a resume can still tell "older than history".
    assert (await broker.current().heads(["room:aged"]))["room:aged"].seq == 16


async def test_history_younger_than_its_max_age_is_kept_through_the_age_trim(
    layer: StreamChannelLayer, settings: SettingsWrapper
) -> None:
    # The script trims by age on every 16th publish after reading the oldest entry alone: a
    # young log must come through that look whole.
    settings.HISTORY_MAX_AGE_SECS = 600
    for n in range(32):
        await publish.publish(stream="room:young", payload=n)
    stored = await broker.current().read("room:young", after=0)
    assert [seq for seq, _ in stored] == list(range(1, 33))


async def test_publish_with_redis_unreachable_raises_a_clear_error_without_its_address(
    settings: SettingsWrapper,
) -> None:
    dead = f"redis://:hunter2-password@127.0.0.1:{free_port()}/0"
    settings.CHANNEL_LAYERS = {
        "default": {"BACKEND": "realtime.layer.StreamChannelLayer", "CONFIG": {"hosts": [dead]}}
    }
    settings.REDIS_URL = dead
    channel_layers.backends.clear()
    with pytest.raises(publish.RealtimeUnavailable, match="unavailable") as raised:
        await publish.broadcast(payload=1)
    # What callers show users (the API, the lab, admin messages): no URL, no password.
    assert "hunter2" not in str(raised.value) and "127.0.0.1" not in str(raised.value)
    channel_layers.backends.clear()


async def test_a_layer_closing_ends_a_reader_whose_subscribe_swallowed_the_cancel(
    layer: StreamChannelLayer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Seen with three shards: redis-py's subscribe(), connecting when the layer closed, took
    # the cancel and returned; the reader went on to listen for good, and the event loop's
    # shutdown waited on it for ever. Here each subscribe waits to be let go, swallowing the
    # cancel meanwhile, and is let go only once every reader's cancel was swallowed.
    subscribe = PubSub.subscribe
    entered: list[PubSub] = []
    swallowed: list[PubSub] = []
    all_entered, all_swallowed, let_go = asyncio.Event(), asyncio.Event(), asyncio.Event()
    shards = layer.broker.shard_count

    async def swallowing(self: PubSub, *args: Any, **kwargs: Any) -> Any:
        entered.append(self)
        if len(entered) == shards:
            all_entered.set()
        try:
            await let_go.wait()
        except asyncio.CancelledError:
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            swallowed.append(self)
            if len(swallowed) == shards:
                all_swallowed.set()
            await let_go.wait()
        return await subscribe(self, *args, **kwargs)

    monkeypatch.setattr(PubSub, "subscribe", swallowing)
    other = StreamChannelLayer(hosts=hosts_of(layer), prefix=layer.prefix, node="other")
    await other.new_channel()  # starts a reader per shard, each now in its subscribe
    readers = [s.reader for s in other._layer().subscribers]
    async with asyncio.timeout(5):
        await all_entered.wait()
    closing = asyncio.ensure_future(other.flush())
    async with asyncio.timeout(5):
        await all_swallowed.wait()
    let_go.set()
    async with asyncio.timeout(8):
        await closing
    assert readers and all(reader is not None and reader.done() for reader in readers)


async def test_a_reader_cancelled_through_a_subscribe_that_lost_the_cancel_still_ends(
    layer: StreamChannelLayer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The sharded tier's hang: a test's event loop, shutting down, cancelled a layer's readers;
    # one was in redis-py's subscribe(), whose write goes through asyncio.wait_for, and Python
    # 3.11's wait_for can lose a cancel that comes as the write finishes (CPython gh-86296:
    # the task stays "cancelling", the error never raised). The reader went on to read for
    # good, and the loop's shutdown waited on it forever. Here subscribe() loses it so.
    subscribe = PubSub.subscribe
    entered, lost, let_go = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def losing(self: PubSub, *args: Any, **kwargs: Any) -> Any:
        entered.set()
        try:
            await let_go.wait()
        except asyncio.CancelledError:
            lost.set()  # not re-raised, not uncancelled: as wait_for loses it
            await let_go.wait()
        return await subscribe(self, *args, **kwargs)

    monkeypatch.setattr(PubSub, "subscribe", losing)
    other = StreamChannelLayer(hosts=hosts_of(layer), prefix=layer.prefix, node="other")
    await other.new_channel()  # starts the readers, the first now in its subscribe
    async with asyncio.timeout(5):
        await entered.wait()
    reader = next(s.reader for s in other._layer().subscribers if s.reader is not None)
    reader.cancel()  # what the loop's shutdown does, the layer not closed first
    async with asyncio.timeout(5):
        await lost.wait()
    let_go.set()
    done, _ = await asyncio.wait([reader], timeout=5)
    assert reader in done and reader.cancelled()
    monkeypatch.undo()
    await other.flush()
