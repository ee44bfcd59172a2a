"""The publish port (realtime/transport/publish_port.py) on a real socket and a real Redis: the
token publish API answered there, requests kept alive and pipelined, and what it refuses, each
with a clear answer; and the push API's username cache (realtime/user_directory.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth.models import User

from devtools.cluster import free_port
from realtime import api, user_directory
from realtime.api import MAX_BODY_BYTES
from realtime.layer import StreamChannelLayer
from realtime.services import api_token_issue
from realtime.transport import publish_port
from tests.integration.conftest import eventually, open_socket

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
async def port(layer: StreamChannelLayer) -> AsyncIterator[int]:
    api._token_names.clear()
    user_directory.clear()
    number = free_port()
    server = await publish_port.serve(f"127.0.0.1:{number}", MAX_BODY_BYTES)
    yield number
    server.close()
    await server.wait_closed()
    user_directory.clear()


@pytest.fixture
async def token() -> str:
    _, secret = await database_sync_to_async(api_token_issue)(name="port")
    return secret


def request(path: str, body: Any, token: str | None, *, extra: str = "") -> bytes:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(content)}\r\n"
    if token is not None:
        head += f"Authorization: Bearer {token}\r\n"
    return (head + extra + "\r\n").encode() + content


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], Any]:
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).decode("latin-1")
    lines = head.split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.lower()] = value.strip()
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 5)
    return status, headers, json.loads(body)


async def exchange(port: int, data: bytes) -> tuple[int, dict[str, str], Any, bool]:
    """One request on a new connection: the answer, and whether the port closed after it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    status, headers, body = await read_answer(reader)
    try:
        closed = await asyncio.wait_for(reader.read(1), 0.5) == b""
    except TimeoutError:
        closed = False  # still open, waiting for the next request
    writer.close()
    return status, headers, body, closed


async def test_a_push_through_the_port_reaches_the_users_socket_with_the_apis_answer(
    port: int, token: str
) -> None:
    user = await User.objects.acreate(username="port-a")
    witness_user = await User.objects.acreate(username="port-witness")
    socket, _ = await open_socket(user)
    witness, _ = await open_socket(witness_user)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    # Three requests in one write (pipelined), on one kept-alive connection.
    writer.write(
        request("/api/push", {"user": "port-a", "payload": {"n": 1}}, token)
        + request("/api/push", {"user": "port-a", "payload": {"n": 2}}, token)
        + request("/api/broadcast", {"payload": "all"}, token)
    )
    answers = [await read_answer(reader) for _ in range(3)]
    assert [(status, body["ok"]) for status, _, body in answers] == [(200, True)] * 3
    assert [body["seq"] for _, _, body in answers[:2]] == [1, 2]
    assert answers[0][1]["content-type"] == "application/json"
    assert answers[0][1]["x-content-type-options"] == "nosniff" and "x-replica" in answers[0][1]
    frames = await socket.receive_many(3)
    assert [(f["stream"], f["seq"], f["payload"]) for f in frames[:2]] == [
        (f"user:{user.pk}", 1, {"n": 1}),
        (f"user:{user.pk}", 2, {"n": 2}),
    ]
    assert frames[2]["payload"] == "all"
    assert (await witness.receive())["payload"] == "all"
    assert await witness.nothing(), "the witness got the broadcast and nothing else"
    # Still open: a fourth request on the same connection.
    writer.write(request("/api/push", {"user": "port-a", "payload": {"n": 3}}, token))
    status, _, body = await read_answer(reader)
    assert (status, body["seq"]) == (200, 3)
    writer.close()
    await socket.close()
    await witness.close()


