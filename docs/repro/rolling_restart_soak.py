"""A rolling restart at #14's load, and a replica killed outright at the same load, for comparison.

300 clients (switchboard_client, over 3 replicas through HAProxy, each on its user stream, the
broadcast and 3 rooms) while 50 pushes and 5 broadcasts a second flow, paced; then either every
replica is drained, restarted and re-admitted in turn (DRAIN_WINDOW_SECS, 10 s by default), or
one replica is killed with SIGKILL and restarted. Each run prints the restart's total time, the
busiest second every replica saw (connects accepted), and what the clients got: every client
must end with every message once, in order.

It is the suite's tests/cluster/test_drain.py at full size: too long for the suite (the restart
alone takes ~45 s), run by hand:

    .venv/bin/python docs/repro/rolling_restart_soak.py [--window 10] [--clients 300]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(BASE_DIR), str(BASE_DIR / "clients" / "python")]
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

import django  # noqa: E402

django.setup()

from devtools import rolling  # noqa: E402
from devtools.cluster import Cluster, ClusterConfig  # noqa: E402
from tests.conftest import manage  # noqa: E402
from tests.support.harness import ConnectRateSampler, Harness, unique_prefix  # noqa: E402

PUSHES_PER_SEC = 50
BROADCASTS_PER_SEC = 5


async def paced_publishing(harness: Harness, stop: asyncio.Event) -> int:
    """50 pushes and 5 broadcasts a second (in ticks of 100 ms) until `stop`; how many."""
    sent, tick = 0, 0
    started = time.monotonic()
    while not stop.is_set():
        targets = [harness.rng.choice(harness.user_streams) for _ in range(PUSHES_PER_SEC // 10)]
        if tick % 2 == 0:
            targets.append("broadcast")
        await harness.publish_all(targets, concurrency=8, round_name=f"t{tick}")
        sent += len(targets)
        tick += 1
        await asyncio.sleep(max(0.0, started + tick * 0.1 - time.monotonic()))
    return sent


async def one_run(
    cluster: Cluster, *, clients: int, window: float, kill: bool
) -> dict[str, object]:
    harness = Harness(cluster, clients=clients, rooms=3, prefix=unique_prefix("soak"))
    try:
        await harness.open_clients()
        stop = asyncio.Event()
        publishing = asyncio.create_task(paced_publishing(harness, stop))
        await asyncio.sleep(3)  # steady state first
        started = time.monotonic()
        with ConnectRateSampler(cluster) as sampler:
            if kill:
                await asyncio.to_thread(cluster.kill_replica, "d1")
                await asyncio.to_thread(cluster.start_replica, "d1")
                await asyncio.to_thread(cluster.wait_server_status, "d1", "UP", timeout=60)
                steps: object = "d1 killed and restarted"
            else:
                steps = await asyncio.to_thread(
                    rolling.restart_rolling, cluster, window_secs=window, say=print
                )
            await asyncio.sleep(3)
        total = time.monotonic() - started
        stop.set()
        sent = await publishing
        await harness.wait_delivered(timeout=120)
        report = harness.verify()
        return {
            "mode": "kill d1" if kill else f"rolling restart, window {window:g} s",
            "secs": round(total, 1),
            "steps": steps,
            "peak_connects_per_sec": sampler.peak_per_sec(),
            "messages_during": sent,
            "moves": sum(c.stats.moves for c in harness.clients),
            **report.__dict__,
        }
    finally:
        await harness.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=300)
    parser.add_argument("--window", type=float, default=10.0)
    args = parser.parse_args()
    run_dir = Path(tempfile.mkdtemp(prefix="sb-soak-"))
    env = {
        "SWITCHBOARD_VAR_DIR": str(run_dir),
        "SECRET_KEY": "soak-" + os.urandom(8).hex(),
        "DRAIN_WINDOW_SECS": str(args.window),
        "LOG_LEVEL": "WARNING",
    }
    config = ClusterConfig(
        replicas=3, run_dir=run_dir / "run", env=env, ws_connects_per_ip_10s=1_000_000
    )
    cluster = Cluster(config)
    manage(cluster, "migrate", "--noinput", "-v0")
    cluster.start()
    try:
        for kill in (False, True):
            result = asyncio.run(
                one_run(cluster, clients=args.clients, window=args.window, kill=kill)
            )
            print(json.dumps(result))
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
