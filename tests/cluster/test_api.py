"""The publish API: who may call it, and what it answers when something is wrong."""

from __future__ import annotations

import csv

import httpx
import pytest

from devtools.cluster import Cluster
from tests.cluster.helpers import api_post
from tests.support.clients import login


def test_api_without_auth_answers_401_with_json(cluster: Cluster) -> None:
    for path in ("/api/push", "/api/broadcast"):
        response = httpx.post(f"{cluster.url}{path}", json={"user": "alice", "payload": 1})
        assert response.status_code == 401
        assert response.json()["error"] == "not_authenticated"
        assert response.json()["replica"] in cluster.replica_names


def test_api_with_an_unknown_token_answers_401(cluster: Cluster) -> None:
    response = api_post(cluster, "/api/broadcast", {"payload": 1}, token="sb_not-a-real-token")
    assert response.status_code == 401 and response.json()["error"] == "invalid_token"


def test_api_for_a_non_staff_user_answers_403(cluster: Cluster) -> None:
    bob = login(cluster.url, "bob", "bob-pass")
    response = bob.post(
        "/api/broadcast", json={"payload": 1}, headers={"X-CSRFToken": bob.cookies["csrftoken"]}
    )
    bob.close()
    assert response.status_code == 403 and response.json()["error"] == "forbidden"


def test_push_to_an_unknown_user_answers_404(cluster: Cluster) -> None:
    response = api_post(cluster, "/api/push", {"user": "nobody-here", "payload": 1})
    assert response.status_code == 404
    assert response.json()["error"] == "unknown_user"
    assert "nobody-here" in response.json()["message"]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"not json {", 400, "bad_json"),
        ("a string", 400, "bad_json"),
        ([1, 2], 400, "bad_json"),
        ({"payload": 1}, 400, "bad_user"),
        ({"user": "alice"}, 400, "missing_payload"),
        ({"user": "alice", "payload": "x" * 70_000}, 413, "payload_too_large"),
    ],
)
def test_malformed_push_answers_a_clear_error(
    cluster: Cluster, body: object, status: int, code: str
) -> None:
    response = api_post(cluster, "/api/push", body)
    assert (response.status_code, response.json()["error"]) == (status, code)


def test_api_rejects_get(cluster: Cluster) -> None:
    assert httpx.get(f"{cluster.url}/api/push").status_code == 405


def _publishers_served(cluster: Cluster) -> dict[str, int]:
    """Requests each server of HAProxy's `publishers` backend (the publish ports) took."""
    rows = httpx.get(f"{cluster.stats_url};csv", timeout=5).text.lstrip("# ").splitlines()
    table = list(csv.DictReader(rows))
    return {
        row["svname"]: int(row["stot"])
        for row in table
        if row["pxname"] == "publishers" and row["svname"] not in ("FRONTEND", "BACKEND")
    }


def test_token_publishes_go_to_the_pinned_replicas_publish_port_and_sessions_to_django(
    cluster: Cluster,
) -> None:
    before = _publishers_served(cluster)
    assert set(before) == set(cluster.replica_names), "each replica has its publish port"
    for replica in cluster.replica_names:
        for n in range(3):
            answer = api_post(
                cluster, "/api/push", {"user": "alice", "payload": n}, replica=replica
            )
            assert answer.status_code == 200 and answer.headers["X-Replica"] == replica
    after = _publishers_served(cluster)
    assert {r: after[r] - before[r] for r in after} == dict.fromkeys(cluster.replica_names, 3)
    # A staff session's publish (cookie and CSRF) is Django's: the publish ports see none of it.
    staff = login(cluster.url, "admin", "admin-pass")
    answer = staff.post(
        "/api/broadcast", json={"payload": 1}, headers={"X-CSRFToken": staff.cookies["csrftoken"]}
    )
    staff.close()
    assert answer.status_code == 200
    assert _publishers_served(cluster) == after
