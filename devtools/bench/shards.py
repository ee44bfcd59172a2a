"""What sharding buys: Redis CPU per publish on each shard, with 1 shard and with N, in one run.

Each run starts its own redis-servers (as the cluster runner does), publishes through the
broker's own path (lua/publish.lua, with history, marks and the membership read, as every
publish does) to user streams spread by name over the shards, from this process with a fixed
number of publishes in flight, and reads each redis-server's CPU time from /proc before and
after. Per shard: the publishes it took, its CPU, and the CPU per publish. A shard's CPU per
publish should stay what one Redis spends, while each shard takes 1/N of the publishes: the
capacity a deployment adds with each shard. No sockets and no replicas here: the W workloads
measure those; this isolates Redis.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
import uuid
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from devtools.bench.procstat import CpuWindow
from devtools.cluster import ManagedProcess, free_port, wait_until
from devtools.redis_topology import redis_server_argv
from realtime.broker import RedisBroker, StreamPolicy

# Streams the publishes go round: enough that each of 3 shards gets a fair share by hash.
STREAMS = 300
WARM_UP_PUBLISHES = 300


@dataclass
class ShardRow:
    shard: int
    publishes: int
    cpu_secs: float

    @property
    def us_per_publish(self) -> float:
        return self.cpu_secs / self.publishes * 1e6 if self.publishes else 0.0


@dataclass
class ShardRun:
    shards: int
    publishes: int
    wall_secs: float
    rows: list[ShardRow]

    @property
    def publishes_per_sec(self) -> float:
        return self.publishes / self.wall_secs if self.wall_secs else 0.0

    @property
    def redis_us_per_publish(self) -> float:
        """All shards' Redis CPU over all publishes: what a publish costs Redis in total."""
        return sum(row.cpu_secs for row in self.rows) / self.publishes * 1e6


def _start_servers(count: int, run_dir: Path) -> list[tuple[int, ManagedProcess]]:
    servers = []
    for index in range(count):
        port = free_port()
        name = f"bench-shard-{index}"
        argv = redis_server_argv(port, run_dir, name=name, persistence=False)
        process = ManagedProcess(
            name=name, argv=argv, env=dict(os.environ), log_path=run_dir / f"{name}.log", port=port
        )
        process.start()
        servers.append((port, process))
    return servers


async def _publish_many(broker: RedisBroker, count: int, *, start: int, in_flight: int) -> None:
    policy = StreamPolicy(max_len=1000, max_age_ms=3_600_000, idempotency_ttl_secs=60)
    numbers = iter(range(start, start + count))

    async def worker() -> None:
        for n in numbers:
            user = n % STREAMS + 1
            body = json.dumps({"type": "message", "stream": f"user:{user}", "payload": {"n": n}})
            await broker.publish(
                stream=f"user:{user}",
                group=f"user.{user}",
                body=body,
                message_id=uuid.uuid4().hex,
                idempotency=None,
                policy=policy,
            )

    await asyncio.gather(*(worker() for _ in range(in_flight)))


async def measure(
    servers: list[tuple[int, ManagedProcess]], *, publishes: int, in_flight: int
) -> ShardRun:
    """Publish through a broker over `servers` (started, answering) and read their CPU."""
    shards = len(servers)
    broker = RedisBroker([f"redis://127.0.0.1:{port}/0" for port, _ in servers], prefix="bench")
    try:
        await _publish_many(broker, WARM_UP_PUBLISHES, start=0, in_flight=in_flight)
        window = CpuWindow({str(i): process.pid or 0 for i, (_, process) in enumerate(servers)})
        window.start()
        started = time.perf_counter()
        await _publish_many(broker, publishes, start=WARM_UP_PUBLISHES, in_flight=in_flight)
        wall = time.perf_counter() - started
        cpu = window.stop()
        per_shard = [0] * shards
        for n in range(WARM_UP_PUBLISHES, WARM_UP_PUBLISHES + publishes):
            per_shard[broker.shard_of(f"user:{n % STREAMS + 1}")] += 1
        rows = [ShardRow(i, per_shard[i], cpu.get(str(i), 0.0)) for i in range(shards)]
        return ShardRun(shards, publishes, wall, rows)
    finally:
        await broker.close()


def _answers(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(16).startswith(b"+PONG")


def run(
    shard_counts: list[int], *, publishes: int, in_flight: int, var_dir: Path
) -> list[ShardRun]:
    runs = []
    for count in shard_counts:
        run_dir = var_dir / f"shards-{count}"
        run_dir.mkdir(parents=True, exist_ok=True)
        servers = _start_servers(count, run_dir)
        try:
            for port, _ in servers:
                wait_until(partial(_answers, port), timeout=15, what=f"bench redis on {port}")
            runs.append(asyncio.run(measure(servers, publishes=publishes, in_flight=in_flight)))
        finally:
            for _, process in servers:
                process.stop()
    return runs


def table(runs: list[ShardRun]) -> list[str]:
    lines = [
        "Redis CPU per publish, per shard (the broker's publish script from one process, "
        f"{STREAMS} user streams):",
        f"{'shards':>6} {'shard':>5} {'publishes':>9} {'cpu s':>7} {'us/publish':>10}",
    ]
    for run_ in runs:
        for row in run_.rows:
            lines.append(
                f"{run_.shards:>6} {row.shard:>5} {row.publishes:>9} {row.cpu_secs:>7.2f} "
                f"{row.us_per_publish:>10.1f}"
            )
        lines.append(
            f"{run_.shards:>6} {'all':>5} {run_.publishes:>9} "
            f"{sum(r.cpu_secs for r in run_.rows):>7.2f} {run_.redis_us_per_publish:>10.1f}"
            f"   {run_.publishes_per_sec:,.0f} publishes/s from one client process"
        )
    return lines
