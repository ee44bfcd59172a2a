"""The plain ASGI writer: a replica under uvicorn (no Daphne, so no fast path) in the same
cluster delivers the same way, in order, with nothing lost, and resumes the same way."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from urllib.parse import quote

import httpx
import pytest

from devtools.cluster import Cluster, ManagedProcess, free_port, wait_until
from tests.cluster.helpers import api_post, sessions_for
from tests.support.clients import WsClient

# One worker runs this module (make test: --dist loadgroup), so its module fixture starts once.
pytestmark = pytest.mark.xdist_group("asgi_transport")


@pytest.fixture(scope="module")
def uvicorn_replica(cluster: Cluster) -> Iterator[str]:
    """One more replica, `u1`, under uvicorn on the cluster's Redis and database: its URL."""
    port = free_port()
    env = cluster.command_env(REPLICA_ID="u1")
    # Each option beside its value (the formatter would put one per line).
    argv = [
        sys.executable, "-m", "uvicorn", "project.asgi:application", "--host", "127.0.0.1",
        "--port", str(port), "--ws", "websockets", "--no-access-log",
    ]  # fmt: skip
    process = ManagedProcess(
        name="u1", argv=argv, env=env, log_path=cluster.run_dir / "u1.log", port=port
    )
    process.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _healthy(url), timeout=30, what="uvicorn replica u1")
        yield url
    finally:
        process.stop()


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


async def socket_on(url: str, session: str, query: str = "") -> WsClient:
    ws = await WsClient.open(
        url.replace("http://", "ws://") + "/ws/" + query,
        cookie=f"sessionid={session}",
        origin=url,
    )
    await ws.wait_type("hello")
    assert ws.hello["replica"] == "u1"
    return ws


async def test_a_replica_under_uvicorn_uses_the_asgi_writer_and_delivers_in_order(
    cluster: Cluster, uvicorn_replica: str
) -> None:
    async with httpx.AsyncClient() as client:
        health = (await client.get(f"{uvicorn_replica}/healthz", timeout=5)).json()
    assert health["transport"] == "asgi"
    users = sessions_for(cluster, 1, "uvi")
    ws = await socket_on(uvicorn_replica, users["uvi0"])
    for n in range(60):  # published through HAProxy, on the Daphne replicas
        body = {"user": "uvi0", "payload": {"n": n}}
        assert (await asyncio.to_thread(api_post, cluster, "/api/push", body)).status_code == 200
    await ws.wait_type("push", count=60)
    pushes = ws.of_type("push")
    assert [p["payload"]["n"] for p in pushes] == list(range(60))
    assert [p["seq"] for p in pushes] == list(range(pushes[0]["seq"], pushes[0]["seq"] + 60))
    await ws.send_json({"type": "echo", "id": "e", "payload": "through uvicorn"})
    assert (await ws.wait_type("echo"))[0]["replica"] == "u1"
    await ws.close()


async def test_a_socket_on_uvicorn_resumes_what_it_missed(
    cluster: Cluster, uvicorn_replica: str
) -> None:
    users = sessions_for(cluster, 1, "uvires")
    ws = await socket_on(uvicorn_replica, users["uvires0"])
    stream = f"user:{ws.hello['user_id']}"
    for n in range(3):
        await asyncio.to_thread(api_post, cluster, "/api/push", {"user": "uvires0", "payload": n})
    await ws.wait_type("push", count=3)
    position = {"epoch": ws.of_type("push")[-1]["epoch"], "seq": ws.of_type("push")[0]["seq"]}
    await ws.close()
    for n in range(3, 6):
        await asyncio.to_thread(api_post, cluster, "/api/push", {"user": "uvires0", "payload": n})
    query = "?resume=" + quote(json.dumps({stream: position}))
    again = await socket_on(uvicorn_replica, users["uvires0"], query)
    await again.wait_type("resumed")
    assert [p["payload"] for p in again.of_type("push")] == [1, 2, 3, 4, 5]
    resumed = again.of_type("resumed")[0]
    assert (resumed["recovered"], resumed["replayed"]) == (True, 5)
    await again.close()
