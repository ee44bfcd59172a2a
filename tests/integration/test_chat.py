"""Chat against a real Redis: rows stored then published once, a page's snapshot plus resume
with no gap and no duplicate, the database catch-up, and who may read what."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth.models import User
from django.test import AsyncClient

from chat import services
from chat.models import ChatMessage, Room
from realtime import broker
from realtime.layer import StreamChannelLayer
from tests.integration.conftest import open_socket

pytestmark = pytest.mark.django_db(transaction=True)


async def make_user(name: str) -> User:
    return await User.objects.acreate(username=name)


async def test_a_chat_line_is_stored_published_once_and_acked_even_when_resent(
    layer: StreamChannelLayer,
) -> None:
    alice = await make_user("alice")
    await Room.objects.acreate(slug="tea", title="Tea")
    socket, _ = await open_socket(alice)
    await socket.send({"type": "subscribe", "stream": "room:tea"})
    assert (await socket.receive())["type"] == "subscribed"
    frame = {
        "type": "publish",
        "id": "c-1",
        "stream": "room:tea",
        "payload": {"kind": "chat", "text": " <i>hi</i> "},
    }
    await socket.send(frame)
    got = await socket.receive_many(2)
    message = next(f for f in got if f["type"] == "message")
    ack = next(f for f in got if f["type"] == "ack")
    row = await ChatMessage.objects.aget()
    assert (row.text, row.seq, row.epoch, row.client_id) == (
        "<i>hi</i>",
        1,
        message["epoch"],
        "c-1",
    )
    assert message["payload"]["id"] == row.pk and message["payload"]["text"] == "<i>hi</i>"
    assert (ack["id"], ack["seq"], ack["duplicate"], ack["message_id"]) == ("c-1", 1, False, row.pk)
    await socket.send(frame)  # the resend of a client that lost the ack
    again = await socket.receive()
    assert (again["type"], again["seq"], again["duplicate"], again["message_id"]) == (
        "ack",
        1,
        True,
        row.pk,
    )
    assert await socket.nothing()
    assert await ChatMessage.objects.acount() == 1
    assert len(await broker.current().read("room:tea", after=0)) == 1
    await socket.send(
        {
            "type": "publish",
            "id": "c-2",
            "stream": "room:tea",
            "payload": {"kind": "chat", "text": "  "},
        }
    )
    assert (await socket.receive())["code"] == "bad_payload"
    await socket.close()


async def test_snapshot_then_resume_shows_every_message_once(layer: StreamChannelLayer) -> None:
    alice, bob = await make_user("alice"), await make_user("bob")
    room = await Room.objects.acreate(slug="den", title="Den")
    post = database_sync_to_async(services.message_post)
    for n in range(3):
        await post(user=alice, room=room, text=f"before {n}")
    snapshot = await database_sync_to_async(services.room_snapshot)(room=room)
    assert [m.text for m in snapshot.messages] == ["before 0", "before 1", "before 2"]
    assert snapshot.seq == 3
    for n in range(2):  # said while the page was on its way to the browser
        await post(user=bob, room=room, text=f"after {n}")
    position = {"room:den": {"epoch": snapshot.epoch, "seq": snapshot.seq}}
    socket, _ = await open_socket(bob, "?resume=" + quote(json.dumps(position)))
    frames = await socket.receive_many(3)
    assert [f["payload"]["text"] for f in frames if f["type"] == "message"] == [
        "after 0",
        "after 1",
    ]
    assert frames[-1]["type"] == "resumed" and frames[-1]["recovered"]
    assert await socket.nothing()
    await socket.close()


async def test_catch_up_reads_rows_after_an_id_and_private_rooms_stay_hidden(
    layer: StreamChannelLayer,
) -> None:
    alice, bob = await make_user("alice"), await make_user("bob")
    room = await database_sync_to_async(services.room_create)(
        user=alice, slug="secret", title="S", is_private=True
    )
    post = database_sync_to_async(services.message_post)
    first, _ = await post(user=alice, room=room, text="one")
    await post(user=alice, room=room, text="two")
    await post(user=alice, room=room, text="<three>")
    client = AsyncClient()
    await client.aforce_login(alice)
    answer = await client.get(f"/chat/secret/messages?after={first.pk}")
    assert answer.status_code == 200
    assert [m["text"] for m in answer.json()["messages"]] == ["two", "<three>"]
    page = await client.get("/chat/secret/")
    assert b"&lt;three&gt;" in page.content and b"<three>" not in page.content
    outsider = AsyncClient()
    await outsider.aforce_login(bob)
    for path in ("/chat/secret/", "/chat/secret/messages", "/chat/secret/presence"):
        assert (await outsider.get(path)).status_code == 404
    assert b"secret" not in (await outsider.get("/chat/")).content
    await database_sync_to_async(services.room_invite)(user=alice, room=room, username="bob")
    assert (await outsider.get("/chat/secret/messages")).status_code == 200
