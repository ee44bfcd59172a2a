"""The transport lab's endpoints and the ops stream, through HAProxy with real sockets.

Way 3 (an HTTP request answered over the user's socket) works only on the replica holding the
socket; way 4 (through the channel layer) works from every replica; /lab/nosticky/ ignores
the SERVERID cookie; the ops stream and the cluster view are for staff only.
"""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

import httpx

from devtools.cluster import Cluster
from tests.support.clients import WsClient, cookie_header, login, open_user_socket

PASSWORDS = {"alice": "alice-pass", "bob": "bob-pass", "admin": "admin-pass"}


def pin(client: httpx.Client, replica: str) -> httpx.Client:
    """Make `client`'s next requests go to `replica`, by its SERVERID cookie."""
    client.cookies.delete("SERVERID")
    client.cookies.set("SERVERID", replica, domain="127.0.0.1")
    return client


def pinned(cluster: Cluster, username: str, replica: str) -> httpx.Client:
    """A logged-in client whose SERVERID cookie names `replica`."""
    return pin(login(cluster.url, username, PASSWORDS[username]), replica)


def lab_post(client: httpx.Client, path: str, body: dict[str, Any]) -> httpx.Response:
    return client.post(path, json=body, headers={"X-CSRFToken": client.cookies["csrftoken"]})


async def barrier(ws: WsClient, tag: str) -> None:
    """Wait for an echo sent now: anything written to the socket before it has arrived too."""
    await ws.send_json({"type": "echo", "id": tag, "payload": tag})
    await ws.wait_for(lambda frames: any(f.get("id") == tag for f in frames), what=f"echo {tag}")


async def test_way3_is_answered_over_the_socket_only_by_the_replica_holding_it(
    healthy_cluster: Cluster,
) -> None:
    alice = pinned(healthy_cluster, "alice", "d2")
    ws = await open_user_socket(healthy_cluster.ws_url, alice)
    try:
        assert ws.hello["replica"] == "d2"
        connection = ws.hello["connection"]
        answers = {}
        for replica in healthy_cluster.replica_names:
            body = {"text": f"via {replica}", "id": f"m-{replica}", "connection": connection}
            answers[replica] = lab_post(pin(alice, replica), "/lab/direct", body).json()
        await barrier(ws, "after-direct")
        assert {r: (a["replica"], a["held"], a["sent"]) for r, a in answers.items()} == {
            "d1": ("d1", False, False),
            "d2": ("d2", True, True),
            "d3": ("d3", False, False),
        }
        lab_frames = ws.of_type("lab")
        assert [(f["id"], f["replica"], f["text"]) for f in lab_frames] == [
            ("m-d2", "d2", "via d2")
        ]
    finally:
        await ws.close()
        alice.close()


async def test_way3_never_writes_to_another_users_socket(healthy_cluster: Cluster) -> None:
    alice = pinned(healthy_cluster, "alice", "d1")
    bob = pinned(healthy_cluster, "bob", "d1")
    ws = await open_user_socket(healthy_cluster.ws_url, alice)
    try:
        body = {"text": "not yours", "id": "b1", "connection": ws.hello["connection"]}
        answer = lab_post(bob, "/lab/direct", body).json()
        assert (answer["replica"], answer["held"], answer["sent"]) == ("d1", False, False)
        await barrier(ws, "after-bob")
        assert ws.of_type("lab") == []
    finally:
        await ws.close()
        alice.close()
        bob.close()


async def test_way4_reaches_the_socket_whichever_replica_took_the_request(
    healthy_cluster: Cluster,
) -> None:
    alice = pinned(healthy_cluster, "alice", "d3")
    ws = await open_user_socket(healthy_cluster.ws_url, alice)
    try:
        for replica in healthy_cluster.replica_names:
            body = {"text": f"via {replica}", "id": replica}
            answer = lab_post(pin(alice, replica), "/lab/relay", body)
            assert answer.json()["replica"] == replica and answer.json()["sockets"] >= 1
        await ws.wait_type("push", count=3)
        pushes = [f for f in ws.of_type("push") if f["payload"].get("lab") == 4]
        assert [(f["origin"], f["payload"]["text"]) for f in pushes] == [
            ("d1", "via d1"),
            ("d2", "via d2"),
            ("d3", "via d3"),
        ]
    finally:
        await ws.close()
        alice.close()


