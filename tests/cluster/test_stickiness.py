"""HAProxy's SERVERID cookie pins a client to the replica that issued it."""

from collections import Counter

import httpx

from devtools.cluster import Cluster, wait_until


def replica_of(response: httpx.Response) -> str:
    response.raise_for_status()
    return response.headers["X-Replica"]


def test_with_the_cookie_twenty_requests_reach_the_same_replica(cluster: Cluster) -> None:
    with httpx.Client(base_url=cluster.url) as client:
        first = replica_of(client.get("/api/whoami"))
        assert client.cookies["SERVERID"] == first
        seen = Counter(replica_of(client.get("/api/whoami")) for _ in range(20))
    assert seen == {first: 20}


def wait_no_open_sessions(cluster: Cluster) -> None:
    """leastconn spreads evenly only between equally loaded replicas: wait for idle ones."""
    wait_until(
        lambda: all(s["sessions"] == "0" for s in cluster.server_states().values()),
        timeout=15,
        what="every replica to have no open connection",
    )


def test_without_the_cookie_requests_spread_over_all_replicas(cluster: Cluster) -> None:
    wait_no_open_sessions(cluster)
    # A new client per request: no cookie, no kept-alive connection.
    seen = Counter(replica_of(httpx.get(f"{cluster.url}/api/whoami")) for _ in range(30))
    assert set(seen) == set(cluster.replica_names)
    assert min(seen.values()) >= 5, seen


def test_a_cookie_issued_by_a_replica_always_routes_to_it(cluster: Cluster) -> None:
    wait_no_open_sessions(cluster)
    issued: Counter[str] = Counter()
    for _ in range(9):
        with httpx.Client(base_url=cluster.url) as client:
            issuer = replica_of(client.get("/api/whoami"))
            assert client.cookies["SERVERID"] == issuer
            issued[issuer] += 1
            assert {replica_of(client.get("/api/whoami")) for _ in range(5)} == {issuer}
    assert set(issued) == set(cluster.replica_names)


def test_client_ip_comes_from_haproxy_not_from_the_client(cluster: Cluster) -> None:
    spoofed = httpx.get(f"{cluster.url}/api/whoami", headers={"X-Forwarded-For": "203.0.113.9"})
    assert spoofed.json()["client_ip"] == "127.0.0.1"


def test_every_replica_reports_health(cluster: Cluster) -> None:
    for name in cluster.replica_names:
        health = cluster.replica_health(name)
        assert health["replica"] == name
        assert health["redis"]["reachable"] is True  # type: ignore[index]
