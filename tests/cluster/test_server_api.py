"""The server API across replicas, through HAProxy: a service's call lands on one replica and
acts on the user's sockets on the others; a connection token made on one replica opens a socket
on another."""

from __future__ import annotations

import asyncio

import httpx

from devtools.cluster import Cluster
from tests.cluster.helpers import api_post, sessions_for, socket_for
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
