"""A hostile logged-in client against the real consumer on a real Redis. Each attack gets a clear
error (or a limit with a clear error), the socket's resources are given back however it ends,
and a witness socket on the same process keeps receiving after every attempt."""

from __future__ import annotations

import asyncio
import json
import threading
from datetime import timedelta
from typing import Any
from urllib.parse import quote

import pytest
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User
from django.contrib.sessions.models import Session
from django.test import AsyncClient
from django.utils import timezone
from pytest_django.fixtures import Settings

from chat.models import Room
from realtime import broker, presence, publish, session_watch
from realtime.consumers import RealtimeConsumer
from realtime.delivery import inbound
from realtime.delivery.inbound import Inbound
from realtime.layer import StreamChannelLayer
from realtime.stats import replica_stats
from tests.integration.conftest import Socket, a_user, eventually, open_socket

pytestmark = pytest.mark.django_db(transaction=True)

WITNESS_ID = 900


async def witness_hears(witness: Socket, n: int) -> None:
    """The bystander on the same process still gets its pushes, in order."""
    result = await publish.push_to_user(user_id=WITNESS_ID, payload={"witness": n})
    frame = await witness.receive()
    assert (frame["payload"], frame["seq"]) == ({"witness": n}, result.seq)


async def frames_until_closed(
    socket: Socket, wait_secs: float = 5
) -> tuple[list[dict[str, Any]], int]:
    """Every frame up to the server's close, and its code; then the client side closes too, so
    the consumer ends (and gives back what it held) before the test's layer is flushed."""
    frames = []
    while True:
        output = await socket.communicator.receive_output(timeout=wait_secs)
        if output["type"] == "websocket.close":
            await socket.close()
            return frames, output.get("code", 1000)
        frames.append(json.loads(output["text"]))


async def test_crashing_frames_get_errors_the_socket_stays_open_and_the_witness_hears(
    layer: StreamChannelLayer,
) -> None:
    witness, _ = await open_socket(a_user(WITNESS_ID, "witness"))
    rogue, _ = await open_socket(a_user(901, "rogue"))
    attacks = [
        ("[" * 5000, "bad_json"),
        ('{"type": "echo", "id": "\\ud800", "payload": 1}', "bad_json"),
        ('{"type": "echo", "payload": "\\ud800"}', "bad_json"),
        ('{"type": "echo", "payload": NaN}', "bad_json"),
        (json.dumps({"type": "subscribe", "stream": "user:" + "1" * 5000}), "bad_stream"),
        (json.dumps({"type": "subscribe", "stream": "room:lobby\n"}), "bad_stream"),
        (
            json.dumps(
                {"type": "publish", "id": "p", "stream": "user:" + "1" * 5000, "payload": 1}
            ),
            "bad_stream",
        ),
        (
            json.dumps(
                {"type": "resume", "streams": {"user:" + "1" * 5000: {"epoch": None, "seq": 0}}}
            ),
            "bad_stream",
        ),
    ]
    for n, (text, code) in enumerate(attacks):
        await rogue.communicator.send_to(text_data=text)
        error = await rogue.receive()
        assert (error["type"], error["code"]) == ("error", code), text[:80]
        assert error["message"]
        await witness_hears(witness, n)
    await rogue.send({"type": "echo", "id": "e", "payload": "still here"})
    assert (await rogue.receive())["payload"] == "still here"
    await rogue.close()
    await witness.close()


