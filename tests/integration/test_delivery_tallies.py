"""The delivery ledger of a room: each message with the sockets it was delivered to and
acknowledged by, counted on the replicas and summed in Redis; and the admin page that shows it."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import AsyncClient

from chat.models import Room
from realtime import broker, publish
from realtime.layer import StreamChannelLayer
from tests.integration.conftest import a_user, eventually, open_socket

pytestmark = pytest.mark.django_db(transaction=True)


async def in_room(user: Any, stream: str) -> Any:
    socket, _ = await open_socket(user)
    await socket.send({"type": "subscribe", "stream": stream})
    assert (await socket.receive())["type"] == "subscribed"
    return socket


async def counts_are(stream: str, want: dict[int, tuple[int, int]]) -> bool:
    """Whether the ledger's (delivered to, acked by) per seq are `want` (flushes are batched)."""
    ledger = await broker.current().ledger(stream)
    return {m["seq"]: (m["delivered_to"], m["acked_by"]) for m in ledger["messages"]} == want


async def test_a_rooms_messages_count_the_sockets_that_got_and_acknowledged_them(
    layer: StreamChannelLayer,
) -> None:
    await Room.objects.acreate(slug="tally", title="Tally")
    alice, bob = await in_room(a_user(41), "room:tally"), await in_room(a_user(42), "room:tally")
    for n in range(1, 4):
        await publish.publish(stream="room:tally", payload=n)
    for socket in (alice, bob):
        assert [f["seq"] for f in await socket.receive_many(3)] == [1, 2, 3]
    await alice.send({"type": "ack", "stream": "room:tally", "seq": 2})
    await alice.send({"type": "ack", "stream": "room:tally", "seq": 2})  # counted once
    await bob.send({"type": "ack", "stream": "room:tally", "seq": 3})
    await eventually(lambda: counts_are("room:tally", {3: (2, 1), 2: (2, 2), 1: (2, 2)}))
    staff = await User.objects.acreate(username="ledger-staff", is_staff=True, is_superuser=True)
    client = AsyncClient()
    await client.aforce_login(staff)
    page = await client.get("/admin/realtime/ledger/stream/room:tally/")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'data-seq="3"' in html and 'data-delivered-to="2" data-acked-by="1"' in html
    # A user stream has marks, not counts: this page is for streams of a registered kind.
    assert (await client.get("/admin/realtime/ledger/stream/user:41/")).status_code == 404
    for socket in (alice, bob):
        await socket.close()
