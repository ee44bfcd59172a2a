"""The Redis the runner starts: one redis-server, or a Sentinel group (`--redis sentinel`): a
primary, one replica of it and three sentinels watching them, as a production deployment runs
it (three sentinels, so two of them agree a primary is down and one survives a sentinel dying).

Sentinels are quick here: a primary silent for SENTINEL_DOWN_AFTER_MS is down, and they
promote the replica within a few seconds; the cluster's replicas follow through redis-py's
Sentinel pool (realtime/broker/connections.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

SENTINEL_MASTER = "switchboard"
SENTINEL_DOWN_AFTER_MS = 1000
SENTINEL_FAILOVER_TIMEOUT_MS = 10_000


def redis_server_argv(port: int, run_dir: Path, *, name: str, persistence: bool) -> list[str]:
    # Each option beside its value (the formatter would put one per line).
    return [
        "redis-server", "--port", str(port), "--bind", "127.0.0.1",
        "--dir", str(run_dir), "--daemonize", "no", "--save", "",
        "--appendonly", "yes" if persistence else "no",
        "--appendfilename", f"{name}.aof", "--appenddirname", f"{name}-aof",
    ]  # fmt: skip


def sentinel_config(port: int, primary_port: int, run_dir: Path) -> str:
    """A sentinel's config file: it rewrites the file as it learns (hence one file each)."""
    return "\n".join(
        [
            f"port {port}",
            "bind 127.0.0.1",
            "daemonize no",
            f"dir {run_dir}",
            f"sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {primary_port} 2",
            f"sentinel down-after-milliseconds {SENTINEL_MASTER} {SENTINEL_DOWN_AFTER_MS}",
            f"sentinel failover-timeout {SENTINEL_MASTER} {SENTINEL_FAILOVER_TIMEOUT_MS}",
            f"sentinel parallel-syncs {SENTINEL_MASTER} 1",
            "",
        ]
    )


def _redis(port: int) -> redis.Redis:
    return redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1, decode_responses=True)


@dataclass
class SentinelGroup:
    """The ports of a Sentinel group and the checks that say it is ready to fail over."""

    primary_port: int
    replica_port: int
    sentinel_ports: list[int]

    @property
    def sentinels_setting(self) -> str:
        """REDIS_SENTINELS for the replicas and commands."""
        return ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)

    def primary_port_now(self) -> int | None:
        """The primary's port as the first sentinel that answers sees it."""
        for port in self.sentinel_ports:
            try:
                with _redis(port) as sentinel:
                    address = sentinel.sentinel_get_master_addr_by_name(SENTINEL_MASTER)
            except redis.RedisError:
                continue
            if address:
                return int(address[1])
        return None

    def replica_in_sync(self) -> bool:
        try:
            with _redis(self.replica_port) as replica:
                link: Any = replica.info("replication").get("master_link_status")
        except redis.RedisError:
            return False
        return bool(link == "up")

    def sentinels_ready(self) -> bool:
        """Every sentinel knows the primary, its replica and the two other sentinels: only then
        can they agree that the primary is down and promote the replica."""
        for port in self.sentinel_ports:
            try:
                with _redis(port) as sentinel:
                    master: Any = sentinel.sentinel_master(SENTINEL_MASTER)
            except redis.RedisError:
                return False
            if master.get("num-slaves") != 1 or master.get("num-other-sentinels") != 2:
                return False
        return True