def test_nosticky_prefix_ignores_the_cookie_and_sets_none(healthy_cluster: Cluster) -> None:
    alice = pinned(healthy_cluster, "alice", "d1")
    try:
        sticky, loose = [], []
        for index in range(6):
            body = {"text": "x", "id": f"n{index}"}
            sticky.append(lab_post(alice, "/lab/http", body).json()["replica"])
            answer = lab_post(alice, "/lab/nosticky/http", body)
            loose.append(answer.json()["replica"])
            assert "SERVERID" not in answer.headers.get("set-cookie", "")
        assert sticky == ["d1"] * 6
        # Round robin over three replicas: six requests reach all of them.
        assert set(loose) == {"d1", "d2", "d3"}
        assert alice.cookies["SERVERID"] == "d1"
    finally:
        alice.close()


def test_lab_endpoints_need_a_login_a_csrf_token_and_a_sane_body(healthy_cluster: Cluster) -> None:
    with httpx.Client(base_url=healthy_cluster.url) as anonymous:
        assert anonymous.post("/lab/http", json={"text": "x", "id": "1"}).status_code == 403
        anonymous.get("/accounts/login/")  # a CSRF cookie, but no session
        answer = lab_post(anonymous, "/lab/http", {"text": "x", "id": "1"})
        assert answer.status_code == 302 and "/accounts/login/" in answer.headers["location"]
    alice = login(healthy_cluster.url, "alice", "alice-pass")
    try:
        assert alice.post("/lab/http", json={"text": "x", "id": "1"}).status_code == 403  # no CSRF
        assert lab_post(alice, "/lab/http", {"text": "", "id": "1"}).json()["error"] == "bad_text"
        assert lab_post(alice, "/lab/http", {"text": "x" * 501, "id": "1"}).status_code == 400
        missing = lab_post(alice, "/lab/direct", {"text": "x", "id": "1"})
        assert missing.json()["error"] == "bad_connection"
        assert alice.get("/lab/http").status_code == 405
        assert alice.get("/lab/").status_code == 200
    finally:
        alice.close()


async def test_ops_stream_refuses_non_staff_and_feeds_staff_reports_from_every_replica(
    healthy_cluster: Cluster,
) -> None:
    alice = login(healthy_cluster.url, "alice", "alice-pass")
    admin = login(healthy_cluster.url, "admin", "admin-pass")
    resume = urllib.parse.quote(json.dumps({"ops": {"epoch": None, "seq": 0}}))
    alice_ws = await open_user_socket(healthy_cluster.ws_url, alice)
    alice_url_ws = await WsClient.open(
        f"{healthy_cluster.ws_url}?resume={resume}", cookie=cookie_header(alice.cookies)
    )
    admin_ws = await open_user_socket(healthy_cluster.ws_url, admin)
    try:
        await alice_ws.send_json({"type": "subscribe", "stream": "ops", "id": "s1"})
        errors = await alice_ws.wait_type("error")
        assert (errors[0]["code"], errors[0]["ref"]) == ("forbidden_stream", "s1")
        # Asking through the URL is refused the same way, and the socket stays open.
        errors = await alice_url_ws.wait_type("error")
        assert errors[0]["code"] == "forbidden_stream"
        assert "ops" not in alice_url_ws.hello["streams"]
        await admin_ws.send_json({"type": "subscribe", "stream": "ops", "id": "s2"})
        await admin_ws.wait_for(
            lambda frames: (
                {f["payload"]["replica"] for f in frames if f.get("type") == "ops"}
                == {"d1", "d2", "d3"}
            ),
            timeout=10,
            what="an ops report from each replica",
        )
        report = admin_ws.of_type("ops")[-1]["payload"]
        assert report["redis"]["reachable"] is True
        # The numbers /metrics exports, as the page shows them; the replicas check readiness
        # every second, which runs the loop-lag watcher.
        assert report["deliveries_per_sec"] >= 0 and 0 <= report["loop_lag_ms"] < 1000
        assert report["draining"] is False and report["replayed_total"] >= 0
        assert {name: view["status"] for name, view in report["haproxy"].items()} == {
            "d1": "UP",
            "d2": "UP",
            "d3": "UP",
        }
        await barrier(alice_ws, "after-ops")
        assert alice_ws.of_type("ops") == [] and alice_url_ws.of_type("ops") == []
    finally:
        for ws in (alice_ws, alice_url_ws, admin_ws):
            await ws.close()
        alice.close()
        admin.close()


def test_cluster_view_is_for_staff_only(healthy_cluster: Cluster) -> None:
    anonymous = httpx.get(f"{healthy_cluster.url}/cluster/")
    assert anonymous.status_code == 302 and "/accounts/login/" in anonymous.headers["location"]
    alice = login(healthy_cluster.url, "alice", "alice-pass")
    admin = login(healthy_cluster.url, "admin", "admin-pass")
    try:
        assert alice.get("/cluster/").status_code == 403
        page = admin.get("/cluster/")
        assert page.status_code == 200
        assert 'id="cluster-initial"' in page.text and '"d3": {"status": "UP"' in page.text
    finally:
        alice.close()
        admin.close()
