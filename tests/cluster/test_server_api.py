"""The server API across replicas, through HAProxy: a service's call lands on one replica and
acts on the user's sockets on the others; a connection token made on one replica opens a socket
on another."""

from __future__ import annotations

import asyncio

import httpx

from devtools.cluster import Cluster, wait_until
from switchboard_client import RealtimeClient
from tests.cluster.helpers import api_post, api_token, sessions_for, socket_for
from tests.support.clients import WsClient, tampered


async def test_a_kick_sent_to_d1_closes_the_users_sockets_on_d2_and_d3(cluster: Cluster) -> None:
    sessions = sessions_for(cluster, 2, "api-kick")
    (name, key), (_, bystander_key) = sessions.items()
    sockets = [await socket_for(cluster, key, replica=replica) for replica in ("d2", "d3")]
    bystander = await socket_for(cluster, bystander_key, replica="d2")
    answer = await asyncio.to_thread(
        api_post, cluster, "/api/kick", {"user": name, "reason": "Maintenance."}, replica="d1"
    )
    assert answer.status_code == 200, answer.text
    for socket in sockets:
        assert await socket.wait_closed(timeout=10) == 4401
        kicked = [f for f in socket.frames if f.get("code") == "kicked"]
        assert [f["message"] for f in kicked] == ["Maintenance."]
    assert bystander.closed_code is None
    await bystander.close()


async def test_a_token_from_d1_opens_a_socket_on_d3_without_a_cookie(cluster: Cluster) -> None:
    ((name, _),) = sessions_for(cluster, 1, "api-token").items()
    answer = await asyncio.to_thread(
        api_post, cluster, "/api/connect-token", {"user": name}, replica="d1"
    )
    assert answer.status_code == 200, answer.text
    token = answer.json()["token"]
    socket = await WsClient.open(f"{cluster.ws_url}?token={token}", cookie="SERVERID=d3")
    (hello,) = await socket.wait_type("hello", timeout=10)
    assert (hello["user"], hello["replica"]) == (name, "d3")
    await socket.close()
    bad = await WsClient.open(f"{cluster.ws_url}?token={tampered(token)}")
    assert await bad.wait_closed(timeout=10) == 4401
    assert any(f.get("code") == "bad_token" for f in bad.frames)
    anonymous = await asyncio.to_thread(
        httpx.get, f"{cluster.url}/api/history?stream=broadcast", timeout=5
    )
    assert anonymous.status_code == 401


def api_get(cluster: Cluster, path: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {api_token(cluster)}"}
    return httpx.get(f"{cluster.url}{path}", headers=headers, timeout=15)


async def test_a_users_sockets_and_a_rooms_presence_are_read_across_replicas(
    cluster: Cluster,
) -> None:
    ((name, key),) = sessions_for(cluster, 1, "api-presence").items()
    sockets = [await socket_for(cluster, key, replica=replica) for replica in ("d2", "d3", "d3")]
    answer = await asyncio.to_thread(api_get, cluster, f"/api/sockets?user={name}")
    assert answer.status_code == 200, answer.text
    assert (answer.json()["replicas"], answer.json()["total"]) == ({"d2": 1, "d3": 2}, 3)
    await sockets[0].send_json({"type": "subscribe", "stream": "room:lobby"})
    await sockets[0].wait_type("subscribed")

    def present() -> bool:
        users = api_get(cluster, "/api/presence?stream=room:lobby").json()["users"]
        return name in [user["username"] for user in users]

    await asyncio.to_thread(wait_until, present, timeout=10, what=f"{name} in room:lobby")
    for socket in sockets:
        await socket.close()
    answer = await asyncio.to_thread(api_get, cluster, f"/api/sockets?user={name}")
    assert answer.json()["total"] == 0
    assert (
        await asyncio.to_thread(api_get, cluster, "/api/presence?stream=user:1")
    ).status_code == 400


async def test_the_python_client_connects_with_a_fresh_token_each_time(cluster: Cluster) -> None:
    ((name, _),) = sessions_for(cluster, 1, "api-pyclient").items()
    issued: list[str] = []

    async def fresh_token() -> str:
        answer = await asyncio.to_thread(api_post, cluster, "/api/connect-token", {"user": name})
        issued.append(answer.json()["token"])
        return issued[-1]

    client = await RealtimeClient(cluster.ws_url, token=fresh_token).start(timeout=15)
    try:
        assert client.replica is not None and len(issued) == 1
        answer = await asyncio.to_thread(
            api_post, cluster, "/api/push", {"user": name, "payload": 1}
        )
        assert answer.status_code == 200, answer.text
        await client.wait_for(lambda c: c.payloads(f"user:{c.user_id}") == [1], timeout=10)
    finally:
        await client.close()
