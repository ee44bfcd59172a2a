"""Redis going away and a replica dying: clear errors, no crash, and delivery comes back."""

from __future__ import annotations

import asyncio

import httpx

from devtools.cluster import Cluster, wait_until
from tests.cluster.helpers import api_post, sessions_for, socket_for
from tests.support.clients import WsClient


async def socket_retrying_4503(cluster: Cluster, session_key: str) -> WsClient:
    """Connect as a client does: 4503 means try again later, so try again (bounded)."""
    for _ in range(20):
        ws = await WsClient.open(cluster.ws_url, cookie=f"sessionid={session_key}")
        await ws.wait_for(lambda frames: bool(frames), what="hello or error")
        if ws.frames[0]["type"] == "hello":
            return ws
        assert await ws.wait_closed() == 4503
        await asyncio.sleep(0.25)  # the client's backoff between attempts
    raise AssertionError("no connection within 20 attempts after Redis came back")


async def test_with_redis_down_the_api_answers_503_and_delivery_returns_after(
    healthy_cluster: Cluster,
) -> None:
    cluster = healthy_cluster
    users = sessions_for(cluster, 2, "redisdown")
    before = await socket_for(cluster, users["redisdown0"], replica="d1")

    await asyncio.to_thread(cluster.stop_redis)
    for replica in cluster.replica_names:
        response = await asyncio.to_thread(
            api_post, cluster, "/api/push", {"user": "redisdown0", "payload": 1}, replica=replica
        )
        assert response.status_code == 503, response.text
        assert response.json()["error"] == "redis_unavailable"
        assert "unavailable" in response.json()["message"]
        # Which Redis (its URL may hold a password) is for the log, not for the caller.
        assert str(cluster.redis_port) not in response.text and "redis://" not in response.text
        health = cluster.replica_health(replica)
        assert health["redis"]["reachable"] is False  # type: ignore[index]
    # A socket opened now is told to come back later instead of hanging or crashing.
    refused = await WsClient.open(cluster.ws_url, cookie=f"sessionid={users['redisdown1']}")
    assert await refused.wait_closed() == 4503
    assert refused.frames[0]["code"] == "unavailable"
    assert all(cluster.processes[name].running() for name in cluster.replica_names)

    await asyncio.to_thread(cluster.start_redis)
    # The socket that lived through the outage receives again once its replica has
    # re-subscribed; keep pushing until one arrives (at-most-once until the history issue).
    deadline = asyncio.get_running_loop().time() + 20
    n = 0
    while not before.of_type("push"):
        assert asyncio.get_running_loop().time() < deadline, "no push arrived after Redis came back"
        n += 1
        response = await asyncio.to_thread(
            api_post, cluster, "/api/push", {"user": "redisdown0", "payload": {"n": n}}
        )
        assert response.status_code == 200, response.text
        try:
            await before.wait_type("push", timeout=0.5)
        except AssertionError:
            pass
    assert before.closed_code is None
    after = await socket_retrying_4503(cluster, users["redisdown1"])
    response = await asyncio.to_thread(
        api_post, cluster, "/api/push", {"user": "redisdown1", "payload": {"after": True}}
    )
    assert response.status_code == 200
    await after.wait_type("push")
    assert after.of_type("push")[0]["payload"] == {"after": True}
    await before.close()
    await after.close()


async def test_killed_replica_is_marked_down_and_its_clients_come_back_elsewhere(
    healthy_cluster: Cluster,
) -> None:
    cluster = healthy_cluster
    users = sessions_for(cluster, 1, "survivor")
    victim = "d2"
    ws = await socket_for(cluster, users["survivor0"], replica=victim)
    assert ws.hello["replica"] == victim

    await asyncio.to_thread(cluster.kill_replica, victim)
    await asyncio.to_thread(cluster.wait_server_status, victim, "DOWN", timeout=15)
    assert await ws.wait_closed(timeout=10) is not None

    # The stale cookie still says d2: HAProxy redispatches to a live replica and re-issues it.
    async with httpx.AsyncClient() as client:
        response = await client.get(
            f"{cluster.url}/api/whoami", headers={"Cookie": f"SERVERID={victim}"}
        )
        assert response.headers["X-Replica"] != victim
        assert response.cookies["SERVERID"] == response.headers["X-Replica"]
    again = await socket_for(cluster, users["survivor0"], replica=victim)
    assert again.hello["replica"] in set(cluster.replica_names) - {victim}
    answer = await asyncio.to_thread(
        api_post, cluster, "/api/push", {"user": "survivor0", "payload": {"back": True}}
    )
    assert answer.status_code == 200
    await again.wait_type("push")
    assert again.of_type("push")[0]["payload"] == {"back": True}
    await again.close()

    await asyncio.to_thread(cluster.start_replica, victim)
    await asyncio.to_thread(cluster.wait_server_status, victim, "UP", timeout=15)
    wait_until(lambda: cluster.replica_health(victim)["replica"] == victim, timeout=5)
