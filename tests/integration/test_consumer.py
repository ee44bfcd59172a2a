"""The consumer against a real Redis: ordering, replay, epochs, acks, idempotent publishes."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import quote

import pytest
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser

from chat.models import Room
from realtime import broker, publish
from realtime.consumers import RealtimeConsumer
from realtime.delivery.marks import delivered_marks
from realtime.layer import StreamChannelLayer
from tests.integration.conftest import a_user, memberships_written, open_socket

pytestmark = pytest.mark.django_db(transaction=True)


def resume_query(positions: dict) -> str:  # type: ignore[type-arg]
    return "?resume=" + quote(json.dumps(positions))


async def test_hello_names_replica_user_and_stream_positions(layer: StreamChannelLayer) -> None:
    await publish.push_to_user(user_id=7, payload="before")
    socket, hello = await open_socket(a_user(7))
    assert hello["type"] == "hello" and hello["replica"] == "unit" and hello["user"] == "alice7"
    assert hello["streams"]["user:7"]["seq"] == 1
    assert set(hello["streams"]) == {"user:7", "broadcast"}
    assert await socket.nothing()  # what came before the connection is not replayed unasked
    await socket.close()


async def test_anonymous_socket_is_closed_with_4401(layer: StreamChannelLayer) -> None:
    communicator = WebsocketCommunicator(RealtimeConsumer.as_asgi(), "/ws/")
    communicator.scope["user"] = AnonymousUser()
    await communicator.connect()
    assert json.loads(await communicator.receive_from())["code"] == "unauthorized"
    assert await communicator.receive_output(timeout=2) == {"type": "websocket.close", "code": 4401}
    await communicator.disconnect()


async def test_pushes_arrive_numbered_in_order_and_only_to_their_user(
    layer: StreamChannelLayer,
) -> None:
    alice, _ = await open_socket(a_user(1))
    bob, _ = await open_socket(a_user(2, "bob"))
    await memberships_written(layer)
    for n in range(5):
        result = await publish.push_to_user(user_id=2, payload={"n": n})
        assert result.seq == n + 1 and result.sockets == 1 and result.replicas == 1
    frames = await bob.receive_many(5)
    assert [(f["seq"], f["payload"]["n"]) for f in frames] == [(i + 1, i) for i in range(5)]
    assert {f["stream"] for f in frames} == {"user:2"} and len({f["epoch"] for f in frames}) == 1
    assert await alice.nothing()
    await alice.close()
    await bob.close()


async def test_echo_ping_and_bad_frames(layer: StreamChannelLayer) -> None:
    socket, _ = await open_socket(a_user(1))
    await socket.send({"type": "echo", "id": "e", "payload": {"a": 1}})
    assert await socket.receive() == {
        "type": "echo",
        "replica": "unit",
        "payload": {"a": 1},
        "id": "e",
    }
    await socket.communicator.send_to(text_data="{{{")
    await socket.communicator.send_to(bytes_data=b"\x00")
    await socket.send({"type": "nope"})
    await socket.send({"type": "ack", "stream": "user:1", "seq": "x"})
    await socket.send({"type": "publish", "stream": "room:x", "payload": 1})
    codes = [f["code"] for f in await socket.receive_many(5)]
    assert codes == ["bad_json", "binary_not_supported", "unknown_type", "bad_ack", "missing_id"]
    await socket.send({"type": "ping"})
    assert (await socket.receive())["type"] == "pong"
    await socket.close()


async def test_resume_replays_missed_messages_in_order_before_live_ones(
    layer: StreamChannelLayer,
) -> None:
    first, _ = await open_socket(a_user(3))
    await publish.push_to_user(user_id=3, payload=1)
    seen = await first.receive()
    await first.close()
    for n in range(2, 6):
        await publish.push_to_user(user_id=3, payload=n)
    query = resume_query({"user:3": {"epoch": seen["epoch"], "seq": seen["seq"]}})
    again, _ = await open_socket(a_user(3), query)
    # Published while the resume runs: the replay reads the head either before it (2..5 replayed,
    # then 6 live) or after it (2..6 replayed); either way once, in order, then `resumed`
    # naming the last replayed seq, with nothing live before it.
    await publish.push_to_user(user_id=3, payload=6)
    frames = await again.receive_many(6)
    messages = [f for f in frames if f["type"] == "push"]
    assert [(f["payload"], f["seq"]) for f in messages] == [(n, n) for n in range(2, 7)]
    resumed_at = next(i for i, f in enumerate(frames) if f["type"] == "resumed")
    assert resumed_at in (4, 5)
    assert frames[resumed_at] == {
        "type": "resumed",
        "stream": "user:3",
        "recovered": True,
        "reason": "resume",
        "epoch": seen["epoch"],
        "seq": resumed_at + 1,
        "replayed": resumed_at,
    }
    assert await again.nothing()
    await again.close()


async def test_resume_from_another_epoch_answers_recovered_false(layer: StreamChannelLayer) -> None:
    await publish.push_to_user(user_id=4, payload="x")
    query = resume_query({"user:4": {"epoch": "lost-epoch", "seq": 9}})
    socket, _ = await open_socket(a_user(4), query)
    frames = await socket.receive_many(2)
    assert frames[0]["type"] == "resumed" and frames[0]["recovered"] is False
    assert frames[0]["reason"] == "epoch"
    assert frames[1]["payload"] == "x" and frames[1]["seq"] == 1  # the new epoch, from its start
    await socket.close()


async def test_bad_resumes_get_errors_and_the_rest_works(layer: StreamChannelLayer) -> None:
    await Room.objects.acreate(slug="secret", title="Secret", is_private=True)
    await publish.push_to_user(user_id=5, payload="a")
    head = (await broker.current().heads(["user:5"]))["user:5"]
    query = resume_query(
        {
            "user:6": {"epoch": None, "seq": 0},  # someone else's stream
            "room:secret": {"epoch": None, "seq": 0},  # a private room: told as if it were missing
            "room:nowhere": {"epoch": None, "seq": 0},
            "user:5": {"epoch": head.epoch, "seq": 40},  # ahead of the head (1)
        }
    )
    socket, hello = await open_socket(a_user(5), query)
    assert set(hello["streams"]) == {"user:5", "broadcast"}
    frames = await socket.receive_many(5)
    codes = [f.get("code") for f in frames if f["type"] == "error"]
    assert codes == ["forbidden_stream", "unknown_room", "unknown_room", "seq_ahead"]
    private, missing = (f for f in frames if f.get("code") == "unknown_room")
    assert private["message"].replace("secret", "nowhere") == missing["message"]
    assert (
        frames[-1]["type"] == "resumed"
        and frames[-1]["recovered"] is False
        and frames[-1]["seq"] == 1
    )
    await publish.push_to_user(user_id=5, payload="b")
    assert (await socket.receive())["seq"] == 2
    await socket.send(
        {"type": "resume", "streams": {"user:6": {"epoch": None, "seq": 0}}, "id": "r"}
    )
    assert (await socket.receive())["code"] == "forbidden_stream"
    await socket.close()


async def test_subscribe_to_rooms_and_publish_idempotently(layer: StreamChannelLayer) -> None:
    await Room.objects.acreate(slug="lobby", title="Lobby")
    alice, _ = await open_socket(a_user(8))
    bob, _ = await open_socket(a_user(9, "bob"))
    for socket in (alice, bob):
        await socket.send({"type": "subscribe", "stream": "room:lobby"})
        assert await socket.receive() == {
            "type": "subscribed",
            "stream": "room:lobby",
            "epoch": None,
            "seq": 0,
        }
    message = {"type": "publish", "id": "m-1", "stream": "room:lobby", "payload": {"text": "hi"}}
    await alice.send(message)
    frames = await alice.receive_many(2)
    ack = next(f for f in frames if f["type"] == "ack")
    assert (ack["id"], ack["seq"], ack["duplicate"]) == ("m-1", 1, False)
    delivered = next(f for f in frames if f["type"] == "message")
    assert delivered["sender"] == "alice8" and delivered["payload"] == {"text": "hi"}
    await alice.send(message)  # a resend after a lost ack
    again = await alice.receive()
    assert (again["type"], again["seq"], again["duplicate"]) == ("ack", 1, True)
    assert [f["seq"] for f in await bob.receive_many(1)] == [1]
    assert await bob.nothing() and await alice.nothing()
    assert len(await broker.current().read("room:lobby", after=0)) == 1
    await alice.send({"type": "publish", "id": "m-2", "stream": "user:9", "payload": 1})
    assert (await alice.receive())["code"] == "forbidden_stream"
    await alice.send({"type": "unsubscribe", "stream": "room:lobby"})
    assert await alice.receive() == {"type": "unsubscribed", "stream": "room:lobby"}
    await bob.send({"type": "publish", "id": "m-3", "stream": "room:lobby", "payload": 2})
    assert (await bob.receive_many(2))[0]["type"] in ("ack", "message")
    assert await alice.nothing()
    await alice.close()
    await bob.close()


async def test_a_dropped_frame_is_repaired_from_history(layer: StreamChannelLayer) -> None:
    socket, _ = await open_socket(a_user(10))
    await publish.push_to_user(user_id=10, payload=1)
    # Seq 2 is stored but never published, as when a pub/sub message is lost.
    client = layer.redis("user:10")
    meta, log = (
        broker.current().keys.stream_meta("user:10"),
        broker.current().keys.stream_log("user:10"),
    )
    epoch = (await client.hget(meta, "epoch")).decode()
    await client.hincrby(meta, "seq", 1)
    lost = json.dumps({"seq": 2, "epoch": epoch, "type": "push", "stream": "user:10", "payload": 2})
    await client.xadd(log, {"f": lost, "t": 0}, id="2-0")
    await publish.push_to_user(user_id=10, payload=3)
    frames = await socket.receive_many(3)
    assert [(f["seq"], f["payload"]) for f in frames] == [(1, 1), (2, 2), (3, 3)]
    await socket.close()


async def test_with_a_queue_of_one_frame_nothing_is_lost_or_reordered(
    layer: StreamChannelLayer, settings: object
) -> None:
    settings.DELIVERY_QUEUE_MAX_FRAMES = 1  # type: ignore[attr-defined]
    socket, _ = await open_socket(a_user(11))
    for n in range(1, 301):
        await publish.broadcast(payload=n)
    frames = await socket.receive_many(300, timeout=10)
    assert [f["payload"] for f in frames] == list(range(1, 301))
    assert [f["seq"] for f in frames] == list(range(1, 301))
    assert await socket.nothing()
    await socket.close()


async def test_acks_and_deliveries_fill_the_ledger(layer: StreamChannelLayer) -> None:
    socket, _ = await open_socket(a_user(12))
    for n in range(3):
        await publish.push_to_user(user_id=12, payload=n)
    frames = await socket.receive_many(3)
    await socket.send({"type": "ack", "stream": "user:12", "seq": 2})
    await socket.send({"type": "ack", "stream": "user:12", "seq": 9})  # never delivered
    assert (await socket.receive())["code"] == "bad_ack"
    ledger = await broker.current().ledger("user:12")
    assert ledger["acked"] == 2 and ledger["seq"] == 3
    states = {row["seq"]: row["state"] for row in ledger["messages"]}
    assert states[1] == states[2] == "acknowledged"
    assert frames[2]["seq"] == 3
    await socket.close()


async def test_delivered_marks_of_many_streams_are_written_together(
    layer: StreamChannelLayer, monkeypatch: pytest.MonkeyPatch
) -> None:
    round_trips: list[int] = []
    all_written = asyncio.Event()
    mark_many = broker.current().mark_many

    async def counted(marks: list[tuple[str, str, str, int]]) -> None:
        round_trips.append(len(marks))
        await mark_many(marks)
        if sum(round_trips) >= 150:
            all_written.set()

    monkeypatch.setattr(broker.current(), "mark_many", counted)
    epochs = {}
    for user_id in range(500, 650):
        epochs[user_id] = (await publish.push_to_user(user_id=user_id, payload=1)).epoch
    marks = delivered_marks()
    for user_id in range(500, 650):
        marks.note(f"user:{user_id}", epochs[user_id], 1)
        marks.note(f"user:{user_id}", epochs[user_id], 0)  # a later, lower note never lowers it

    await asyncio.wait_for(all_written.wait(), timeout=5)
    ledgers = [await broker.current().ledger(f"user:{u}", count=1) for u in range(500, 650)]
    assert all(ledger["delivered"] == 1 for ledger in ledgers)
    assert round_trips == [100, 50], "150 streams in two script calls, not 150"
