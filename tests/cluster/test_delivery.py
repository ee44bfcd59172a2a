"""Pushes and broadcasts reach users wherever their sockets live, and only them."""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter

import httpx

from devtools.cluster import Cluster
from tests.cluster.helpers import api_post, api_token, sessions_for, socket_for
from tests.conftest import manage
from tests.support.clients import login


def pushes(ws, marker: str) -> list:  # type: ignore[no-untyped-def]
    return [f["payload"] for f in ws.of_type("push") if f["payload"].get("marker") == marker]


async def test_push_reaches_user_on_other_replica(cluster: Cluster) -> None:
    users = sessions_for(cluster, 1, "cross")
    ws = await socket_for(cluster, users["cross0"], replica="d1")
    assert ws.hello["replica"] == "d1"
    answer = await asyncio.to_thread(
        api_post,
        cluster,
        "/api/push",
        {"user": "cross0", "payload": {"marker": "cross", "n": 1}},
        replica="d2",
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["replica"] == "d2"
    assert answer.headers["X-Replica"] == "d2"
    await ws.wait_for(lambda _: pushes(ws, "cross"), what="the push from d2")
    push = ws.of_type("push")[0]
    assert push["origin"] == "d2" and push["stream"] == f"user:{ws.hello['user_id']}"
    assert pushes(ws, "cross") == [{"marker": "cross", "n": 1}]
    await ws.close()


async def test_push_from_manage_py_in_another_process_reaches_the_user(cluster: Cluster) -> None:
    users = sessions_for(cluster, 1, "cli")
    ws = await socket_for(cluster, users["cli0"])
    result = await asyncio.to_thread(
        manage, cluster, "push", "--user", "cli0", "--json", '{"marker": "cli", "text": "hi"}'
    )
    assert json.loads(result.stdout)["ok"] is True
    await ws.wait_for(lambda _: pushes(ws, "cli"), what="the push from manage.py")
    assert pushes(ws, "cli") == [{"marker": "cli", "text": "hi"}]
    await ws.close()


async def test_broadcast_reaches_users_on_every_replica(cluster: Cluster) -> None:
    users = sessions_for(cluster, 3, "wide")
    sockets = [
        await socket_for(cluster, key, replica=replica)
        for key, replica in zip(users.values(), cluster.replica_names, strict=True)
    ]
    assert {ws.hello["replica"] for ws in sockets} == set(cluster.replica_names)
    answer = await asyncio.to_thread(api_post, cluster, "/api/broadcast", {"payload": {"b": 1}})
    assert answer.status_code == 200, answer.text
    message_id = answer.json()["id"]
    cli = await asyncio.to_thread(manage, cluster, "broadcast", "from the command line")
    cli_id = json.loads(cli.stdout)["id"]
    for ws in sockets:
        await ws.wait_for(
            lambda frames: {f.get("id") for f in frames} >= {message_id, cli_id},
            what="both broadcasts",
        )
        assert [f["id"] for f in ws.of_type("broadcast")] == [message_id, cli_id]
        await ws.close()


async def test_user_never_receives_another_users_push(cluster: Cluster) -> None:
    users = sessions_for(cluster, 2, "private")
    alice = await socket_for(cluster, users["private0"], replica="d3")
    bob = await socket_for(cluster, users["private1"], replica="d3")
    for n in range(20):
        response = api_post(
            cluster, "/api/push", {"user": "private1", "payload": {"marker": "b", "n": n}}
        )
        assert response.status_code == 200
    # Published after bob's 20, on the same replica's subscription: when alice has it,
    # anything of bob's that could have leaked to her has arrived too.
    assert (
        api_post(cluster, "/api/push", {"user": "private0", "payload": {"marker": "a"}}).status_code
        == 200
    )
    await bob.wait_for(lambda _: len(pushes(bob, "b")) == 20, what="bob's 20 pushes")
    await alice.wait_for(lambda _: pushes(alice, "a"), what="alice's own push")
    assert [f["payload"] for f in alice.of_type("push")] == [{"marker": "a"}]
    assert [p["n"] for p in pushes(bob, "b")] == list(range(20))
    assert not pushes(bob, "a")
    await alice.close()
    await bob.close()


async def test_burst_of_1000_pushes_to_100_users_loses_and_duplicates_nothing(
    cluster: Cluster,
) -> None:
    users = sessions_for(cluster, 100, "burst")
    names = sorted(users)
    sockets = dict(
        zip(
            names,
            await asyncio.gather(*(socket_for(cluster, users[n]) for n in names)),
            strict=True,
        )
    )
    spread = Counter(ws.hello["replica"] for ws in sockets.values())
    assert set(spread) == set(cluster.replica_names), spread
    token = api_token(cluster)
    expected: dict[str, list[int]] = {name: [] for name in names}
    order = list(range(1000))
    random.Random(7).shuffle(order)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in order:
        queue.put_nowait(n)
        expected[names[n % 100]].append(n)
    failures: list[str] = []

    async def sender() -> None:
        # No SERVERID cookie and fresh connections: pushes land on random replicas.
        async with httpx.AsyncClient(
            base_url=cluster.url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
            limits=httpx.Limits(max_keepalive_connections=0),
        ) as client:
            while not queue.empty():
                n = queue.get_nowait()
                body = {"user": names[n % 100], "payload": {"marker": "burst", "n": n}}
                response = await client.post("/api/push", json=body)
                if response.status_code != 200:
                    failures.append(f"{n}: {response.status_code} {response.text}")

    await asyncio.gather(*(sender() for _ in range(16)))
    assert failures == []
    for name, ws in sockets.items():
        await ws.wait_for(
            lambda _, ws=ws, name=name: len(pushes(ws, "burst")) >= len(expected[name]),
            timeout=60,
            what=f"{name}'s pushes",
        )
    for name, ws in sockets.items():
        received = [p["n"] for p in pushes(ws, "burst")]
        assert sorted(received) == sorted(expected[name]), name  # none lost, none foreign
        assert len(received) == len(set(received)) == 10, name  # none duplicated
    await asyncio.gather(*(ws.close() for ws in sockets.values()))


async def test_staff_session_may_push_with_csrf_token(cluster: Cluster) -> None:
    users = sessions_for(cluster, 1, "fromstaff")
    ws = await socket_for(cluster, users["fromstaff0"])
    admin = await asyncio.to_thread(login, cluster.url, "admin", "admin-pass")
    body = {"user": "fromstaff0", "payload": {"marker": "staff"}}
    without = await asyncio.to_thread(admin.post, "/api/push", json=body)
    assert without.status_code == 403 and without.json()["error"] == "csrf_failed"
    with_token = await asyncio.to_thread(
        admin.post, "/api/push", json=body, headers={"X-CSRFToken": admin.cookies["csrftoken"]}
    )
    assert with_token.status_code == 200, with_token.text
    await ws.wait_for(lambda _: pushes(ws, "staff"), what="the staff push")
    assert len(pushes(ws, "staff")) == 1  # the refused request sent nothing
    admin.close()
    await ws.close()
