"""Sockets that come and go leave nothing behind: after many open and close, cleanly or not, no
session, inbound half or writer of theirs is alive, and every per-socket registry (the hub's
sinks and groups, the presence heartbeat, the session watch, the connection count) is back to
its size before. Counted by object type, so the allocator cannot fool it."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User
from django.test import AsyncClient

from chat.models import Room
from realtime import lifetimes, presence, session_watch
from realtime.consumers import RealtimeConsumer
from realtime.delivery.inbound import Inbound
from realtime.delivery.session import Session
from realtime.layer import StreamChannelLayer
from realtime.stats import replica_stats
from realtime.transport.asgi import AsgiWriter

pytestmark = pytest.mark.django_db(transaction=True)

SOCKETS = 30


def alive(kind: type) -> int:
    gc.collect()
    return sum(1 for obj in gc.get_objects() if type(obj) is kind)


def registries(layer: StreamChannelLayer) -> dict[str, int]:
    hub = layer._layer().hub
    heartbeat = presence._heartbeats.get(asyncio.get_running_loop())
    return {
        "hub sinks": len(hub.sinks),
        "hub groups": len(hub.groups),
        "hub inboxes": len(hub.queues),
        "presence heartbeat": 0 if heartbeat is None else len(heartbeat.live),
        "session watch": session_watch.watched_count(),
        "open connections": replica_stats.open_connections,
    }


async def open_one(user: User, session_key: str) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(RealtimeConsumer.as_asgi(), "/ws/")
    communicator.scope["user"] = user
    communicator.scope["session_key"] = session_key
    assert (await communicator.connect())[0]
    assert '"hello"' in await communicator.receive_from()
    await communicator.send_json_to({"type": "subscribe", "stream": "room:churn"})
    assert '"subscribed"' in await communicator.receive_from()
    return communicator


async def test_sockets_opened_and_closed_cleanly_or_not_leave_nothing_alive(
    layer: StreamChannelLayer,
) -> None:
    await Room.objects.acreate(slug="churn", title="Churn")
    users = [await User.objects.acreate(username=f"churn{n}") for n in range(3)]
    keys: dict[int, Any] = {}
    for user in users:
        client = AsyncClient()
        await client.aforce_login(user)
        keys[user.pk] = client.session.session_key
    warm = await open_one(users[0], keys[users[0].pk])  # warms every per-process registry up
    baseline = registries(layer)
    before = {kind: alive(kind) for kind in (Session, Inbound, AsgiWriter)}
    for round_ in range(2):
        sockets = [await open_one(users[n % 3], keys[users[n % 3].pk]) for n in range(SOCKETS // 2)]
        assert registries(layer)["open connections"] == baseline["open connections"] + len(sockets)
        for n, communicator in enumerate(sockets):
            if n % 2 or round_:
                await communicator.disconnect()  # a close handshake
            else:
                # Dropped without one: the server cancels the application (Daphne does so once
                # the TCP connection is gone and the app has not ended by itself).
                communicator.future.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await communicator.future
        await presence._settle()
    after = registries(layer)
    assert after == baseline, f"registries grew: {baseline} -> {after}"
    leftover = {kind.__name__: alive(kind) - count for kind, count in before.items()}
    assert leftover == {"Session": 0, "Inbound": 0, "AsgiWriter": 0}
    await warm.disconnect()


async def test_a_closed_sockets_objects_are_freed_by_reference_counting_alone(
    layer: StreamChannelLayer,
) -> None:
    """No reference cycle holds a closed socket: its consumer, session, inbound half and writer
    are freed the moment it ends, not at the next full garbage collection (which a replica runs
    once a minute: until then every socket closed in that minute would hold its memory, and
    the peak it makes is what fragments the heap; docs/memory.md). Counted with the cycle
    collector off, by lifetimes.LIVE, which `__del__` keeps."""
    await Room.objects.acreate(slug="churn", title="Churn")
    user = await User.objects.acreate(username="refcounted")
    client = AsyncClient()
    await client.aforce_login(user)
    key = client.session.session_key
    warm = await open_one(user, key)
    kinds = ("RealtimeConsumer", "Session", "Inbound", "AsgiWriter")
    gc.collect()
    before = {kind: lifetimes.LIVE[kind] for kind in kinds}
    gc.disable()
    try:
        sockets = [await open_one(user, key) for _ in range(10)]
        assert {kind: lifetimes.LIVE[kind] - before[kind] for kind in kinds} == dict.fromkeys(
            kinds, 10
        )
        for n, communicator in enumerate(sockets):
            if n % 2:
                await communicator.disconnect()
            else:
                communicator.future.cancel()  # the server cancels it: the client vanished
                with pytest.raises(asyncio.CancelledError):
                    await communicator.future
        await presence._settle()
        del sockets, communicator
        left = {kind: lifetimes.LIVE[kind] - before[kind] for kind in kinds}
    finally:
        gc.enable()
    assert left == dict.fromkeys(kinds, 0), f"held by a reference cycle: {left}"
    await warm.disconnect()
