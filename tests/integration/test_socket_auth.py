"""The real consumer behind the entry middleware and the real routes, on a real Redis: the
session's user is the one the consumer greets, and a socket without one gets 4401."""

from __future__ import annotations

import json

import pytest
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User
from django.test import AsyncClient
from pytest_django.fixtures import Settings

from realtime.layer import StreamChannelLayer
from realtime.routing import websocket_urlpatterns
from realtime.socket_auth import SocketAuthMiddleware

pytestmark = pytest.mark.django_db(transaction=True)

ORIGIN = (b"origin", b"http://localhost:8000")
HOST = (b"host", b"localhost:8000")


@pytest.fixture
def app(settings: Settings) -> SocketAuthMiddleware:
    settings.ALLOWED_HOSTS = ["localhost"]
    return SocketAuthMiddleware(websocket_urlpatterns)


async def test_the_consumer_greets_the_user_of_the_session_cookie(
    settings: Settings, app: SocketAuthMiddleware, layer: StreamChannelLayer
) -> None:
    alice = await User.objects.acreate_user("alice", password="pw")
    client = AsyncClient()
    await client.aforce_login(alice)
    name = settings.SESSION_COOKIE_NAME
    cookie = f"{name}={client.cookies[name].value}".encode()
    communicator = WebsocketCommunicator(app, "/ws/", headers=[ORIGIN, HOST, (b"cookie", cookie)])
    accepted, _ = await communicator.connect(timeout=3)
    assert accepted
    hello = json.loads(await communicator.receive_from(timeout=3))
    assert (hello["type"], hello["user"], hello["user_id"]) == ("hello", "alice", alice.pk)
    assert hello["streams"].keys() == {f"user:{alice.pk}", "broadcast"}
    await communicator.disconnect()


async def test_a_socket_without_a_session_is_closed_by_the_consumer_with_4401(
    app: SocketAuthMiddleware, layer: StreamChannelLayer
) -> None:
    communicator = WebsocketCommunicator(app, "/ws/", headers=[ORIGIN, HOST])
    await communicator.connect(timeout=3)
    assert json.loads(await communicator.receive_from(timeout=3))["code"] == "unauthorized"
    assert await communicator.receive_output(timeout=3) == {"type": "websocket.close", "code": 4401}
    await communicator.disconnect()
