"""Readiness that tells the truth: a replica whose Redis subscription is gone is taken out of
HAProxy's rotation within two checks (its sockets stay open), new clients go to the others, and
it comes back by itself once it has re-subscribed. Liveness (/healthz) stays 200 all along."""

from __future__ import annotations

import asyncio
import time

import httpx
import redis

from devtools.cluster import Cluster, wait_until
from tests.cluster.helpers import api_post, sessions_for, socket_for
from tests.support.clients import WsClient

# HAProxy's check interval in the tests' cluster (SB_CHECK_INTER, haproxy.cfg: fall 2, rise 2).
CHECK_SECS = 1.0


def readyz(cluster: Cluster, replica: str) -> httpx.Response:
    return httpx.get(f"{cluster.replica_url(replica)}/readyz", timeout=5)


def liveness(cluster: Cluster, replica: str) -> int:
    return httpx.get(f"{cluster.replica_url(replica)}/healthz", timeout=5).status_code


def subscription_ids(admin: redis.Redis, replica: str) -> list[int]:
    """The Redis client ids of `replica`'s subscription connections (named by the layer)."""
    return [
        int(c["id"])
        for c in admin.client_list()
        if c.get("name") == f"switchboard:{replica}" and int(c.get("sub", 0)) > 0
    ]


async def test_a_replica_without_its_subscription_is_taken_out_and_comes_back_after(
    cluster: Cluster,
) -> None:
    for replica in cluster.replica_names:
        answer = readyz(cluster, replica)
        assert answer.status_code == 200 and answer.json()["ready"] is True, answer.text
    users = sessions_for(cluster, 2, "ready")
    kept = await socket_for(cluster, users["ready0"], replica="d1")
    admin = redis.Redis(port=cluster.redis_port)
    assert subscription_ids(admin, "d1"), admin.client_list()
    maxclients = admin.config_get("maxclients")["maxclients"]
    try:
        # Redis takes no new connection (the limit below the count), then d1's subscription
        # is killed: d1 cannot get it back until the limit is lifted.
        admin.config_set("maxclients", max(1, int(admin.info("clients")["connected_clients"]) - 1))
        started = time.monotonic()
        for client_id in subscription_ids(admin, "d1"):
            admin.client_kill_filter(_id=client_id)
        await asyncio.to_thread(cluster.wait_server_status, "d1", "DOWN", timeout=10)
        taken_out_secs = time.monotonic() - started
        print(f"d1 taken out {taken_out_secs:.1f} s after its subscription was killed")
        assert taken_out_secs <= 2 * CHECK_SECS + 1.5  # two checks, plus their timing
        answer = readyz(cluster, "d1")
        assert answer.status_code == 503
        # Why: its subscription, and, when its ping needed a new connection, Redis itself (which
        # refuses d1's new connections here); both are true.
        reasons = answer.json()["reasons"]
        assert any("subscription" in r or "Redis shard 0" in r for r in reasons), reasons
        assert liveness(cluster, "d1") == 200
        # A client whose cookie names d1 is sent to a ready replica; d1's socket stays open.
        moved = await socket_for(cluster, users["ready1"], replica="d1")
        assert moved.hello["replica"] != "d1"
        await moved.close()
        assert kept.closed_code is None
    finally:
        admin.config_set("maxclients", maxclients)
    # Back by itself: re-subscribed, ready, in rotation; and the socket it kept hears again.
    await asyncio.to_thread(cluster.wait_server_status, "d1", "UP", timeout=15)
    assert readyz(cluster, "d1").status_code == 200
    response = await asyncio.to_thread(
        api_post, cluster, "/api/push", {"user": "ready0", "payload": "after"}
    )
    assert response.status_code == 200, response.text
    await kept.wait_for(
        lambda frames: any(f.get("payload") == "after" for f in frames), what="the push"
    )
    await kept.close()
    admin.close()


def test_when_no_replica_is_ready_haproxy_falls_back_to_the_live_ones(cluster: Cluster) -> None:
    """Redis down for every replica: none is ready, and HAProxy sends requests to the live ones
    rather than answering its own 503, so the API still says why (tests/cluster/
    test_failures.py checks the answers); here, that every replica is out of `replicas` and
    the fallback serves."""
    cluster.stop_redis()
    try:
        for replica in cluster.replica_names:
            cluster.wait_server_status(replica, "DOWN", timeout=10)
        answer = httpx.get(f"{cluster.url}/healthz", timeout=5)
        assert answer.status_code == 200 and answer.json()["replica"] in cluster.replica_names
    finally:
        cluster.start_redis()
    wait_until(
        lambda: all(s["status"] == "UP" for s in cluster.server_states().values()),
        timeout=20,
        what="every replica ready again",
    )


async def test_a_replica_at_its_socket_cap_sends_new_sockets_elsewhere(cluster: Cluster) -> None:
    """MAX_SOCKETS_PER_REPLICA=50 on d3: its 51st socket is refused with 1013 (or, once HAProxy
    saw d3 not ready, sent elsewhere), and after two checks every new one goes elsewhere, even
    with a cookie naming d3. d3's own sockets carry on."""
    d3 = cluster.processes["d3"]
    original = dict(d3.env)
    await asyncio.to_thread(d3.stop)
    d3.env = {**original, "MAX_SOCKETS_PER_REPLICA": "50"}
    try:
        await asyncio.to_thread(cluster.start_replica, "d3")
        await asyncio.to_thread(cluster.wait_server_status, "d3", "UP", timeout=30)
        users = list((await asyncio.to_thread(sessions_for, cluster, 55, "capped")).values())
        held = [await socket_for(cluster, session, replica="d3") for session in users[:50]]
        assert {ws.hello["replica"] for ws in held} == {"d3"}
        fifty_first = await WsClient.open(
            cluster.ws_url, cookie=f"sessionid={users[50]}; SERVERID=d3", origin=cluster.url
        )
        await fifty_first.wait_for(lambda frames: bool(frames), what="hello or error")
        first = fifty_first.frames[0]
        if first["type"] == "error":
            assert first["code"] == "overloaded"
            assert await fifty_first.wait_closed() == 1013
        else:
            assert first["replica"] != "d3"
        await asyncio.to_thread(cluster.wait_server_status, "d3", "DOWN", timeout=10)
        for session in users[51:]:
            ws = await socket_for(cluster, session, replica="d3")
            assert ws.hello["replica"] != "d3"
            await ws.close()
        response = await asyncio.to_thread(
            api_post, cluster, "/api/push", {"user": "capped0", "payload": "held"}
        )
        assert response.status_code == 200, response.text
        await held[0].wait_for(
            lambda frames: any(f.get("payload") == "held" for f in frames), what="the push"
        )
        for ws in [*held, fifty_first]:
            await ws.close()
    finally:
        await asyncio.to_thread(d3.stop)
        d3.env = original
        await asyncio.to_thread(cluster.start_replica, "d3")
    await asyncio.to_thread(cluster.wait_server_status, "d3", "UP", timeout=30)
