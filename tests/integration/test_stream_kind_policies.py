"""What a registered stream kind keeps and tracks (realtime/streams.py), against the real Redis,
layer and consumer: a kind's own history length, a kind that keeps no history (numbered, never
replayed, and said so), and presence on a kind that asks for it (joins, leaves, the API, entries
given back however a socket ends), and none on a kind that does not."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from django.contrib.auth.models import User

from realtime import access, broker, presence, publish, streams
from realtime.layer import StreamChannelLayer
from tests.integration.conftest import Socket, a_user, open_socket
from tests.integration.test_presence import next_presence
from tests.integration.test_server_api import api

pytestmark = pytest.mark.django_db(transaction=True)

# User ids the kinds' checks refuse: a permission taken away.
REVOKED: set[int] = set()


def can_read(user: Any, stream: str) -> bool:
    return user.pk not in REVOKED


@pytest.fixture(autouse=True)
def kinds() -> Iterator[None]:
    """ticket: its last 5 messages, for 10 minutes; tick: no history; desk: presence; shelf:
    none of the options."""
    streams.register(
        "ticket", key=r"[0-9]+", can_read=can_read, history_maxlen=5, history_max_age_secs=600
    )
    streams.register("tick", key=r"[0-9]+", can_read=can_read, history=False)
    streams.register("desk", key=r"[0-9]+", can_read=can_read, presence=True)
    streams.register("shelf", key=r"[0-9]+", can_read=can_read)
    yield
    for kind in ("ticket", "tick", "desk", "shelf"):
        streams.forget(kind)
    REVOKED.clear()


def resume_query(positions: dict[str, Any], *, ephemeral: bool = False) -> str:
    return ("?ephemeral=1&" if ephemeral else "?") + "resume=" + quote(json.dumps(positions))


async def subscribed(user: Any, stream: str, *, ephemeral: bool = False) -> Socket:
    socket, _ = await open_socket(user, "?ephemeral=1" if ephemeral else "")
    await socket.send({"type": "subscribe", "stream": stream})
    assert (await socket.receive())["type"] == "subscribed"
    return socket


async def presence_keys(layer: StreamChannelLayer) -> list[bytes]:
    prefix = broker.current().keys.prefix
    return sorted(
        [
            key
            for shard in range(layer.broker.shard_count)
            async for key in layer.redis(shard).scan_iter(f"{prefix}:{{*}}:presence")
        ]
    )


# --- history ------------------------------------------------------------------------------------


async def test_a_kind_keeping_five_messages_keeps_exactly_the_last_five(
    layer: StreamChannelLayer,
) -> None:
    sent = [await publish.publish(stream="ticket:1", payload=n) for n in range(1, 51)]
    assert [result.seq for result in sent] == list(range(1, 51))
    kept = await broker.current().read("ticket:1", after=0, limit=500)
    # Exact, not approximate: below 1000 entries the broker trims with MAXLEN =, not ~.
    assert [seq for seq, _ in kept] == [46, 47, 48, 49, 50]
    log = broker.current().keys.stream_log("ticket:1")
    assert await layer.redis("ticket:1").xlen(log) == 5
    # Its own age too: the log expires 10 minutes after the last publish, not 24 hours.
    assert 590_000 < await layer.redis("ticket:1").pttl(log) <= 600_000
    # The user streams beside it keep the global length (10 000 in tests too).
    for n in range(1, 51):
        await publish.push_to_user(user_id=901, payload=n)
    assert len(await broker.current().read("user:901", after=0, limit=500)) == 50

    # A client that left at seq 40 is told 41..45 are gone, then gets what was kept.
    epoch = sent[0].epoch
    socket, _ = await open_socket(
        a_user(902), resume_query({"ticket:1": {"epoch": epoch, "seq": 40}})
    )
    frames = await socket.receive_many(6)
    assert frames[0] == {
        "type": "resumed",
        "stream": "ticket:1",
        "recovered": False,
        "reason": "gap",
        "epoch": epoch,
        "seq": 45,
        "replayed": 0,
    }
    assert [(frame["seq"], frame["payload"]) for frame in frames[1:]] == [
        (n, n) for n in range(46, 51)
    ]
    assert await socket.nothing(), "one answer to the resume: no recovered: true after the gap"
    answer = await api("GET", "/api/history?stream=ticket:1&after=0")
    assert answer.status_code == 200, answer.content
    assert [message["seq"] for message in answer.json()["messages"]] == [46, 47, 48, 49, 50]
    await socket.close()


async def test_a_kind_without_history_numbers_its_messages_and_keeps_none(
    layer: StreamChannelLayer,
) -> None:
    live = await subscribed(a_user(911), "tick:1")
    for n in range(1, 4):
        await publish.publish(stream="tick:1", payload=n)
    frames = await live.receive_many(3)
    assert [(frame["seq"], frame["payload"]) for frame in frames] == [(1, 1), (2, 2), (3, 3)]
    epoch = frames[0]["epoch"]
    # Idempotency keys work as on any stream: a retry learns the first publish's seq.
    key = publish.idempotency_key("svc", "tick-once")
    first = await publish.publish(stream="tick:1", payload=4, idempotency=key)
    again = await publish.publish(stream="tick:1", payload=4, idempotency=key)
    assert (first.seq, first.duplicate, again.seq, again.duplicate) == (4, False, 4, True)
    assert (await live.receive())["seq"] == 4
    assert await live.nothing()
    # Nothing kept: no log at all, while the position is.
    assert await broker.current().read("tick:1", after=0) == []
    assert not await layer.redis("tick:1").exists(broker.current().keys.stream_log("tick:1"))
    assert (await broker.current().heads(["tick:1"]))["tick:1"].seq == 4

    # A client that left at seq 1 is told it lost 2..4, never handed a silent gap.
    back, hello = await open_socket(
        a_user(911), resume_query({"tick:1": {"epoch": epoch, "seq": 1}})
    )
    assert hello["streams"]["tick:1"] == {"epoch": epoch, "seq": 1}
    assert await back.receive() == {
        "type": "resumed",
        "stream": "tick:1",
        "recovered": False,
        "reason": "gap",
        "epoch": epoch,
        "seq": 4,
        "replayed": 0,
    }
    assert await back.nothing()
    # Live messages go on from there, in order, to both.
    await publish.publish(stream="tick:1", payload=5)
    assert (await back.receive())["seq"] == 5
    assert (await live.receive())["seq"] == 5
    # One that missed nothing is told just that.
    current, _ = await open_socket(
        a_user(912), resume_query({"tick:1": {"epoch": epoch, "seq": 5}})
    )
    resumed = await current.receive()
    assert (resumed["recovered"], resumed["seq"], resumed["replayed"]) == (True, 5, 0)

    answer = await api("GET", "/api/history?stream=tick:1")
    assert (answer.status_code, answer.json()["error"]) == (400, "no_history")
    assert "history=False" in answer.json()["message"]
    for socket in (live, back, current):
        await socket.close()


def _unheard_group_beside(stream: str) -> str:
    """A group no socket reads, on `stream`'s shard (where the broker may publish it)."""
    the_broker = broker.current()
    names = (f"nobody.listens{n}" for n in range(1000))
    return next(
        g
        for g in names
        if the_broker.shard_of(g.replace(".", ":", 1)) == the_broker.shard_of(stream)
    )


