"""The consumer with Channels' communicators, on the in-memory layer."""

from __future__ import annotations

import json

import pytest
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser, User

from project.asgi import application
from realtime import publish
from realtime.consumers import RealtimeConsumer

pytestmark = pytest.mark.django_db(transaction=True)


async def connected(user: User) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(RealtimeConsumer.as_asgi(), "/ws/")
    communicator.scope["user"] = user
    accepted, _ = await communicator.connect()
    assert accepted
    return communicator


async def receive(communicator: WebsocketCommunicator) -> dict:  # type: ignore[type-arg]
    return json.loads(await communicator.receive_from(timeout=2))


async def test_first_frame_says_hello_with_replica_and_user() -> None:
    communicator = await connected(User(pk=7, username="alice"))
    hello = await receive(communicator)
    assert hello["type"] == "hello"
    assert hello["replica"] == "unit" and hello["user"] == "alice"
    assert hello["streams"] == ["user:7", "broadcast"]
    await communicator.disconnect()


async def test_anonymous_socket_is_closed_with_4401() -> None:
    communicator = WebsocketCommunicator(RealtimeConsumer.as_asgi(), "/ws/")
    communicator.scope["user"] = AnonymousUser()
    await communicator.connect()
    assert (await receive(communicator))["code"] == "unauthorized"
    assert await communicator.receive_output(timeout=2) == {"type": "websocket.close", "code": 4401}


async def test_echo_and_ping_are_answered_by_the_same_replica() -> None:
    communicator = await connected(User(pk=1, username="alice"))
    await receive(communicator)
    await communicator.send_to(text_data='{"type": "echo", "id": "e", "payload": {"a": 1}}')
    assert await receive(communicator) == {
        "type": "echo", "replica": "unit", "payload": {"a": 1}, "id": "e"
    }  # fmt: skip
    await communicator.send_to(text_data='{"type": "ping"}')
    assert await receive(communicator) == {"type": "pong", "replica": "unit"}
    await communicator.disconnect()


async def test_bad_frames_get_error_frames_and_the_socket_stays_open() -> None:
    communicator = await connected(User(pk=1, username="alice"))
    await receive(communicator)
    await communicator.send_to(text_data="{{{")
    await communicator.send_to(bytes_data=b"\x00")
    await communicator.send_to(text_data='{"type": "nope"}')
    codes = [(await receive(communicator))["code"] for _ in range(3)]
    assert codes == ["bad_json", "binary_not_supported", "unknown_type"]
    await communicator.send_to(text_data='{"type": "ping"}')
    assert (await receive(communicator))["type"] == "pong"
    await communicator.disconnect()


async def test_push_reaches_only_its_user() -> None:
    alice = await connected(User(pk=1, username="alice"))
    bob = await connected(User(pk=2, username="bob"))
    await receive(alice)
    await receive(bob)
    result = await publish.push_to_user(user_id=2, payload={"text": "for bob"})
    frame = await receive(bob)
    assert frame["type"] == "push" and frame["payload"] == {"text": "for bob"}
    assert frame["stream"] == "user:2" and frame["id"] == result.id
    assert await alice.receive_nothing(timeout=0.3)
    await publish.broadcast(payload="all")
    assert (await receive(alice))["payload"] == "all"
    assert (await receive(bob))["payload"] == "all"
    await alice.disconnect()
    await bob.disconnect()


async def test_foreign_origin_is_refused_by_the_application() -> None:
    communicator = WebsocketCommunicator(
        application, "/ws/", headers=[(b"origin", b"http://evil.example"), (b"host", b"localhost")]
    )
    accepted, _ = await communicator.connect()
    assert not accepted


def test_payload_limits() -> None:
    publish.check_payload({"ok": [1, 2, 3]})
    with pytest.raises(publish.PayloadTooLarge):
        publish.check_payload("x" * 70_000)
    with pytest.raises(publish.InvalidPayload):
        publish.check_payload({"not": {1, 2}})
