"""Presence against a real Redis: join/leave events, several devices, TTL expiry of a dead
socket."""

from __future__ import annotations

import asyncio
import json
import time
from urllib.parse import quote

import pytest
from pytest_django.fixtures import Settings

from chat.models import Room
from realtime import presence
from realtime.layer import StreamChannelLayer
from tests.integration.conftest import Socket, a_user, open_socket

pytestmark = pytest.mark.django_db(transaction=True)


async def in_room(user_pk: int, name: str, slug: str) -> Socket:
    """A socket that asked for ephemeral frames and entered `room:<slug>`."""
    socket, hello = await open_socket(a_user(user_pk, name), "?ephemeral=1")
    assert hello["type"] == "hello"
    await socket.send({"type": "subscribe", "stream": f"room:{slug}"})
    assert (await socket.receive())["type"] == "subscribed"
    return socket


async def next_presence(socket: Socket, user: str, timeout: float = 5) -> dict:  # type: ignore[type-arg]
    """The next presence frame about `user` (a socket also hears its own join)."""
    deadline = time.monotonic() + timeout
    while True:
        frame = await socket.receive(timeout=max(0.05, deadline - time.monotonic()))
        if frame["type"] == "presence" and frame["user"] == user:
            return frame


async def dead_entry_in(slug: str, user_id: int, username: str) -> None:
    """The entries of a socket whose replica died without running disconnect(): nobody
    refreshes them, and they expire in 1 s."""
    await presence.user_touch(user_id=user_id, username=username, conn="dead", ttl=1000)
    assert await presence.room_enter(
        slug=slug, user_id=user_id, username=username, conn="dead", ttl=1000
    )


async def test_join_and_leave_are_announced_to_the_room(layer: StreamChannelLayer) -> None:
    await Room.objects.acreate(slug="hall", title="Hall")
    alice = await in_room(21, "alice", "hall")
    bob = await in_room(22, "bob", "hall")
    assert (await next_presence(alice, "alice21"))["event"] == "join"
    joined = await next_presence(alice, "bob22")
    assert (joined["event"], joined["user"], joined["user_id"], joined["stream"]) == (
        "join",
        "bob22",
        22,
        "room:hall",
    )
    assert await presence.room_online(slug="hall") == [21, 22]
    statuses = await presence.user_statuses(user_ids=[21, 22, 23])
    assert statuses[22].online and not statuses[23].online and statuses[23].last_seen_ms is None
    await bob.close()
    assert (await next_presence(alice, "bob22"))["event"] == "leave"
    assert await presence.room_online(slug="hall") == [21]
    gone = (await presence.user_statuses(user_ids=[22]))[22]
    assert not gone.online and gone.last_seen_ms is not None
    assert await alice.nothing()
    await alice.close()


async def test_a_socket_resumed_into_several_rooms_is_present_in_each(
    layer: StreamChannelLayer,
) -> None:
    for slug in ("one", "two", "three"):
        await Room.objects.acreate(slug=slug, title=slug)
    positions = {f"room:{slug}": {"epoch": None, "seq": 0} for slug in ("one", "two", "three")}
    socket, hello = await open_socket(
        a_user(71), "?ephemeral=1&resume=" + quote(json.dumps(positions))
    )
    assert set(positions) <= set(hello["streams"])
    joined = [(await next_presence(socket, "alice71"))["stream"] for _ in range(3)]
    assert sorted(joined) == ["room:one", "room:three", "room:two"]
    for slug in ("one", "two", "three"):
        assert await presence.room_online(slug=slug) == [71]
    await socket.close()
    for slug in ("one", "two", "three"):
        assert await presence.room_online(slug=slug) == []


async def test_a_second_device_neither_joins_nor_leaves_again(layer: StreamChannelLayer) -> None:
    await Room.objects.acreate(slug="den", title="Den")
    alice = await in_room(31, "alice", "den")
    await next_presence(alice, "alice31")
    phone = await in_room(32, "bob", "den")
    laptop = await in_room(32, "bob", "den")
    assert (await next_presence(alice, "bob32"))["event"] == "join"
    await phone.close()
    assert await alice.nothing(timeout=0.5)  # bob is still here on his laptop
    await laptop.close()
    assert (await next_presence(alice, "bob32"))["event"] == "leave"
    await alice.close()


async def test_plain_sockets_get_no_ephemeral_frames(layer: StreamChannelLayer) -> None:
    await Room.objects.acreate(slug="quiet", title="Quiet")
    plain, _ = await open_socket(a_user(41))
    await plain.send({"type": "subscribe", "stream": "room:quiet"})
    assert (await plain.receive())["type"] == "subscribed"
    other = await in_room(42, "bob", "quiet")
    await next_presence(other, "bob42")
    assert await plain.nothing(timeout=0.5)
    await other.close()
    await plain.close()


async def test_a_dead_connection_expires_and_its_user_leaves(
    layer: StreamChannelLayer, settings: Settings
) -> None:
    # A fast heartbeat, so alice's socket sweeps the room often.
    settings.PRESENCE_HEARTBEAT_SECS = 0.2
    await Room.objects.acreate(slug="attic", title="Attic")
    alice = await in_room(51, "alice", "attic")
    await next_presence(alice, "alice51")
    await dead_entry_in("attic", 52, "carol")  # carol's replica died
    assert 52 in await presence.room_online(slug="attic")
    assert (await presence.user_statuses(user_ids=[52]))[52].online
    started = time.monotonic()
    left = await next_presence(alice, "carol", timeout=5)
    waited = time.monotonic() - started
    assert (left["event"], left["user"], left["user_id"]) == ("leave", "carol", 52)
    assert waited < 2.5, f"the leave came {waited:.1f} s after a 1 s TTL"
    assert await presence.room_online(slug="attic") == [51]
    status = (await presence.user_statuses(user_ids=[52]))[52]
    assert not status.online and status.last_seen_ms is not None
    # Alice's own entry is kept alive by her heartbeat, well past three of its beats.
    assert await alice.nothing(timeout=1.0)
    assert await presence.room_online(slug="attic") == [51]
    await alice.close()


async def test_two_sweepers_announce_a_leave_once(layer: StreamChannelLayer) -> None:
    for conn in ("a", "b"):
        await presence.room_enter(slug="porch", user_id=61, username="dave", conn=conn, ttl=1)
    later = presence.now_ms() + 50
    results = await asyncio.gather(
        *(presence.room_sweep(slug="porch", now=later) for _ in range(4))
    )
    assert sorted(results) == [[], [], [], [61]]