async def test_a_gap_in_a_stream_without_history_is_reported_not_repaired_forever(
    layer: StreamChannelLayer,
) -> None:
    """A frame lost on the way (the queue dropped it) cannot be fetched back: the socket is told
    once, and the next frame is delivered."""
    socket = await subscribed(a_user(921), "tick:2")
    await publish.publish(stream="tick:2", payload=1)
    epoch = (await socket.receive())["epoch"]
    await broker.current().publish(  # numbered and stored by the script, its PUBLISH unheard
        stream="tick:2",
        group=_unheard_group_beside("tick:2"),
        body=json.dumps({"type": "message", "stream": "tick:2", "payload": 2}),
        message_id="lost",
        idempotency=None,
        policy=broker.StreamPolicy(max_len=0, max_age_ms=60_000, idempotency_ttl_secs=60),
    )
    await publish.publish(stream="tick:2", payload=3)
    gap, third = await socket.receive_many(2)
    assert (gap["type"], gap["recovered"], gap["reason"], gap["seq"]) == (
        "resumed",
        False,
        "gap",
        2,
    )
    assert (third["seq"], third["epoch"], third["payload"]) == (3, epoch, 3)
    assert await socket.nothing()
    await socket.close()


# --- presence -----------------------------------------------------------------------------------


