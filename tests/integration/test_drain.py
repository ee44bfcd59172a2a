"""A draining replica, in one process: its sockets get reconnect slots spread over the window,
new sockets are refused with 1012 `draining`, /readyz says why, and undrain takes it back.
POST /drain answers only callers on the replica's own host."""

from __future__ import annotations

import json

import pytest
from channels.testing import WebsocketCommunicator
from django.test import AsyncClient

from realtime import drain
from realtime.consumers import RealtimeConsumer
from realtime.layer import StreamChannelLayer
from tests.integration.conftest import a_user, open_socket

pytestmark = pytest.mark.django_db(transaction=True)


async def test_a_drain_gives_every_socket_a_slot_refuses_new_ones_and_undrain_ends_it(
    layer: StreamChannelLayer,
) -> None:
    sockets = [(await open_socket(a_user(70 + n)))[0] for n in range(4)]
    client = AsyncClient()
    try:
        answer = await client.post("/drain?window_secs=8")
        assert answer.status_code == 200 and answer.json()["sockets"] == 4
        slots = sorted([(await socket.receive())["after_ms"] for socket in sockets])
        assert slots == [0, 2000, 4000, 6000]  # evenly over the window
        ready = await client.get("/readyz")
        assert ready.status_code == 503 and "draining" in ready.json()["reasons"][0]
        refused = WebsocketCommunicator(RealtimeConsumer.as_asgi(), "/ws/")
        refused.scope["user"] = a_user(79)
        await refused.connect()
        error = json.loads(await refused.receive_from())
        assert (error["type"], error["code"]) == ("error", "draining")
        assert await refused.receive_output(timeout=2) == {"type": "websocket.close", "code": 1012}
        await refused.disconnect()
    finally:
        undone = await client.post("/drain?undo=1")
    assert undone.status_code == 200 and undone.json()["draining"] is False
    assert not drain.is_draining()
    again, hello = await open_socket(a_user(79))
    assert hello["type"] == "hello"
    for socket in [*sockets, again]:
        await socket.close()


async def test_only_the_replicas_own_host_may_drain_it(layer: StreamChannelLayer) -> None:
    through_haproxy = {"X-Forwarded-For": "203.0.113.7"}
    assert (await AsyncClient().post("/drain", headers=through_haproxy)).status_code == 404
    assert (await AsyncClient().get("/drain")).status_code == 405
    assert (await AsyncClient().post("/drain?window_secs=-1")).status_code == 400
    assert not drain.is_draining()


async def test_a_relayed_order_drains_only_the_replica_it_names_while_fresh(
    layer: StreamChannelLayer,
) -> None:
    """The cluster view's button reaches dX through another replica with an order signed by
    the SECRET_KEY they share; anything else from outside is refused as if there were no
    such page."""
    outside = {"X-Forwarded-For": "203.0.113.7"}
    other = drain.signed_order("d9", undo=False)  # this process is "unit"
    assert (
        await AsyncClient().post("/drain", headers={**outside, drain.ORDER_HEADER: other})
    ).status_code == 404
    undo_order = drain.signed_order("unit", undo=True)
    assert (
        await AsyncClient().post("/drain", headers={**outside, drain.ORDER_HEADER: undo_order})
    ).status_code == 404  # an undo order does not drain
    forged = drain.signed_order("unit", undo=False)[:-2] + "xx"
    assert (
        await AsyncClient().post("/drain", headers={**outside, drain.ORDER_HEADER: forged})
    ).status_code == 404
    assert not drain.is_draining()
    order = drain.signed_order("unit", undo=False)
    answer = await AsyncClient().post("/drain", headers={**outside, drain.ORDER_HEADER: order})
    assert answer.status_code == 200 and drain.is_draining()
    answer = await AsyncClient().post(
        "/drain?undo=1", headers={**outside, drain.ORDER_HEADER: undo_order}
    )
    assert answer.status_code == 200 and not drain.is_draining()
