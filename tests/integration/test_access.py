"""Access taken away while a socket is open reaches that socket (realtime/access.py)."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User

from chat.models import Room
from realtime import publish
from realtime.consumers import RealtimeConsumer
from realtime.layer import StreamChannelLayer
from tests.integration.conftest import Socket

pytestmark = pytest.mark.django_db(transaction=True)


async def socket_of(user: User) -> Socket:
    communicator = WebsocketCommunicator(RealtimeConsumer.as_asgi(), "/ws/")
    communicator.scope["user"] = user
    accepted, _ = await communicator.connect()
    assert accepted
    socket = Socket(communicator)
    assert (await socket.receive())["type"] == "hello"
    return socket


async def subscribed(socket: Socket, stream: str) -> None:
    await socket.send({"type": "subscribe", "stream": stream})
    assert (await socket.receive())["type"] == "subscribed"


async def next_error(socket: Socket) -> dict:  # type: ignore[type-arg]
    while True:
        frame = await socket.receive(timeout=5)
        if frame["type"] == "error":
            return frame


async def test_a_member_removed_from_a_private_room_stops_reading_it(
    layer: StreamChannelLayer,
) -> None:
    bob = await User.objects.acreate(username="bob-access")
    carol = await User.objects.acreate(username="carol-access")
    room = await Room.objects.acreate(slug="secret", title="Secret", is_private=True)
    await room.members.aadd(bob, carol)
    bob_socket, carol_socket = await socket_of(bob), await socket_of(carol)
    await subscribed(bob_socket, "room:secret")
    await subscribed(carol_socket, "room:secret")
    await sync_to_async(room.members.remove)(bob)
    error = await next_error(bob_socket)
    assert (error["code"], error["stream"]) == ("access_revoked", "room:secret")
    await publish.publish(stream="room:secret", payload="after bob left")
    assert (await carol_socket.receive())["payload"] == "after bob left"
    assert await bob_socket.nothing(), "bob's socket no longer gets the room"
    await bob_socket.close()
    await carol_socket.close()


async def test_a_room_made_private_is_left_by_its_non_members(layer: StreamChannelLayer) -> None:
    dave = await User.objects.acreate(username="dave-access")
    room = await Room.objects.acreate(slug="porch", title="Porch")
    socket = await socket_of(dave)
    await subscribed(socket, "room:porch")
    room.is_private = True
    await sync_to_async(room.save)()
    assert (await next_error(socket))["code"] == "access_revoked"
    await socket.close()


async def test_losing_staff_takes_the_ops_stream_away(layer: StreamChannelLayer) -> None:
    erin = await User.objects.acreate(username="erin-access", is_staff=True)
    socket = await socket_of(erin)
    await subscribed(socket, "ops")
    erin.last_name = "renamed"
    await sync_to_async(erin.save)()  # no access field changed: nothing happens
    assert await socket.nothing()
    erin.is_staff = False
    await sync_to_async(erin.save)()
    error = await next_error(socket)
    assert error["code"] == "access_revoked" and "ops" in error["message"]
    await socket.close()


async def test_a_deactivated_user_is_disconnected(layer: StreamChannelLayer) -> None:
    frank = await User.objects.acreate(username="frank-access")
    socket = await socket_of(frank)
    frank.is_active = False
    await sync_to_async(frank.save)()
    assert (await next_error(socket))["code"] == "access_revoked"
    closed = await socket.communicator.receive_output(timeout=5)
    assert closed == {"type": "websocket.close", "code": 4401}


async def test_a_password_change_ends_the_users_sockets(layer: StreamChannelLayer) -> None:
    gina = await User.objects.acreate(username="gina-access")
    await sync_to_async(gina.set_password)("old-pass")
    await sync_to_async(gina.save)()
    socket = await socket_of(gina)
    gina.set_password("new-pass")
    await sync_to_async(gina.save)()
    assert (await next_error(socket))["code"] == "access_revoked"
    closed = await socket.communicator.receive_output(timeout=5)
    assert closed == {"type": "websocket.close", "code": 4401}