async def test_a_kind_with_presence_announces_joins_and_leaves_and_lists_who_is_there(
    layer: StreamChannelLayer,
) -> None:
    witness = await subscribed(a_user(931, "wit"), "desk:1", ephemeral=True)
    assert (await next_presence(witness, "wit931"))["event"] == "join"
    alice = await subscribed(a_user(932), "desk:1", ephemeral=True)
    joined = await next_presence(witness, "alice932")
    assert (joined["event"], joined["user_id"], joined["stream"]) == ("join", 932, "desk:1")
    assert await presence.stream_online(stream="desk:1") == [931, 932]

    answer = await api("GET", "/api/presence?stream=desk:1")
    assert answer.status_code == 200, answer.content
    assert answer.json()["users"] == [
        {"id": 931, "username": "wit931"},
        {"id": 932, "username": "alice932"},
    ]
    # The entries live beside the stream's other keys, under its hash tag.
    key = broker.current().keys.presence_stream("desk:1")
    assert key.endswith(":{desk:1}:presence") and await layer.redis("desk:1").zcard(key) == 2

    await alice.close()
    left = await next_presence(witness, "alice932")
    assert (left["event"], left["stream"]) == ("leave", "desk:1")
    assert await presence.stream_online(stream="desk:1") == [931]
    assert await witness.nothing()
    await witness.close()
    assert await presence.stream_online(stream="desk:1") == []
    assert await layer.redis("desk:1").zcard(key) == 0


async def test_presence_on_a_kind_ends_however_the_socket_leaves_the_stream(
    layer: StreamChannelLayer,
) -> None:
    """Unsubscribe, access taken away, a socket that came in by ?resume=, then closed: each
    gives its entry back (Session.leave / release, the same path as the chat's rooms)."""
    watcher_user = await User.objects.acreate(username="desk-watcher")
    bob = await User.objects.acreate(username="desk-bob")
    watcher = await subscribed(watcher_user, "desk:2", ephemeral=True)
    await next_presence(watcher, "desk-watcher")

    socket = await subscribed(bob, "desk:2", ephemeral=True)
    assert (await next_presence(watcher, "desk-bob"))["event"] == "join"
    await socket.send({"type": "unsubscribe", "stream": "desk:2"})
    assert (await next_presence(watcher, "desk-bob"))["event"] == "leave"

    await socket.send({"type": "subscribe", "stream": "desk:2"})
    assert (await next_presence(watcher, "desk-bob"))["event"] == "join"
    REVOKED.add(bob.pk)
    await access.recheck(streams=["desk:2"])
    assert (await next_presence(watcher, "desk-bob"))["event"] == "leave"
    assert await presence.stream_online(stream="desk:2") == [watcher_user.pk]
    await socket.close()
    REVOKED.clear()

    positions = {"desk:2": {"epoch": None, "seq": 0}, "desk:3": {"epoch": None, "seq": 0}}
    resumed, hello = await open_socket(bob, resume_query(positions, ephemeral=True))
    assert {"desk:2", "desk:3"} <= set(hello["streams"])
    assert (await next_presence(watcher, "desk-bob", timeout=5))["event"] == "join"
    assert await presence.stream_online(stream="desk:3") == [bob.pk]
    await resumed.close()
    assert (await next_presence(watcher, "desk-bob"))["event"] == "leave"
    for stream in ("desk:2", "desk:3"):
        assert bob.pk not in await presence.stream_online(stream=stream)
    await watcher.close()
    assert await presence_keys(layer) == []


async def test_a_kind_without_presence_sends_no_presence_frames(
    layer: StreamChannelLayer,
) -> None:
    witness = await subscribed(a_user(941), "shelf:1", ephemeral=True)
    other = await subscribed(a_user(942), "shelf:1", ephemeral=True)
    await other.close()
    await publish.publish(stream="shelf:1", payload="only this")
    frame = await witness.receive()
    assert (frame["type"], frame["payload"]) == ("message", "only this")
    assert await witness.nothing(), "no join, no leave"
    assert await presence_keys(layer) == []
    answer = await api("GET", "/api/presence?stream=shelf:1")
    assert (answer.status_code, answer.json()["error"]) == (400, "no_presence")
    for stream in ("user:941", "broadcast"):  # the core's kinds keep none either
        answer = await api("GET", f"/api/presence?stream={stream}")
        assert (answer.status_code, answer.json()["error"]) == (400, "no_presence")
    answer = await api("GET", "/api/presence?stream=nope:1")
    assert (answer.status_code, answer.json()["error"]) == (400, "bad_stream")
    await witness.close()
