"""Drain and rolling restarts: every replica drained, restarted and re-admitted in turn while
messages flow; each socket leaves in the slot its replica gave it, resumes elsewhere, and every
client ends with everything once, in order, without one socket closed under it. The test prints
the busiest second a surviving replica saw; the kill test in test_reliability.py prints the same
for replicas killed outright."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import httpx
import pytest

from devtools import rolling
from devtools.cluster import Cluster, wait_until
from tests.cluster.helpers import sessions_for, socket_for
from tests.support.harness import ConnectRateSampler, Harness, unique_prefix

pytestmark = pytest.mark.timeout(300)

WINDOW_SECS = 1.5  # what the rolling restart asks for
PROCESS_WINDOW_SECS = 2.0  # the tests' cluster's DRAIN_WINDOW_SECS (tests/conftest.py): SIGTERM's


async def test_a_rolling_restart_under_load_loses_duplicates_and_reorders_nothing(
    cluster: Cluster,
) -> None:
    harness = Harness(cluster, clients=60, rooms=3, prefix=unique_prefix("rolling"))
    try:
        await harness.open_clients()
        late = await asyncio.to_thread(sessions_for, cluster, 1, "latecomer")
        # Steady publishing the whole time: ~1 500 messages, paced by the publishers' requests.
        progress = harness.start_publishing(
            harness.plan(pushes=1200, broadcasts=100, room_messages=200)
        )
        await progress.reached(100)
        started = time.monotonic()
        with ConnectRateSampler(cluster) as sampler:
            # All three, drained, restarted and re-admitted one after another; meanwhile a
            # client whose cookie names d1 is sent elsewhere while d1 drains.
            rolling_restart = asyncio.create_task(
                asyncio.to_thread(
                    rolling.restart_rolling, cluster, window_secs=WINDOW_SECS, say=lambda _: None
                )
            )
            await asyncio.to_thread(_until_draining, cluster, "d1")
            elsewhere = await socket_for(cluster, next(iter(late.values())), replica="d1")
            assert elsewhere.hello["replica"] != "d1"  # cookie holders go elsewhere at once
            await elsewhere.close()
            steps = await rolling_restart
        total_secs = time.monotonic() - started
        await harness.publishing_done()
        await harness.wait_delivered(timeout=60)
        report = harness.verify()
        moves = sum(c.stats.moves for c in harness.clients)
        print(
            "rolling restart:",
            json.dumps(
                {
                    "restart_secs": round(total_secs, 1),
                    "steps": steps,
                    "peak_connects_per_sec": sampler.peak_per_sec(),
                    "moves": moves,
                    **report.__dict__,
                }
            ),
        )
        assert [step["replica"] for step in steps] == cluster.replica_names
        assert (report.gaps, report.duplicates, report.reorders, report.mismatched) == (0, 0, 0, 0)
        assert report.received == report.expected_deliveries
        assert report.resets == 0  # nothing was lost, so nobody was told so
        # Every socket left in its slot (a `reconnect` frame) rather than being closed on.
        assert moves == report.reconnects > 0
        assert all(c.closed_code != 1012 for c in harness.clients)
    finally:
        await harness.close()


def _until_draining(cluster: Cluster, name: str) -> None:
    def draining() -> bool:
        answer = httpx.get(f"{cluster.replica_url(name)}/readyz", timeout=2)
        return answer.status_code == 503 and "draining" in " ".join(answer.json()["reasons"])

    wait_until(draining, timeout=10, interval=0.02, what=f"{name} to drain")


async def test_sigterm_drains_a_replica_before_it_exits(cluster: Cluster) -> None:
    """A replica told to stop (SIGTERM, as systemd, Docker or Kubernetes do) first gives its
    sockets their slots, closes the ones that stay with 1012, then exits."""
    users = await asyncio.to_thread(sessions_for, cluster, 1, "sigterm")
    # A raw socket that reads the frame but does not move, as an old client would.
    stays = await socket_for(cluster, next(iter(users.values())), replica="d3")
    assert stays.hello["replica"] == "d3"
    process = cluster.processes["d3"]
    process.signal(signal.SIGTERM)
    (told,) = await stays.wait_type("reconnect", timeout=5)
    assert told["reason"] == "draining" and 0 <= told["after_ms"] <= PROCESS_WINDOW_SECS * 1000
    assert await stays.wait_closed(timeout=PROCESS_WINDOW_SECS + 5) == 1012
    await asyncio.to_thread(process.popen.wait, PROCESS_WINDOW_SECS + 10)  # type: ignore[union-attr]
    assert process.popen.returncode is not None  # type: ignore[union-attr]
    await asyncio.to_thread(cluster.start_replica, "d3")
    await asyncio.to_thread(cluster.wait_server_status, "d3", "UP", timeout=30)
