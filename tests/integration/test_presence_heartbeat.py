"""Presence's per-process heartbeat against a real Redis: one task and one pipeline per beat for
all the sockets of a process, a connect storm written in one pipeline, a dead socket's leave
announced once, entries rebuilt after Redis lost them."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from pytest_django.fixtures import Settings

from chat.models import Room
from realtime import broker, presence
from realtime.broker import BrokerUnavailable, scripts
from realtime.layer import StreamChannelLayer
from realtime.presence import ConnectionPresence
from tests.integration.conftest import eventually
from tests.integration.test_presence import dead_entry_in, in_room, next_presence

pytestmark = pytest.mark.django_db(transaction=True)

Calls = list[list[tuple[Any, ...]]]


async def flushed() -> None:
    """Wait (5 s at most) for the pending first write of newly started sockets to finish."""
    [flush] = [task for task in presence_tasks() if task.get_name() == "presence-flush"]
    await asyncio.wait_for(asyncio.wait([flush]), timeout=5)


def presence_tasks() -> list[asyncio.Task[Any]]:
    """The tasks presence runs in this loop, by where their coroutine is defined."""
    found = []
    for task in asyncio.all_tasks():
        code = getattr(task.get_coro(), "cr_code", None)
        if code is not None and code.co_filename.endswith("realtime/presence.py"):
            found.append(task)
    return found


def heartbeat_names() -> list[str]:
    return sorted(task.get_name() for task in presence_tasks())


@pytest.fixture
async def beat_by_hand(settings: Settings, layer: StreamChannelLayer) -> AsyncIterator[None]:
    """A heartbeat that does not beat by itself during the test (tests call beat()); stopped
    afterwards, before the layer closes its Redis pool."""
    settings.PRESENCE_HEARTBEAT_SECS = 60
    yield
    tasks = presence_tasks()
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=5)


@pytest.fixture
async def round_trips(layer: StreamChannelLayer, monkeypatch: pytest.MonkeyPatch) -> Calls:
    """Every round trip this process makes on the layer's command pool, as the list of its
    commands (one for a plain command, all of them for a pipeline)."""
    if layer.broker.shard_count > 1:
        pytest.skip("counts round trips to one Redis (with shards there is one per shard)")
    calls: Calls = []
    pool = layer.redis().connection_pool
    execute_pipeline = aioredis.client.Pipeline.execute
    execute_command = aioredis.Redis.execute_command

    async def pipeline_execute(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self.connection_pool is pool:
            calls.append([command for command, _ in self.command_stack])
        return await execute_pipeline(self, *args, **kwargs)

    async def command_execute(self: Any, *args: Any, **options: Any) -> Any:
        if self.connection_pool is pool:
            calls.append([args])
        return await execute_command(self, *args, **options)

    monkeypatch.setattr(aioredis.client.Pipeline, "execute", pipeline_execute)
    monkeypatch.setattr(aioredis.Redis, "execute_command", command_execute)
    return calls


def commands(call: list[tuple[Any, ...]], name: str) -> list[tuple[Any, ...]]:
    return [args for args in call if str(args[0]).upper() == name]


def script_calls(call: list[tuple[Any, ...]], script: scripts.Script) -> list[tuple[Any, ...]]:
    return [args for args in commands(call, "EVALSHA") if args[1] == script.sha]


def swept_keys(call: list[tuple[Any, ...]]) -> list[str]:
    return [args[3] for args in commands(call, "EVALSHA") if args[1] == scripts.PRESENCE_SWEEP.sha]


def writes(calls: Calls) -> Calls:
    """The round trips that wrote presence entries."""
    return [call for call in calls if commands(call, "EVALSHA") or commands(call, "ZADD")]


async def scores(key: str) -> dict[bytes, float]:
    stream = key.partition("{")[2].partition("}")[0]  # the key's hash tag: its shard's stream
    return dict(await broker.current().redis(stream).zrange(key, 0, -1, withscores=True))


async def start_many(count: int, *, rooms: list[str], users: int) -> list[ConnectionPresence]:
    """`count` sockets of `users` users spread over `rooms`, started one after another the way
    consumers connect. start() never yields to the loop, so all are registered before any write."""
    conns = []
    for n in range(count):
        conn = ConnectionPresence(user_id=1000 + n % users, username=f"user{n % users}")
        await conn.start(["broadcast", f"user:{conn.user_id}", f"room:{rooms[n % len(rooms)]}"])
        conns.append(conn)
    return conns


def all_written(conns: list[ConnectionPresence]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        entries: set[bytes] = set()
        for stream in {stream for conn in conns for stream in conn.streams}:
            entries |= set(await scores(presence._stream_key(stream)))
        return all(f"{c.user_id}:{c.conn}".encode() in entries for c in conns)

    return check


async def online(user_id: int) -> bool:
    return (await presence.user_statuses(user_ids=[user_id]))[user_id].online


async def test_many_sockets_share_one_heartbeat_task(
    layer: StreamChannelLayer, beat_by_hand: None
) -> None:
    conns = await start_many(200, rooms=["a", "b"], users=50)
    assert heartbeat_names() == ["presence-flush", "presence-heartbeat"]
    [flush] = [task for task in presence_tasks() if task.get_name() == "presence-flush"]
    await asyncio.wait_for(asyncio.wait([flush]), timeout=5)
    assert await all_written(conns)()
    assert heartbeat_names() == ["presence-heartbeat"], "one task for the process, none per socket"
    assert len(presence._heartbeats[asyncio.get_running_loop()].live) == 200
    for conn in conns:
        await conn.close()
    assert presence._heartbeats[asyncio.get_running_loop()].live == set()


async def test_a_connect_storm_is_written_in_a_pipeline_per_batch_not_per_socket(
    layer: StreamChannelLayer, beat_by_hand: None, round_trips: Calls
) -> None:
    conns = await start_many(300, rooms=["storm"], users=300)
    assert round_trips == [], "registering a socket costs no round trip"
    await flushed()
    assert await all_written(conns)()
    flushes = writes(round_trips)
    assert len(flushes) == math.ceil(300 / presence.BATCH_CONNECTIONS)
    assert sum(len(script_calls(flush, scripts.PRESENCE_JOIN)) for flush in flushes) == 300
    # Each batch's user entries: one script call, not commands per user.
    assert [len(script_calls(flush, scripts.PRESENCE_TOUCH)) for flush in flushes] == [1] * len(
        flushes
    )
    assert sum(len(commands(flush, "ZADD")) for flush in flushes) == 0
    assert [key for flush in flushes for key in swept_keys(flush)] == []  # the flush only writes
    assert list(await scores(presence._user_key(conns[7].user_id))) == [conns[7].conn.encode()]
    for conn in conns:
        await conn.close()
    assert await presence.room_online(slug="storm") == []


async def test_a_beat_refreshes_every_entry_in_a_pipeline_per_batch_and_sweeps_each_room_once(
    layer: StreamChannelLayer, beat_by_hand: None, round_trips: Calls
) -> None:
    rooms = ["r1", "r2", "r3"]
    conns = await start_many(90, rooms=rooms, users=30)
    await flushed()
    assert await all_written(conns)()
    # Age the entries by a second, so a beat within the same millisecond still shows as newer.
    keys = {presence._stream_key(f"room:{slug}") for slug in rooms}
    keys |= {presence._user_key(c.user_id) for c in conns}
    for key in keys:
        aged = {member: score - 1000 for member, score in (await scores(key)).items()}
        await broker.current().redis().zadd(key, aged, xx=True)
    rooms_before = {slug: await scores(presence._stream_key(f"room:{slug}")) for slug in rooms}
    users_before = {c.user_id: await scores(presence._user_key(c.user_id)) for c in conns}
    round_trips.clear()
    await presence._heartbeats[asyncio.get_running_loop()].beat()
    assert len(round_trips) == math.ceil(90 / presence.BATCH_CONNECTIONS), "a round trip per batch"
    swept = [key for trip in round_trips for key in swept_keys(trip)]
    assert sorted(swept) == [presence._stream_key(f"room:{slug}") for slug in rooms]
    for slug in rooms:
        after = await scores(presence._stream_key(f"room:{slug}"))
        assert after.keys() == rooms_before[slug].keys() and len(after) == 30
        assert all(after[member] > rooms_before[slug][member] for member in after)
    for conn in conns:
        member = conn.conn.encode()
        after = (await scores(presence._user_key(conn.user_id)))[member]
        assert after > users_before[conn.user_id][member]
    for conn in conns:
        await conn.close()
    for slug in rooms:
        assert await presence.room_online(slug=slug) == []


async def test_the_heartbeat_stops_with_its_last_socket_and_starts_with_the_next(
    layer: StreamChannelLayer, settings: Settings
) -> None:
    settings.PRESENCE_HEARTBEAT_SECS = 0.1
    first = await admitted(81, "erin", ["user:81"])
    assert heartbeat_names() == ["presence-heartbeat"], "no presence stream: nothing to flush"
    assert await online(81)
    await first.close()
    assert not await online(81)
    await asyncio.wait_for(asyncio.wait(presence_tasks()), timeout=2)
    assert asyncio.get_running_loop() not in presence._heartbeats  # nothing kept for the loop
    await Room.objects.acreate(slug="porch", title="Porch")
    second = await admitted(82, "fred", ["user:82", "room:porch"])
    assert heartbeat_names() == ["presence-flush", "presence-heartbeat"]
    await flushed()
    assert await online(82) and await presence.room_online(slug="porch") == [82]
    await second.close()
    await asyncio.wait_for(asyncio.wait(presence_tasks()), timeout=2)


async def admitted(user_id: int, username: str, streams: list[str]) -> ConnectionPresence:
    """A socket's presence as the consumer starts it: admitted (its user entry), then started."""
    conn = ConnectionPresence(user_id=user_id, username=username)
    assert await presence.user_admit(user_id=user_id, username=username, conn=conn.conn, limit=5)
    await conn.start(streams)
    return conn