@pytest.mark.parametrize(
    ("data", "status", "code", "closes"),
    [
        # What the lane does not take: no token, another path, another method.
        (request("/api/push", {"user": "x", "payload": 1}, None), 404, "not_found", False),
        (request("/admin/", {}, "sb_x"), 404, "not_found", False),
        (b"GET /api/push HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 404, "not_found", False),
        # The API's own answers.
        (
            request("/api/push", {"user": "x", "payload": 1}, "sb_wrong"),
            401,
            "invalid_token",
            False,
        ),
        (request("/api/push", b"{not json", "TOKEN"), 400, "bad_json", False),
        # What cannot be read on from: answered, then the connection closes.
        (
            b"POST /api/push HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            501,
            "chunked",
            True,
        ),
        # Answered at once; the body is read and dropped, then the connection closes (closed
        # with it unread, the kernel's reset could destroy the answer before HAProxy read it).
        (
            b"POST /api/push HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n"
            % (MAX_BODY_BYTES + 1)
            + b"x" * (MAX_BODY_BYTES + 1),
            413,
            "body_too_large",
            True,
        ),
        (b"HELLO\r\n\r\n", 400, "bad_request", True),
        (
            b"POST /api/push HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
            400,
            "bad_request",
            True,
        ),
        (
            b"POST /api/push HTTP/1.1\r\n" + b"X: " + b"y" * 20_000 + b"\r\n\r\n",
            431,
            "head_too_large",
            True,
        ),
    ],
)
async def test_what_the_port_refuses_gets_a_clear_answer_and_nobody_else_notices(
    port: int, token: str, data: bytes, status: int, code: str, closes: bool
) -> None:
    witness_user = await User.objects.acreate(username="port-witness-2")
    witness, _ = await open_socket(witness_user)
    got_status, headers, body, closed = await exchange(port, data.replace(b"TOKEN", token.encode()))
    assert (got_status, body["ok"], body["error"]) == (status, False, code)
    assert headers["content-type"] == "application/json" and headers["x-replica"] == body["replica"]
    assert closed is closes
    # The port still serves, and the witness on the same replica noticed nothing but this.
    status_after, _, after, _ = await exchange(
        port, request("/api/push", {"user": "port-witness-2", "payload": "ok"}, token)
    )
    assert (status_after, after["seq"]) == (200, 1)
    assert (await witness.receive())["payload"] == "ok"
    assert await witness.nothing()
    await witness.close()


async def test_a_refused_body_that_never_comes_is_waited_for_a_moment_only(
    port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(publish_port, "LINGER_SECS", 0.3)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /api/push HTTP/1.1\r\nHost: a\r\nContent-Length: 9999999\r\n\r\nxx")
    status, _, body = await read_answer(reader)
    assert (status, body["error"]) == (413, "body_too_large")
    assert await asyncio.wait_for(reader.read(1), 3) == b"", "closed after LINGER_SECS"
    writer.close()


async def test_every_publish_endpoint_answers_on_the_port_as_through_django(
    port: int, token: str
) -> None:
    user = await User.objects.acreate(username="port-every")
    socket, _ = await open_socket(user)
    key = "Idempotency-Key: order-7\r\n"
    batch = {"messages": [{"user": "port-every", "payload": n} for n in (1, 2)]}
    answers = [
        await exchange(port, request("/api/push/batch", batch, token)),
        await exchange(
            port,
            request("/api/publish", {"stream": f"user:{user.pk}", "payload": 3}, token, extra=key),
        ),
        await exchange(
            port,
            request("/api/publish", {"stream": f"user:{user.pk}", "payload": 3}, token, extra=key),
        ),
        await exchange(port, request("/api/publish", {"stream": "ops", "payload": 0}, token)),
        await exchange(port, request("/api/publish", {"stream": "nope!", "payload": 0}, token)),
    ]
    (s1, _, b1, _), (s2, _, b2, _), (s3, _, b3, _), (s4, _, b4, _), (s5, _, b5, _) = answers
    assert (s1, [r["seq"] for r in b1["results"]]) == (200, [1, 2])
    assert (s2, b2["seq"], b2["duplicate"]) == (200, 3, False)
    assert (s3, b3["seq"], b3["duplicate"]) == (200, 3, True), "the retry published nothing"
    assert (s4, b4["error"]) == (403, "forbidden_stream")
    assert (s5, b5["error"]) == (400, "bad_stream")
    frames = await socket.receive_many(3)
    assert [f["payload"] for f in frames] == [1, 2, 3]
    assert await socket.nothing()
    # A host name this site does not serve is refused, as Django would.
    elsewhere = request("/api/broadcast", {"payload": 1}, token).replace(
        b"Host: 127.0.0.1", b"Host: evil.example"
    )
    status, _, body, _ = await exchange(port, elsewhere)
    assert (status, body["error"]) == (400, "bad_host") and "evil" not in body["message"]
    await socket.close()


async def test_the_push_apis_names_follow_renames_here_and_new_users_at_once(
    port: int, token: str
) -> None:
    async def push(name: str) -> tuple[int, Any]:
        status, _, body, _ = await exchange(
            port, request("/api/push", {"user": name, "payload": 1}, token)
        )
        return status, body

    assert (await push("port-new"))[1]["error"] == "unknown_user"
    user = await User.objects.acreate(username="port-new")  # not cached as unknown
    assert (await push("port-new"))[0] == 200
    user.username = "port-renamed"
    await user.asave()  # this process forgets the old name at once
    assert (await push("port-new"))[1]["error"] == "unknown_user"
    status, body = await push("port-renamed")
    assert (status, body["stream"]) == (200, f"user:{user.pk}")
    user.is_active = False
    await user.asave()
    assert (await push("port-renamed"))[1]["error"] == "unknown_user"


@pytest.fixture
def asked(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The batches of names the database is asked for, each sorted."""
    batches: list[list[str]] = []
    lookup = user_directory._lookup_active

    def counted(batch: list[str]) -> dict[str, int]:
        batches.append(sorted(batch))
        return lookup(batch)

    monkeypatch.setattr(user_directory, "_lookup_active", counted)
    return batches


async def test_names_missed_together_are_asked_in_one_query(
    port: int, asked: list[list[str]]
) -> None:
    names = [f"port-batch-{n}" for n in range(5)]
    users = [await User.objects.acreate(username=name) for name in names]
    found = await asyncio.gather(
        *(user_directory.active_user_id(name) for name in [*names, "port-nobody", names[0]])
    )
    assert found == [u.pk for u in users] + [None, users[0].pk]
    assert asked == [sorted([*names, "port-nobody"])], "one query for every name missed at once"
    assert await user_directory.active_user_id(names[3]) == users[3].pk
    assert len(asked) == 1, "a name found is remembered"


async def test_a_name_one_replica_looked_up_is_found_by_the_others_in_redis(
    port: int, layer: StreamChannelLayer, asked: list[list[str]]
) -> None:
    users = [await User.objects.acreate(username=f"port-shared-{n}") for n in range(3)]
    names = [u.username for u in users]
    assert await user_directory.active_user_ids(names[:2]) == {u.username: u.pk for u in users[:2]}
    assert asked == [names[:2]]
    redis = layer.broker.redis(layer.broker.keys.username(names[0]))
    ttl = await redis.pttl(layer.broker.keys.username(names[0]))
    assert 0 < ttl <= 60_000, "kept for API_USER_CACHE_SECS"
    user_directory.clear()  # another replica: nothing remembered in its process
    found = await asyncio.gather(*(user_directory.active_user_id(n) for n in names))
    assert found == [u.pk for u in users]
    assert asked == [names[:2], [names[2]]], "the shared names cost no query"


async def test_a_sockets_handshake_shares_its_users_name(
    port: int, layer: StreamChannelLayer, asked: list[list[str]]
) -> None:
    user = await User.objects.acreate(username="port-connected")
    socket, _ = await open_socket(user)
    key = layer.broker.keys.username("port-connected")
    redis = layer.broker.redis(key)

    async def shared() -> bool:
        return await redis.get(key) == str(user.pk).encode()

    await eventually(shared)
    user_directory.clear()  # a replica the socket is not on
    assert await user_directory.active_user_id("port-connected") == user.pk
    assert asked == [], "found without the database"
    await socket.close()


async def test_a_save_anywhere_drops_old_and_new_names_from_the_shared_directory(
    port: int, layer: StreamChannelLayer
) -> None:
    user = await User.objects.acreate(username="port-old")
    assert await user_directory.active_user_id("port-old") == user.pk

    async def shared(name: str) -> bytes | None:
        key = layer.broker.keys.username(name)
        return await layer.broker.redis(key).get(key)  # type: ignore[no-any-return]

    assert await shared("port-old") == str(user.pk).encode()
    # A process that loaded the user, and never looked its name up, renames it.
    user_directory.clear()
    loaded = await User.objects.aget(pk=user.pk)
    loaded.username = "port-new-name"
    await loaded.asave()
    assert await shared("port-old") is None, "the old name is dropped"
    assert await user_directory.active_user_id("port-old") is None
    assert await user_directory.active_user_id("port-new-name") == user.pk
    # A login's last_login leaves the directory alone; a deactivation drops the name.
    await loaded.asave(update_fields=["last_login"])
    assert await shared("port-new-name") == str(user.pk).encode()
    user_directory.clear()
    loaded.is_active = False
    await loaded.asave(update_fields=["is_active"])
    assert await shared("port-new-name") is None
    assert await user_directory.active_user_id("port-new-name") is None
    # And a deleted user's name.
    other = await User.objects.acreate(username="port-deleted")
    assert await user_directory.active_user_id("port-deleted") == other.pk
    user_directory.clear()
    await (await User.objects.aget(pk=other.pk)).adelete()
    assert await shared("port-deleted") is None
    assert await user_directory.active_user_id("port-deleted") is None


async def test_names_noted_in_one_turn_are_shared_in_one_write(
    layer: StreamChannelLayer, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[dict[str, int]] = []
    remember = layer.broker.remember_user_ids

    async def counted(ids: dict[str, int], *, ttl_ms: int) -> None:
        writes.append(dict(ids))
        await remember(ids, ttl_ms=ttl_ms)

    monkeypatch.setattr(layer.broker, "remember_user_ids", counted)
    user_directory.clear()
    for n in range(3):  # as a batch of handshakes finishes: in one turn of the loop
        user_directory.note_connected(f"turn-{n}", 100 + n)
    user_directory.note_connected("turn-0", 100)  # a second tab of the same user
    redis = layer.broker.redis(layer.broker.keys.username("turn-2"))

    async def all_shared() -> bool:
        keys = [layer.broker.keys.username(f"turn-{n}") for n in range(3)]
        return all([await layer.broker.redis(k).get(k) for k in keys])

    await eventually(all_shared)
    assert writes == [{"turn-0": 100, "turn-1": 101, "turn-2": 102}]
    assert await redis.get(layer.broker.keys.username("turn-2")) == b"102"
    user_directory.clear()


async def test_a_connection_in_use_stays_open_and_one_left_idle_is_closed(
    port: int, token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The idle timeout counts from the last answer, not from the connection's start:
    requests made one after another for three timeouts' worth of time keep it open; silence
    past one closes it."""
    monkeypatch.setattr(publish_port, "IDLE_SECS", 0.4)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    loop = asyncio.get_running_loop()
    started = loop.time()
    answers = 0
    while loop.time() - started < 1.2:
        writer.write(request("/api/broadcast", {"payload": {"n": answers}}, token))
        status, _, _ = await read_answer(reader)
        assert status == 200
        answers += 1
    assert answers >= 3
    idle_from = loop.time()
    assert await asyncio.wait_for(reader.read(1), 5) == b""  # closed by the port
    assert 0.3 <= loop.time() - idle_from < 2
    writer.close()


async def test_a_request_head_that_stops_coming_is_closed_after_the_head_timeout(
    port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(publish_port, "HEAD_SECS", 0.3)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    loop = asyncio.get_running_loop()
    writer.write(b"POST /api/push HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and nothing more
    started = loop.time()
    assert await asyncio.wait_for(reader.read(1), 5) == b""
    # Well before the idle timeout (75 s): the head's own.
    assert loop.time() - started < 2
    writer.close()
