"""A client that stops reading: past SOCKET_BACKLOG_MAX_BYTES waiting for its socket (256 KiB in
the test cluster) the replica stops writing to it and holds nothing more for it; everyone else's
delivery goes on, and once it reads again it gets every message, in order, on the same socket."""

from __future__ import annotations

import asyncio

import httpx

from devtools.cluster import Cluster
from tests.cluster.helpers import api_post, sessions_for, socket_for

PAYLOAD = "x" * 30_000  # frames of ~30 KB: the backlog grows fast
# A bound: 1,800 pushes (54 MB) to the stuck client at most. Loopback's kernel buffers between
# the replica, HAProxy and the client take ~10 MB before the replica's own buffer grows.
BATCHES = 60
MORE_AFTER_BACKLOG = 5  # batches published while the replica is holding back


def frames_deferred(cluster: Cluster, replica: str) -> int:
    health = httpx.get(f"{cluster.replica_url(replica)}/healthz", timeout=10).json()
    return int(health["stats"]["frames_deferred"])


async def test_a_client_that_stops_reading_gets_everything_in_order_once_it_reads_again(
    healthy_cluster: Cluster,
) -> None:
    cluster = healthy_cluster
    (stuck, stuck_key), (steady, steady_key) = sorted(sessions_for(cluster, 2, "stuck").items())
    stuck_ws = await socket_for(cluster, stuck_key, replica="d1")
    steady_ws = await socket_for(cluster, steady_key, replica="d1")
    stuck_ws.reading.clear()
    deferred_before = await asyncio.to_thread(frames_deferred, cluster, "d1")

    sent, more = 0, MORE_AFTER_BACKLOG
    for batch in range(BATCHES):
        messages = [
            {"user": user, "payload": {"n": batch * 15 + i, "pad": PAYLOAD}}
            for i in range(15)
            for user in (stuck, steady)
        ]
        # In a thread: this loop keeps reading the steady client meanwhile.
        response = await asyncio.to_thread(
            api_post, cluster, "/api/push/batch", {"messages": messages}
        )
        assert response.status_code == 200, response.text
        sent += 15
        if await asyncio.to_thread(frames_deferred, cluster, "d1") > deferred_before:
            more -= 1
            if not more:
                break
    deferred = await asyncio.to_thread(frames_deferred, cluster, "d1") - deferred_before
    print(f"sent {sent} pushes of 30 KB to each; {deferred} deferred for the stuck client")
    assert more == 0, "the replica never held back: the stuck client's backlog never grew"
    assert deferred >= 15 * (MORE_AFTER_BACKLOG - 1)

    # The client on the same replica that kept reading got everything, in order.
    pushes = await steady_ws.wait_type("push", count=sent, timeout=30)
    assert [p["payload"]["n"] for p in pushes] == list(range(sent))

    # The stuck client reads again: everything arrives, in order, once, on the same socket.
    stuck_ws.reading.set()
    pushes = await stuck_ws.wait_type("push", count=sent, timeout=60)
    assert [p["payload"]["n"] for p in pushes] == list(range(sent))
    seqs = [p["seq"] for p in pushes]
    assert seqs == list(range(seqs[0], seqs[0] + sent))
    assert stuck_ws.closed_code is None and len(stuck_ws.of_type("hello")) == 1
    await stuck_ws.close()
    await steady_ws.close()
