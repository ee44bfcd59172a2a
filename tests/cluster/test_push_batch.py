"""POST /api/push/batch: many pushes in one request, each to its user, in order, once."""

from __future__ import annotations

from devtools.cluster import Cluster
from tests.cluster.helpers import api_post, sessions_for, socket_for


async def test_batch_reaches_each_user_in_the_order_given(healthy_cluster: Cluster) -> None:
    sessions = sessions_for(healthy_cluster, 2, "batch")
    (ann, ann_key), (ben, ben_key) = sorted(sessions.items())
    ann_ws = await socket_for(healthy_cluster, ann_key, replica="d1")
    ben_ws = await socket_for(healthy_cluster, ben_key, replica="d2")
    messages = [{"user": ann if i % 3 else ben, "payload": {"n": i}} for i in range(30)]

    response = api_post(healthy_cluster, "/api/push/batch", {"messages": messages}, replica="d3")

    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["user"] for r in results] == [m["user"] for m in messages]
    for ws, name in ((ann_ws, ann), (ben_ws, ben)):
        wanted = [m["payload"]["n"] for m in messages if m["user"] == name]
        pushes = await ws.wait_type("push", count=len(wanted))
        assert [p["payload"]["n"] for p in pushes] == wanted
        seqs = [p["seq"] for p in pushes]
        assert seqs == list(range(seqs[0], seqs[0] + len(wanted)))
        assert seqs == [r["seq"] for r in results if r["user"] == name]
    await ann_ws.close()
    await ben_ws.close()


async def test_batch_with_an_unknown_user_sends_nothing(healthy_cluster: Cluster) -> None:
    sessions = sessions_for(healthy_cluster, 1, "batchnone")
    ((name, key),) = sessions.items()
    ws = await socket_for(healthy_cluster, key)
    messages = [{"user": name, "payload": 1}, {"user": "nobody-at-all", "payload": 2}]

    response = api_post(healthy_cluster, "/api/push/batch", {"messages": messages})

    assert response.status_code == 404 and response.json()["error"] == "unknown_user"
    assert "nobody-at-all" in response.json()["message"]
    # A push after it arrives first: the refused batch sent nothing before it.
    assert api_post(healthy_cluster, "/api/push", {"user": name, "payload": 3}).status_code == 200
    pushes = await ws.wait_type("push")
    assert [p["payload"] for p in pushes] == [3]
    await ws.close()


def test_batch_refuses_a_malformed_or_oversized_body(cluster: Cluster) -> None:
    for body, code in [
        ({"messages": []}, "bad_messages"),
        ({"messages": [{"user": "alice", "payload": 1}] * 501}, "bad_messages"),
        ({"messages": [{"payload": 1}]}, "bad_user"),
        ({"messages": [{"user": "alice"}]}, "missing_payload"),
    ]:
        response = api_post(cluster, "/api/push/batch", body)
        assert response.status_code == 400 and response.json()["error"] == code, response.text
