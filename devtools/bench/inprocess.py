"""In-process publishing: what a call from Django code costs, sync and async (`--inprocess`).

Most Django code is sync (views, admin actions, management commands, task queue workers, WSGI
processes), and it publishes with `publish.push_to_user_sync(...)` (or `sending.push`). This
starts a redis-server of its own, points the default layer at it, and times, in this process:

  sync          push_to_user_sync, one call after another from sync code
  sync x4       the same from 4 threads at once (a threaded WSGI server or worker)
  async         await push_to_user, one after another
  async x16     16 in flight on one event loop
  async_to_sync the old sync path (a loop and a thread hand-off per call), for comparison
  raw PUBLISH   a bare sync redis-py PUBLISH: the floor for one round trip

Per row: calls per second, this process's CPU per call (user + system, from process_time) and
wall time per call. The publishes are real: the broker's script numbers and stores each one.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import redis
from asgiref.sync import async_to_sync
from channels.layers import channel_layers, get_channel_layer
from django.test import override_settings

from devtools.cluster import ManagedProcess, free_port, wait_until
from devtools.redis_topology import redis_server_argv
from realtime import publish

USERS = 100
WARM_UP = 300


@dataclass
class Row:
    name: str
    calls: int
    wall_secs: float
    cpu_secs: float

    @property
    def per_sec(self) -> float:
        return self.calls / self.wall_secs if self.wall_secs else 0.0

    @property
    def cpu_ms(self) -> float:
        return self.cpu_secs / self.calls * 1000

    @property
    def wall_ms(self) -> float:
        return self.wall_secs / self.calls * 1000


def _timed(name: str, calls: int, run: Callable[[], object]) -> Row:
    cpu, wall = time.process_time(), time.perf_counter()
    run()
    return Row(name, calls, time.perf_counter() - wall, time.process_time() - cpu)


def _payload(n: int) -> dict[str, Any]:
    return {"n": n, "text": "in-process publish"}


def _sync_calls(calls: int, start: int = 0) -> None:
    for n in range(start, start + calls):
        publish.push_to_user_sync(user_id=n % USERS + 1, payload=_payload(n))


def _threads(calls: int, threads: int) -> None:
    share = calls // threads
    workers = [
        threading.Thread(target=_sync_calls, args=(share, i * share)) for i in range(threads)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


async def _async_calls(calls: int, in_flight: int) -> None:
    numbers = iter(range(calls))

    async def worker() -> None:
        for n in numbers:
            await publish.push_to_user(user_id=n % USERS + 1, payload=_payload(n))

    await asyncio.gather(*(worker() for _ in range(in_flight)))


def _async_rows(calls: int) -> list[Row]:
    async def run() -> list[Row]:
        await _async_calls(WARM_UP, 1)
        rows = []
        for name, in_flight in (("async", 1), ("async x16", 16)):
            cpu, wall = time.process_time(), time.perf_counter()
            await _async_calls(calls, in_flight)
            rows.append(Row(name, calls, time.perf_counter() - wall, time.process_time() - cpu))
        await get_channel_layer().flush()  # type: ignore[union-attr]
        return rows

    return asyncio.run(run())


def measure(calls: int, var_dir: Path) -> list[Row]:
    var_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = redis_server_argv(port, var_dir, name="bench-inprocess", persistence=False)
    server = ManagedProcess(
        name="bench-inprocess", argv=argv, env={}, log_path=var_dir / "redis.log", port=port
    )
    server.start()
    url = f"redis://127.0.0.1:{port}/0"
    layers = {
        "default": {
            "BACKEND": "realtime.layer.StreamChannelLayer",
            "CONFIG": {"hosts": [url], "prefix": "inproc"},
        }
    }
    try:
        wait_until(partial(_answers, port), timeout=15, what="the bench's redis-server")
        with override_settings(CHANNEL_LAYERS=layers):
            channel_layers.backends.clear()
            _sync_calls(WARM_UP)
            rows = [
                _timed("sync", calls, partial(_sync_calls, calls)),
                _timed("sync x4 threads", calls, partial(_threads, calls, 4)),
            ]
            rows += _async_rows(calls)
            old = async_to_sync(publish.push_to_user)
            rows.append(
                _timed(
                    "async_to_sync (old)",
                    calls // 4,
                    lambda: [
                        old(user_id=n % USERS + 1, payload=_payload(n)) for n in range(calls // 4)
                    ],
                )
            )
            bare = redis.Redis.from_url(url)
            rows.append(
                _timed(
                    "raw redis-py PUBLISH",
                    calls,
                    lambda: [bare.publish("bench", b"x" * 100) for _ in range(calls)],
                )
            )
            bare.close()
            get_channel_layer().broker.close_sync()  # type: ignore[union-attr]
            channel_layers.backends.clear()
    finally:
        server.stop()
    return rows


def _answers(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(16).startswith(b"+PONG")


def lines(rows: list[Row]) -> list[str]:
    out = [
        "In-process publishing (push_to_user to 100 users, the broker's script, this process's "
        "CPU per call):",
        f"{'how':<22} {'calls':>7} {'calls/s':>9} {'cpu ms/call':>11} {'wall ms/call':>12}",
    ]
    for row in rows:
        out.append(
            f"{row.name:<22} {row.calls:>7} {row.per_sec:>9,.0f} {row.cpu_ms:>11.3f} "
            f"{row.wall_ms:>12.3f}"
        )
    return out
