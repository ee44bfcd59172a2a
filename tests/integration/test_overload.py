"""Overload, refused early and clearly: past MAX_SOCKETS_PER_REPLICA or MAX_CONNECTS_PER_SEC a
new socket gets error `overloaded` and 1013 (clients back off and retry), /readyz says so while
the replica is full, and the sockets it has never notice."""

from __future__ import annotations

import json
from typing import Any

import pytest
from channels.testing import WebsocketCommunicator
from django.test import AsyncClient
from pytest_django.fixtures import Settings

from realtime import publish
from realtime.consumers import RealtimeConsumer
from realtime.layer import StreamChannelLayer
from tests.integration.conftest import a_user, open_socket

pytestmark = pytest.mark.django_db(transaction=True)


async def refused(user: Any) -> dict[str, Any]:
    communicator = WebsocketCommunicator(RealtimeConsumer.as_asgi(), "/ws/")
    communicator.scope["user"] = user
    await communicator.connect()
    error = json.loads(await communicator.receive_from())
    assert await communicator.receive_output(timeout=2) == {"type": "websocket.close", "code": 1013}
    await communicator.disconnect()
    return error  # type: ignore[no-any-return]


async def test_at_the_socket_cap_the_next_socket_gets_1013_and_readiness_fails(
    layer: StreamChannelLayer, settings: Settings
) -> None:
    settings.MAX_SOCKETS_PER_REPLICA = 3
    sockets = [(await open_socket(a_user(80 + n)))[0] for n in range(3)]
    error = await refused(a_user(84))
    assert (error["type"], error["code"]) == ("error", "overloaded")
    assert "3" in error["message"]
    ready = await AsyncClient().get("/readyz")
    assert ready.status_code == 503
    assert any("MAX_SOCKETS_PER_REPLICA" in r for r in ready.json()["reasons"])
    # The sockets it holds carry on.
    await publish.push_to_user(user_id=80, payload="still here")
    assert (await sockets[0].receive())["payload"] == "still here"
    await sockets[2].close()
    again, hello = await open_socket(a_user(84))
    assert hello["type"] == "hello"
    for socket in [sockets[0], sockets[1], again]:
        await socket.close()


async def test_past_the_connect_rate_new_sockets_get_1013(
    layer: StreamChannelLayer, settings: Settings
) -> None:
    settings.MAX_CONNECTS_PER_SEC = 2  # a burst of 4, then 2 a second
    opened = [(await open_socket(a_user(90 + n)))[0] for n in range(4)]
    error = await refused(a_user(95))
    assert error["code"] == "overloaded" and "a second" in error["message"]
    for socket in opened:
        await socket.close()
