"""The Socket.IO peer (`manage.py bench --peer socketio`): Socket.IO 4 with its Redis adapter,
N node processes behind the same HAProxy configuration and Redis as our cluster, measured with
the same client program and workloads.

The node program and its locked dependencies live in devtools/bench/socketio/ (server.js says
what it serves). This module installs them (`npm ci`, from the lockfile), runs the cluster with
the one runner (devtools/cluster.py: only the replicas' command differs, so HAProxy's settings,
stickiness and health checks are ours), and makes its users. Named `socketio_peer` because
`socketio/` is the node folder beside it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import shutil
import subprocess
from pathlib import Path

from devtools.bench.socketio_client import SOCKETIO_PATH, SocketIOClient
from devtools.bench.targets import ClusterTarget
from devtools.cluster import Cluster, ClusterConfig, ClusterError

SOCKETIO_DIR = Path(__file__).resolve().parent / "socketio"
LOCKFILE = SOCKETIO_DIR / "package-lock.json"
# npm writes this copy of the lockfile into node_modules on every install: older than the
# lockfile means the lockfile changed since.
INSTALLED_LOCK = SOCKETIO_DIR / "node_modules" / ".package-lock.json"
NPM_CI_TIMEOUT_SECS = 300


class PeerUnavailable(RuntimeError):
    """The peer cannot run here (no node or npm, `npm ci` or its cluster's start failed); the
    bench says so on stderr and goes on without it."""


def ensure_installed() -> str:
    """`npm ci` when node_modules is missing or older than the lockfile; node's path."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        raise PeerUnavailable("node and npm are not installed (make browser-deps installs them)")
    if INSTALLED_LOCK.exists() and INSTALLED_LOCK.stat().st_mtime >= LOCKFILE.stat().st_mtime:
        return node
    try:
        result = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=SOCKETIO_DIR,
            env={**os.environ, "npm_config_update_notifier": "false"},
            capture_output=True,
            text=True,
            timeout=NPM_CI_TIMEOUT_SECS,
        )
    except subprocess.TimeoutExpired:
        raise PeerUnavailable(f"npm ci took over {NPM_CI_TIMEOUT_SECS}s (no registry?)") from None
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip().splitlines()
        raise PeerUnavailable(f"npm ci failed in {SOCKETIO_DIR}: {' | '.join(output[-3:])}")
    return node


def connect_token(secret: str, username: str) -> str:
    """What server.js checks: hex HMAC-SHA256(secret, username)."""
    return hmac.new(secret.encode(), username.encode(), hashlib.sha256).hexdigest()


class SocketIOCluster(Cluster):
    """Our runner's Redis and HAProxy, with a Socket.IO node process as each replica."""

    def __init__(self, config: ClusterConfig, *, node: str) -> None:
        self.node = node  # before the base class builds the processes
        super().__init__(config)

    def _build_replica(self, name: str, port: int) -> None:
        env = {
            **os.environ,
            **self.config.env,
            "REPLICA_ID": name,
            "REPLICA_IDS": ",".join(self.replica_names),
            "REDIS_URL": self.redis_url,
            "NODE_ENV": "production",
        }
        self._add(name, [self.node, str(SOCKETIO_DIR / "server.js"), str(port)], env, port)
        self.processes[name].cwd = SOCKETIO_DIR


def start_socketio(*, replicas: int, clients: int, var_dir: Path) -> ClusterTarget:
    """Install if needed, start Redis, the node replicas and HAProxy; PeerUnavailable when the
    peer cannot run here."""
    node = ensure_installed()
    var_dir.mkdir(parents=True, exist_ok=True)
    secret, api_token = secrets.token_hex(32), secrets.token_hex(24)
    config = ClusterConfig(
        replicas=replicas,
        run_dir=var_dir / "run",
        env={"BENCH_SECRET": secret, "BENCH_API_TOKEN": api_token},
        # As for ours (targets.start_cluster), though HAProxy limits only /ws/, not /socket.io/.
        ws_connects_per_ip_10s=1_000_000,
    )
    cluster = SocketIOCluster(config, node=node)
    try:
        cluster.start(timeout=120)  # stops what it started if it fails
    except ClusterError as exc:
        raise PeerUnavailable(f"its cluster did not start: {exc}") from exc
    procs = cluster.processes
    names = [f"bench{i}" for i in range(clients)]
    return ClusterTarget(
        name="socketio",
        ws_url=f"ws://127.0.0.1:{cluster.http_port}{SOCKETIO_PATH}",
        origin=cluster.url,
        # The pool sends a session's value as the connect token (SocketIOClient.connect).
        sessions={name: connect_token(secret, name) for name in names},
        replica_pids={n: pid for n in cluster.replica_names if (pid := procs[n].pid)},
        other_pids={
            n: pid for n, p in procs.items() if n not in cluster.replica_names and (pid := p.pid)
        },
        resumable=False,
        cluster=cluster,
        client_class=SocketIOClient,
        base_url=cluster.url,
        token=api_token,
        replica_names=list(cluster.replica_names),
    )
