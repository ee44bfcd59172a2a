"""The server API for services (API token): kick a user's sockets, take a stream off them, read
a stream's history; on real sockets, the real layer and Redis, with a bystander who notices
nothing."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from django.test import AsyncClient

from chat.models import Room
from realtime import publish
from realtime.layer import StreamChannelLayer
from realtime.services import api_token_issue
from tests.integration.conftest import open_socket

pytestmark = pytest.mark.django_db(transaction=True)


async def api(method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    # A fresh name per call: a token name is unique, and id(body) can repeat within a test.
    _, secret = await sync_to_async(api_token_issue)(name=f"svc-{path}-{uuid.uuid4().hex[:12]}")
    headers = {"Authorization": f"Bearer {secret}"}
    if method == "GET":
        return await AsyncClient().get(path, headers=headers)
    return await AsyncClient().post(
        path, json.dumps(body), content_type="application/json", headers=headers
    )


async def test_a_kick_closes_every_socket_of_the_user_with_the_reason(
    layer: StreamChannelLayer,
) -> None:
    alice = await User.objects.acreate(username="kick-alice")
    bob = await User.objects.acreate(username="kick-bob")
    sockets = [(await open_socket(alice))[0] for _ in range(2)]
    witness, _ = await open_socket(bob)
    answer = await api("POST", "/api/kick", {"user": "kick-alice", "reason": "Under review."})
    assert answer.status_code == 200, answer.content
    for socket in sockets:
        error = await socket.receive()
        assert (error["type"], error["code"], error["message"]) == (
            "error",
            "kicked",
            "Under review.",
        )
        closed = await socket.communicator.receive_output(timeout=3)
        assert closed == {"type": "websocket.close", "code": 4401}
        await socket.close()
    await publish.push_to_user(user_id=bob.pk, payload="still here")
    assert (await witness.receive())["payload"] == "still here"
    await witness.close()


async def test_unsubscribe_takes_the_stream_off_the_users_sockets(
    layer: StreamChannelLayer,
) -> None:
    alice = await User.objects.acreate(username="unsub-alice")
    await Room.objects.acreate(slug="unsub", title="Unsub")
    socket, _ = await open_socket(alice)
    await socket.send({"type": "subscribe", "stream": "room:unsub"})
    assert (await socket.receive())["type"] == "subscribed"
    answer = await api("POST", "/api/unsubscribe", {"user": "unsub-alice", "stream": "room:unsub"})
    assert answer.status_code == 200, answer.content
    assert await socket.receive() == {
        "type": "unsubscribed",
        "stream": "room:unsub",
        "by": "server",
    }
    await publish.publish(stream="room:unsub", payload="after")
    assert await socket.nothing()
    bad = await api("POST", "/api/unsubscribe", {"user": "unsub-alice", "stream": "room:"})
    assert (bad.status_code, bad.json()["error"]) == (400, "bad_stream")
    unknown = await api("POST", "/api/kick", {"user": "nobody-here"})
    assert (unknown.status_code, unknown.json()["error"]) == (404, "unknown_user")
    await socket.close()


async def test_history_pages_through_a_stream_in_order(layer: StreamChannelLayer) -> None:
    await Room.objects.acreate(slug="hist", title="Hist")
    sent = [await publish.publish(stream="room:hist", payload={"n": n}) for n in range(3)]
    answer = await api("GET", f"/api/history?stream=room:hist&after={sent[0].seq}&limit=5")
    assert answer.status_code == 200, answer.content
    messages = answer.json()["messages"]
    assert [(m["seq"], m["payload"]) for m in messages] == [
        (sent[1].seq, {"n": 1}),
        (sent[2].seq, {"n": 2}),
    ]
    for query in ("stream=room:hist&limit=0", "stream=room:hist&after=x", "stream=nope"):
        assert (await api("GET", f"/api/history?{query}")).status_code == 400, query
    assert (await AsyncClient().get("/api/history?stream=room:hist")).status_code == 401
