"""The SSE transport through HAProxy: the same frames and the same resume as a WebSocket, with
the client's frames POSTed to any replica."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from urllib.parse import quote

import httpx
import pytest

from devtools.cluster import Cluster, wait_until
from switchboard_client import RealtimeClient
from tests.cluster.helpers import api_post, sessions_for
from tests.conftest import manage
from tests.support.clients import SseClient, tampered


def cookie_for(session: str, replica: str) -> str:
    return f"sessionid={session}; SERVERID={replica}"


@pytest.fixture(autouse=True)
def streams_are_given_back(cluster: Cluster) -> Iterator[None]:
    """After each test every stream its clients closed is given back on its replica: HAProxy
    passes a client's close on at the stream's next heartbeats (SSE_HEARTBEAT_SECS, 1 s in the
    tests' cluster)."""
    before = {name: connections(cluster, name) for name in cluster.replica_names}
    yield
    for name, count in before.items():
        wait_until(
            lambda name=name, count=count: connections(cluster, name) <= count,
            timeout=20, what=f"{name}'s event streams to be given back",
        )  # fmt: skip


def connections(cluster: Cluster, replica: str) -> int:
    health = httpx.get(f"{cluster.replica_url(replica)}/healthz", timeout=5).json()
    return int(health["connections"])


async def test_an_event_stream_gets_pushes_and_answers_frames_posted_to_another_replica(
    cluster: Cluster,
) -> None:
    manage(cluster, "shell", "-v", "0", "-c", "from chat.models import Room; "
           "Room.objects.get_or_create(slug='sse-room', defaults={'title': 'SSE'})")  # fmt: skip
    users = sessions_for(cluster, 1, "sse")
    stream = await SseClient(cluster.url, cookie_for(users["sse0"], "d1")).start()
    try:
        hello = stream.hello
        assert (hello["replica"], stream.stream_replica) == ("d1", "d1")
        for n in range(5):
            body = {"user": "sse0", "payload": {"n": n}}
            assert (
                await asyncio.to_thread(api_post, cluster, "/api/push", body)
            ).status_code == 200
        pushes = await stream.wait_type("push", count=5)
        assert [p["payload"]["n"] for p in pushes] == list(range(5))
        assert [p["seq"] for p in pushes] == list(range(pushes[0]["seq"], pushes[0]["seq"] + 5))
        # Frames POSTed to d2 and d3 reach the session on d1, and are answered on the stream.
        answer = await stream.send({"type": "echo", "id": "e1", "payload": "hi"}, replica="d2")
        assert (answer.status_code, answer.headers["x-replica"]) == (202, "d2")
        echo = (await stream.wait_type("echo"))[0]
        assert (echo["id"], echo["replica"], echo["payload"]) == ("e1", "d1", "hi")
        await stream.send({"type": "subscribe", "stream": "room:sse-room", "id": "s"}, replica="d3")
        await stream.wait_type("subscribed")
        publish = {"type": "publish", "id": "m1", "stream": "room:sse-room", "payload": {"t": 1}}
        await stream.send(publish, replica="d2")
        ack = (await stream.wait_type("ack"))[0]
        message = (await stream.wait_type("message"))[0]
        assert (ack["id"], ack["seq"]) == ("m1", message["seq"])
        # Hostile input over SSE gets the same answers as over a WebSocket.
        raw = {"connection": hello["connection"], "frame": "[" * 5000}
        bad = await stream._client.post(
            "/sse/send", json=raw,
            headers={"Cookie": f"{stream.cookie}; csrftoken={'s' * 32}", "X-CSRFToken": "s" * 32},
        )  # fmt: skip
        assert bad.status_code == 202
        assert (await stream.wait_type("error"))[0]["code"] == "bad_json"
    finally:
        await stream.close()


async def test_an_event_stream_resumes_from_the_url_and_frames_of_others_are_dropped(
    cluster: Cluster,
) -> None:
    users = sessions_for(cluster, 2, "sseres")
    first = await SseClient(cluster.url, cookie_for(users["sseres0"], "d2")).start()
    user_stream = f"user:{first.hello['user_id']}"
    await asyncio.to_thread(api_post, cluster, "/api/push", {"user": "sseres0", "payload": 0})
    seen = (await first.wait_type("push"))[0]
    # Another user POSTs a frame naming this stream's connection: it is not acted on.
    intruder = SseClient(cluster.url, cookie_for(users["sseres1"], "d1"))
    intruder.frames.append({"type": "hello", "connection": first.hello["connection"]})
    await intruder.send({"type": "echo", "id": "x", "payload": "not yours"})
    await intruder._client.aclose()
    await first.close()
    for n in range(1, 4):
        await asyncio.to_thread(api_post, cluster, "/api/push", {"user": "sseres0", "payload": n})
    position = {user_stream: {"epoch": seen["epoch"], "seq": seen["seq"]}}
    again = await SseClient(
        cluster.url, cookie_for(users["sseres0"], "d3"), "?resume=" + quote(json.dumps(position))
    ).start()
    try:
        resumed = (await again.wait_type("resumed"))[0]
        assert [p["payload"] for p in again.of_type("push")] == [1, 2, 3]
        assert (resumed["recovered"], resumed["replayed"]) == (True, 3)
    finally:
        await again.close()
    assert first.of_type("echo") == []


async def test_an_event_stream_without_a_login_is_closed_with_4401(cluster: Cluster) -> None:
    anonymous = await SseClient(cluster.url, "SERVERID=d1").start()
    try:
        await anonymous.wait_for(lambda f: anonymous.closed_code is not None, what="the close")
        assert anonymous.closed_code == 4401
        assert anonymous.frames[0]["code"] == "unauthorized"
    finally:
        await anonymous.close()


async def test_the_python_client_over_sse_publishes_and_resumes_across_dropped_streams(
    cluster: Cluster,
) -> None:
    from switchboard_client import RealtimeClient
    from tests.cluster.test_reliability import room_with_writer_and_reader
    from tests.support.clients import origin_of

    stream, writer_session, reader_session = room_with_writer_and_reader(cluster, "ssepy")
    origin = origin_of(cluster.url)
    reader = await RealtimeClient(
        cluster.ws_url, cookie=f"sessionid={reader_session}", origin=origin, streams=[stream],
        transport="sse",
    ).start()  # fmt: skip
    await reader.wait_for(lambda c: stream in c.positions, what="the reader's subscription")
    writer = await RealtimeClient(
        cluster.ws_url, cookie=f"sessionid={writer_session}", origin=origin, transport="sse"
    ).start()
    try:
        sends = [
            asyncio.create_task(writer.publish(stream, {"n": n}, id=f"m{n}")) for n in range(30)
        ]
        await reader.drop()  # the reader's stream breaks; it comes back with its position
        await writer.drop()  # the writer's too, while its publishes are in flight
        acks = await asyncio.gather(*sends)
        assert sorted(a["seq"] for a in acks) == list(range(1, 31))
        await reader.wait_for(lambda c: len(c.received[stream]) >= 30, what="30 messages")
        assert [f["seq"] for f in reader.received[stream]] == list(range(1, 31))
        assert sorted(p["n"] for p in reader.payloads(stream)) == list(range(30))
        assert reader.stats.connects >= 2 and writer.stats.connects >= 2
    finally:
        await writer.close()
        await reader.close()


async def test_a_token_holder_over_sse_sends_frames_to_any_replica_with_its_token(
    cluster: Cluster,
) -> None:
    """No session: the stream opens with ?token= and the POSTs carry the same token as a bearer
    credential, land on other replicas and are answered on the stream; a tampered or missing
    token is refused, and a session POST still needs its CSRF header."""
    ((name, session),) = sessions_for(cluster, 1, "ssetok").items()
    answer = await asyncio.to_thread(
        api_post, cluster, "/api/connect-token", {"user": name}, replica="d1"
    )
    token = answer.json()["token"]
    client = RealtimeClient(f"{cluster.ws_url}", token=token, transport="sse")
    await client.start()
    try:
        # A frame POSTed with the token reaches the stream's session and is answered on it.
        await client.send_raw({"type": "subscribe", "stream": "ops", "id": "s1"})
        await client.wait_for(
            lambda c: any(e.get("code") == "forbidden_stream" for e in c.events), timeout=10
        )
        await asyncio.to_thread(api_post, cluster, "/api/broadcast", {"payload": {"n": 1}})
        await client.wait_for(lambda c: len(c.received["broadcast"]) >= 1, timeout=10)
        assert [f["payload"] for f in client.received["broadcast"]] == [{"n": 1}]
        ws_hello = next(e for e in client.events if e.get("type") == "hello")
        assert ws_hello["user"] == name
        frame = json.dumps({"type": "echo", "id": "t", "payload": "x"})
        body = {"connection": ws_hello["connection"], "frame": frame}
        async with httpx.AsyncClient(base_url=cluster.url, timeout=10) as http:
            forged = await http.post(
                "/sse/send", json=body, headers={"Authorization": f"Bearer {tampered(token)}"}
            )
            bare = await http.post("/sse/send", json=body)
            no_csrf = await http.post(
                "/sse/send", json=body, headers={"Cookie": f"sessionid={session}"}
            )
        assert (forged.status_code, forged.json()["error"]) == (401, "bad_token")
        assert (bare.status_code, bare.json()["error"]) == (401, "not_authenticated")
        assert (no_csrf.status_code, no_csrf.json()["error"]) == (403, "csrf_failed")
    finally:
        await client.close()