async def test_an_admitted_socket_marks_its_user_seen_and_named_with_no_write_of_its_own(
    layer: StreamChannelLayer, beat_by_hand: None, round_trips: Calls
) -> None:
    before = presence.now_ms()
    conn = await admitted(83, "gina", ["broadcast", "user:83"])
    assert writes(round_trips) == [], "no pipeline of its own"
    assert heartbeat_names() == ["presence-heartbeat"], "and no flush to come"
    status = (await presence.user_statuses(user_ids=[83]))[83]
    assert status.online and status.last_seen_ms is not None and status.last_seen_ms >= before
    assert await presence._names([83]) == ["gina"]
    # The beat refreshes its entry all the same.
    [(member, score)] = (await scores(presence._user_key(83))).items()
    await broker.current().redis("user:83").zadd(presence._user_key(83), {member: score - 1000})
    await presence._heartbeats[asyncio.get_running_loop()].beat()
    assert (await scores(presence._user_key(83)))[member] > score - 1000
    await conn.close()
    assert not (await presence.user_statuses(user_ids=[83]))[83].online


async def test_a_dead_sockets_leave_is_announced_once_by_the_process_sweep(
    layer: StreamChannelLayer, settings: Settings
) -> None:
    settings.PRESENCE_HEARTBEAT_SECS = 0.2
    await Room.objects.acreate(slug="cellar", title="Cellar")
    sockets = [await in_room(91 + n, f"watcher{n}", "cellar") for n in range(3)]
    await dead_entry_in("cellar", 99, "ghost")  # a socket of a replica that died
    for socket in sockets:
        left = await next_presence(socket, "ghost", timeout=5)
        assert (left["event"], left["user_id"]) == ("leave", 99)
    # Five more beats, each sweeping the room: no socket hears of the ghost again.
    assert await sockets[0].nothing(timeout=1.0)
    for socket in sockets[1:]:
        assert await socket.nothing(timeout=0.1)
    assert await presence.room_online(slug="cellar") == [91, 92, 93]
    assert not await online(99)
    for socket in sockets:
        await socket.close()