async def test_an_unexpected_exception_answers_internal_error_and_keeps_the_socket(
    layer: StreamChannelLayer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(self: Inbound, frame: Any) -> None:
        raise RuntimeError("a bug in a handler")

    monkeypatch.setitem(inbound.HANDLERS, "ping", broken)
    witness, _ = await open_socket(a_user(WITNESS_ID, "witness"))
    socket, _ = await open_socket(a_user(902))
    await socket.send({"type": "ping", "id": "p1"})
    error = await socket.receive()
    assert (error["code"], error["ref"]) == ("internal_error", "p1")
    await socket.send({"type": "echo", "id": "e1", "payload": 1})
    assert (await socket.receive())["type"] == "echo"
    await witness_hears(witness, 1)
    await socket.close()
    await witness.close()


async def _online_in(slug: str, user_ids: list[int]) -> bool:
    return await presence.room_online(slug=slug) == user_ids


async def test_a_consumer_that_crashes_still_gives_back_its_count_presence_and_session_watch(
    layer: StreamChannelLayer, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    await Room.objects.acreate(slug="crashpad", title="Crash pad")
    user = await User.objects.acreate(username="crasher")
    client = AsyncClient()
    await client.aforce_login(user)
    before = replica_stats.open_connections
    communicator = WebsocketCommunicator(RealtimeConsumer.as_asgi(), "/ws/")
    communicator.scope["user"] = user
    communicator.scope["session_key"] = client.session.session_key
    assert (await communicator.connect())[0]
    socket = Socket(communicator)
    await socket.receive()  # hello
    await socket.send({"type": "subscribe", "stream": "room:crashpad"})
    assert (await socket.receive())["type"] == "subscribed"
    await eventually(lambda: _online_in("crashpad", [user.pk]))  # written after `subscribed`
    assert replica_stats.open_connections == before + 1
    assert session_watch.watched_count() == 1

    async def crash(self: Inbound, text: Any) -> None:
        raise RuntimeError("outside the per-frame guard")

    monkeypatch.setattr(Inbound, "receive", crash)
    await socket.send({"type": "ping"})
    with pytest.raises(RuntimeError):
        await communicator.wait(timeout=5)  # the application ended with the exception
    assert replica_stats.open_connections == before
    assert await presence.room_online(slug="crashpad") == []
    assert (await presence.user_statuses(user_ids=[user.pk]))[user.pk].online is False
    assert session_watch.watched_count() == 0
    assert layer._layer().hub.sinks == {} and layer._layer().hub.groups == {}


async def test_past_the_frame_rate_frames_are_refused_then_the_socket_is_closed_with_1008(
    layer: StreamChannelLayer, settings: Settings
) -> None:
    settings.SOCKET_FRAMES_PER_SEC, settings.SOCKET_FRAME_BURST = 1, 5
    settings.SOCKET_RATE_LIMIT_STRIKES = 3
    witness, _ = await open_socket(a_user(WITNESS_ID, "witness"))
    flooder, _ = await open_socket(a_user(903))
    for n in range(12):
        await flooder.send({"type": "ping", "id": f"p{n}"})
    frames, code = await frames_until_closed(flooder)
    assert code == 1008
    assert [f["type"] for f in frames[:5]] == ["pong"] * 5  # the burst
    refused = [f for f in frames[5:] if f["type"] == "error"]
    assert [f["code"] for f in refused] == ["rate_limited"] * 4  # 3 strikes, then the close
    assert refused[0]["ref"] == "p5" and refused[0]["retry_after_ms"] == 1000
    assert "Closing" in refused[-1]["message"]
    await witness_hears(witness, 1)
    await witness.close()


async def test_publishes_past_the_socket_budget_are_refused_and_not_published(
    layer: StreamChannelLayer, settings: Settings
) -> None:
    settings.SOCKET_PUBLISH_BURST, settings.SOCKET_PUBLISHES_PER_SEC = 2, 0.1
    await Room.objects.acreate(slug="budget", title="Budget")
    socket, _ = await open_socket(a_user(904, staff=True))
    await socket.send({"type": "subscribe", "stream": "room:budget"})
    await socket.receive()
    for n in range(3):
        await socket.send({"type": "publish", "id": f"m{n}", "stream": "room:budget", "payload": n})
    frames = await socket.receive_many(5)  # 2 acks, 2 messages, 1 error
    errors = [f for f in frames if f["type"] == "error"]
    assert [(e["code"], e["ref"]) for e in errors] == [("rate_limited", "m2")]
    assert errors[0]["retry_after_ms"] == 10_000
    assert [seq for seq, _ in await broker.current().read("room:budget", after=0)] == [1, 2]
    await socket.close()


async def test_typing_frames_past_the_throttle_are_not_fanned_out(
    layer: StreamChannelLayer, settings: Settings
) -> None:
    settings.SOCKET_TYPING_BURST, settings.SOCKET_TYPING_PER_SEC = 3, 0.01
    await Room.objects.acreate(slug="keys", title="Keys")
    typist, _ = await open_socket(await User.objects.acreate(username="typist"))
    listener, _ = await open_socket(await User.objects.acreate(username="listener"), "?ephemeral=1")
    for socket in (typist, listener):
        await socket.send({"type": "subscribe", "stream": "room:keys"})
        assert (await socket.receive())["type"] == "subscribed"
    for n in range(30):
        await typist.send(
            {"type": "publish", "id": f"t{n}", "stream": "room:keys", "payload": {"kind": "typing"}}
        )
    answers = await typist.receive_many(30)
    assert [a["type"] for a in answers].count("ack") == 3
    assert {a["code"] for a in answers if a["type"] == "error"} == {"rate_limited"}
    heard = []
    while not await listener.nothing(timeout=0.5):
        heard.append(await listener.receive())
    assert [f["type"] for f in heard if f["type"] == "typing"] == ["typing"] * 3
    await typist.close()
    await listener.close()


async def test_a_socket_holds_at_most_max_streams(
    layer: StreamChannelLayer, settings: Settings
) -> None:
    settings.MAX_STREAMS_PER_SOCKET = 4
    for slug in ("s1", "s2", "s3", "s4"):
        await Room.objects.acreate(slug=slug, title=slug)
    socket, hello = await open_socket(a_user(905))
    assert len(hello["streams"]) == 2  # its user stream and broadcast
    for slug in ("s1", "s2"):
        await socket.send({"type": "subscribe", "stream": f"room:{slug}"})
        assert (await socket.receive())["type"] == "subscribed"
    await socket.send({"type": "subscribe", "stream": "room:s3", "id": "x"})
    error = await socket.receive()
    assert (error["code"], error["ref"]) == ("too_many_streams", "x")
    await socket.send({"type": "unsubscribe", "stream": "room:s1"})
    assert (await socket.receive())["type"] == "unsubscribed"
    await socket.send({"type": "subscribe", "stream": "room:s3"})
    assert (await socket.receive())["type"] == "subscribed"
    await socket.close()
    # The same bound on the streams a reconnect names in its URL.
    query = "?resume=" + quote(
        json.dumps({f"room:{s}": {"epoch": None, "seq": 0} for s in ("s1", "s2", "s3", "s4")})
    )
    socket, hello = await open_socket(a_user(905), query)
    assert len(hello["streams"]) == 4
    codes = [f.get("code") for f in await socket.receive_many(2)]
    assert codes == ["too_many_streams", "too_many_streams"]
    await socket.close()


async def test_a_user_may_open_at_most_max_sockets_and_a_closed_one_frees_its_place(
    layer: StreamChannelLayer, settings: Settings
) -> None:
    settings.MAX_SOCKETS_PER_USER = 2
    witness, _ = await open_socket(a_user(WITNESS_ID, "witness"))
    first, _ = await open_socket(a_user(906))
    second, _ = await open_socket(a_user(906))
    communicator = WebsocketCommunicator(RealtimeConsumer.as_asgi(), "/ws/")
    communicator.scope["user"] = a_user(906)
    await communicator.connect()
    frames, code = await frames_until_closed(Socket(communicator))
    assert code == 4429 and [f["code"] for f in frames] == ["too_many_sockets"]
    await witness_hears(witness, 1)
    await first.close()
    third, hello = await open_socket(a_user(906))
    assert hello["type"] == "hello"
    for socket in (second, third, witness):
        await socket.close()


async def test_the_same_publish_id_on_two_streams_is_two_messages(
    layer: StreamChannelLayer,
) -> None:
    for slug in ("one", "two"):
        await Room.objects.acreate(slug=slug, title=slug)
    socket, _ = await open_socket(a_user(907))
    for slug in ("one", "two"):
        await socket.send(
            {"type": "publish", "id": "same", "stream": f"room:{slug}", "payload": slug}
        )
        ack = await socket.receive()
        assert (ack["type"], ack["duplicate"], ack["seq"]) == ("ack", False, 1)
    assert len(await broker.current().read("room:two", after=0)) == 1
    await socket.close()


async def test_chat_lines_past_the_per_minute_limit_are_refused(
    layer: StreamChannelLayer, settings: Settings
) -> None:
    settings.CHAT_LINES_PER_MIN = 2
    await Room.objects.acreate(slug="chatty", title="Chatty")
    user = await User.objects.acreate(username="chatty")
    socket, _ = await open_socket(user)
    for n in range(3):
        await socket.send(
            {
                "type": "publish",
                "id": f"c{n}",
                "stream": "room:chatty",
                "payload": {"kind": "chat", "text": f"line {n}"},
            }
        )
    answers = [await socket.receive() for _ in range(3)]
    assert [a["type"] for a in answers] == ["ack", "ack", "error"]
    assert answers[2]["code"] == "rate_limited" and "2 chat lines a minute" in answers[2]["message"]
    await socket.close()


async def logged_in_socket(user: User) -> tuple[Socket, AsyncClient]:
    client = AsyncClient()
    await client.aforce_login(user)
    communicator = WebsocketCommunicator(RealtimeConsumer.as_asgi(), "/ws/")
    communicator.scope["user"] = user
    communicator.scope["session_key"] = client.session.session_key
    assert (await communicator.connect())[0]
    socket = Socket(communicator)
    assert (await socket.receive())["type"] == "hello"
    return socket, client


async def test_logout_closes_the_sockets_of_that_session_only(layer: StreamChannelLayer) -> None:
    user = await User.objects.acreate(username="leaver")
    leaving, client = await logged_in_socket(user)
    staying, _ = await logged_in_socket(user)  # another browser, another session
    await client.alogout()
    frames, code = await frames_until_closed(leaving)
    assert code == 4401 and [f["code"] for f in frames] == ["session_ended"]
    await publish.push_to_user(user_id=user.pk, payload="still for the other session")
    assert (await staying.receive())["payload"] == "still for the other session"
    await staying.close()


async def test_a_deleted_or_expired_session_closes_its_socket(layer: StreamChannelLayer) -> None:
    user = await User.objects.acreate(username="expiring")
    deleted, client = await logged_in_socket(user)
    await (await Session.objects.aget(pk=client.session.session_key)).adelete()  # as the admin does
    assert (await frames_until_closed(deleted))[1] == 4401
    expired, client = await logged_in_socket(user)
    await Session.objects.filter(pk=client.session.session_key).aupdate(
        expire_date=timezone.now() - timedelta(seconds=1)
    )
    await session_watch.check_now()  # what the SESSION_CHECK_SECS timer runs
    frames, code = await frames_until_closed(expired)
    assert code == 4401 and frames[-1]["code"] == "session_ended"


async def test_a_replay_reads_history_in_batches_bounded_by_bytes_and_is_paced(
    layer: StreamChannelLayer, settings: Settings
) -> None:
    settings.REPLAY_BATCH_BYTES = 16 * 1024
    settings.SOCKET_REPLAY_BYTES_PER_MIN = 60 * 1024  # 1 KiB a second after the first minute's
    await Room.objects.acreate(slug="heavy", title="Heavy")
    for n in range(32):
        await publish.publish(stream="room:heavy", payload={"n": n, "pad": "x" * 2000})
    replica_stats.replay_bytes_in_flight_max = 0
    socket, _ = await open_socket(a_user(908))
    await socket.send(
        {"type": "subscribe", "stream": "room:heavy", "from": {"epoch": None, "seq": 0}}
    )
    frames = await socket.receive_many(34, timeout=15)
    messages = [f for f in frames if f["type"] == "message"]
    assert [m["payload"]["n"] for m in messages] == list(range(32))  # all, once, in order
    told = [f for f in frames if f["type"] == "error"]
    assert [f["code"] for f in told] == ["replay_limited"]  # told once
    assert frames[-1]["type"] == "resumed" and frames[-1]["replayed"] == 32
    assert 0 < replica_stats.replay_bytes_in_flight_max <= 16 * 1024 + 2200
    assert replica_stats.replay_bytes_in_flight == 0
    await socket.close()


async def test_streams_a_user_may_not_read_are_refused_on_every_path(
    layer: StreamChannelLayer,
) -> None:
    await Room.objects.acreate(slug="vault", title="Vault", is_private=True)
    witness, _ = await open_socket(a_user(WITNESS_ID, "witness"))
    socket, _ = await open_socket(a_user(909))
    for stream in (f"user:{WITNESS_ID}", "room:vault", "ops"):
        for frame in (
            {"type": "subscribe", "stream": stream},
            {"type": "subscribe", "stream": stream, "from": {"epoch": None, "seq": 0}},
            {"type": "resume", "streams": {stream: {"epoch": None, "seq": 0}}},
            {"type": "publish", "id": "x", "stream": stream, "payload": 1},
        ):
            await socket.send(frame)
            error = await socket.receive()
            assert error["code"] in ("forbidden_stream", "unknown_room"), (frame, error)
        await witness_hears(witness, len(stream))
    assert await socket.nothing()
    await asyncio.gather(socket.close(), witness.close())


async def test_a_socket_that_connects_while_sessions_are_checked_is_not_closed(
    layer: StreamChannelLayer, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = await User.objects.acreate(username="latecomer")
    first, _ = await logged_in_socket(user)

    class Latecomer:
        ended = False

        async def session_ended(self) -> None:
            self.ended = True

    latecomer = Latecomer()
    loop = asyncio.get_running_loop()
    real = session_watch.live_session_keys

    def query_during_which_a_socket_connects(*, keys: Any) -> set[str]:
        registered = threading.Event()

        def connect() -> None:  # on the event loop, while this query runs in its thread
            session_watch.watch(latecomer, "a-session-this-query-never-saw")
            registered.set()

        loop.call_soon_threadsafe(connect)
        assert registered.wait(timeout=5)
        return real(keys=keys)

    monkeypatch.setattr(session_watch, "live_session_keys", query_during_which_a_socket_connects)
    await session_watch.check_now()
    assert not latecomer.ended  # its session is judged by the next check, not by this one
    assert await first.nothing()
    session_watch.unwatch(latecomer)
    await first.close()