async def test_entries_lost_with_redis_return_on_the_next_beat_and_rejoin(
    layer: StreamChannelLayer, settings: Settings
) -> None:
    settings.PRESENCE_HEARTBEAT_SECS = 0.2
    await Room.objects.acreate(slug="loft", title="Loft")
    alice = await in_room(95, "alice", "loft")
    assert (await next_presence(alice, "alice95"))["event"] == "join"
    # What a Redis restart does to presence: its keys and the loaded scripts are gone, at once.
    pattern = f"{broker.current().keys.prefix}:*"
    for shard in range(layer.broker.shard_count):
        client = broker.current().redis(shard)
        keys = [
            key
            async for key in client.scan_iter(pattern)
            if b"presence" in key or b"sockets" in key
        ]
        async with client.pipeline(transaction=True) as pipe:
            if keys:
                pipe.delete(*keys)
            pipe.script_flush()
            await pipe.execute()
    client = broker.current().redis("room:loft")
    # The next beat's JOIN finds alice gone (after loading the scripts again) and says so.
    assert (await next_presence(alice, "alice95"))["event"] == "join"
    assert await client.script_exists(scripts.PRESENCE_JOIN.sha, scripts.PRESENCE_SWEEP.sha) == [
        True,
        True,
    ]
    assert await presence.room_online(slug="loft") == [95]
    # The user's own entry is written by the same beat, on its own shard's round trip (with
    # shards not the room's), so it may land just after the room's join was announced.
    await eventually(lambda: online(95), timeout=3)
    await alice.close()
    assert await presence.room_online(slug="loft") == []


async def test_redis_trouble_breaks_no_socket_and_entries_return_after_it(
    layer: StreamChannelLayer, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.PRESENCE_HEARTBEAT_SECS = 0.1
    await Room.objects.acreate(slug="shed", title="Shed")
    attempts = 0
    three_failed = asyncio.Event()

    async def unreachable(queue: Any, **route: Any) -> list[Any]:
        nonlocal attempts
        attempts += 1
        if attempts >= 3:
            three_failed.set()
        raise BrokerUnavailable("Redis is restarting")

    monkeypatch.setattr(presence, "_pipelined", unreachable)
    alice = await in_room(97, "alice", "shed")  # the subscribe's enter() failed quietly
    await asyncio.wait_for(three_failed.wait(), timeout=5)  # beats while Redis is away
    await alice.send({"type": "echo", "id": "e", "payload": 1})
    assert (await alice.receive())["type"] == "echo"
    assert await presence.room_online(slug="shed") == []
    monkeypatch.undo()
    assert (await next_presence(alice, "alice97"))["event"] == "join"
    assert await presence.room_online(slug="shed") == [97]
    await alice.close()
