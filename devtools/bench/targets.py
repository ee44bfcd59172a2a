"""What the benchmark measures: a cluster it starts (ours or stock Channels), a cluster at a
given URL, or the raw `websockets` ceiling; and how each one is published to."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import random
import secrets
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import urlopen

from devtools.bench.clients import BenchClient
from devtools.bench.wire import HttpConnection, WsProtocol, ws_connect
from devtools.cluster import (
    BASE_DIR,
    Cluster,
    ClusterConfig,
    ClusterState,
    ManagedProcess,
    free_port,
    is_replica_name,
    port_is_free,
    wait_until,
)


class PublishError(RuntimeError):
    """The target refused or failed a publish; the message has its answer."""


@dataclass
class Target:
    """A running system under test. `pids` name the processes whose CPU is measured."""

    name: str
    ws_url: str
    origin: str
    sessions: dict[str, str]
    replica_pids: dict[str, int] = field(default_factory=dict)
    other_pids: dict[str, int] = field(default_factory=dict)  # redis, haproxy
    resumable: bool = True  # answers ?resume= with replay and `resumed` frames
    can_push: bool = True
    can_batch: bool = True  # has POST /api/push/batch
    cluster: Cluster | None = None
    # Each replica's own address (not HAProxy's), where /healthz answers in full: W5 reads it.
    replica_urls: dict[str, str] = field(default_factory=dict)
    # The pool's client for this target's protocol; None: ours (BenchClient).
    client_class: type[BenchClient] | None = None

    @property
    def pids(self) -> dict[str, int]:
        return {**self.replica_pids, **self.other_pids}

    def publisher(self, concurrency: int) -> Publisher:
        raise NotImplementedError

    async def replica_health(self, name: str) -> dict[str, Any] | None:
        """The replica's /healthz, asked directly: from this host and not through HAProxy, it
        answers with its counters. None when the replica does not answer (W4 killed it)."""
        url = self.replica_urls.get(name)
        if url is None:
            return None

        def read() -> dict[str, Any] | None:
            try:
                with urlopen(f"{url}/healthz", timeout=2) as answer:
                    return json.load(answer)  # type: ignore[no-any-return]
            except (OSError, ValueError):
                return None

        return await asyncio.to_thread(read)

    async def write_counts(self) -> tuple[int, int] | None:
        """Socket writes of stream frames so far, and the frames that shared a write with
        another, summed over the replicas' /healthz counters; None where there are none."""
        if not self.replica_urls:
            return None
        writes = coalesced = 0
        for name in self.replica_urls:
            stats = ((await self.replica_health(name)) or {}).get("stats") or {}
            if "socket_writes" not in stats:
                return None  # a replica down (W4), or one without these counters (stock)
            writes += stats["socket_writes"]
            coalesced += stats["frames_coalesced"]
        return writes, coalesced

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()


class Publisher:
    """Publishes with up to `concurrency` requests in flight; each call returns (stream, seq)."""

    async def broadcast(self, n: int) -> tuple[str, int]:
        raise NotImplementedError

    async def push(self, n: int, username: str) -> tuple[str, int]:
        raise NotImplementedError

    async def push_batch(self, n: int, usernames: list[str]) -> list[tuple[str, int]]:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


# --- clusters reached over HTTP -------------------------------------------------------------------


@dataclass
class ClusterTarget(Target):
    base_url: str = ""
    token: str = ""
    replica_names: list[str] = field(default_factory=list)
    # An external cluster's token, issued in its database for this run: revoked at the end.
    token_name: str | None = None

    def publisher(self, concurrency: int) -> Publisher:
        return HttpPublisher(self.base_url, self.token, self.replica_names, concurrency)

    def stop(self) -> None:
        super().stop()
        if self.token_name is not None:
            from django.core.management import call_command

            call_command("apitoken", "revoke", self.token_name, stdout=io.StringIO())


class HttpPublisher(Publisher):
    """POSTs to the publish API through HAProxy, each to a random replica (by its cookie)."""

    def __init__(self, base_url: str, token: str, replicas: list[str], concurrency: int) -> None:
        self.replicas = replicas or [""]
        self.token = token
        self.idle = [HttpConnection(base_url) for _ in range(concurrency)]
        self.all = list(self.idle)
        self.free = asyncio.Semaphore(concurrency)

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        replica = random.choice(self.replicas)
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        if replica:
            headers["Cookie"] = f"SERVERID={replica}"
        async with self.free:
            connection = self.idle.pop()
            try:
                status, content = await connection.request(
                    "POST", path, body=json.dumps(body).encode(), headers=headers
                )
            finally:
                self.idle.append(connection)
        if status != 200:
            raise PublishError(f"{path} answered {status}: {content[:200]!r}")
        return json.loads(content)  # type: ignore[no-any-return]

    async def broadcast(self, n: int) -> tuple[str, int]:
        answer = await self._post("/api/broadcast", {"payload": {"n": n}})
        return answer["stream"], int(answer["seq"])

    async def push(self, n: int, username: str) -> tuple[str, int]:
        answer = await self._post("/api/push", {"user": username, "payload": {"n": n}})
        return answer["stream"], int(answer["seq"])

    async def push_batch(self, n: int, usernames: list[str]) -> list[tuple[str, int]]:
        messages = [{"user": name, "payload": {"n": n, "i": i}} for i, name in enumerate(usernames)]
        answer = await self._post("/api/push/batch", {"messages": messages})
        return [(r["stream"], int(r["seq"])) for r in answer["results"]]

    async def close(self) -> None:
        await asyncio.gather(*(connection.close() for connection in self.all))


def _manage(cluster: Cluster, *args: str) -> str:
    result = cluster.manage(*args)
    if result.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def start_cluster(
    name: str, *, replicas: int, clients: int, var_dir: Path, stock: bool = False
) -> ClusterTarget:
    """Start a cluster with the one runner, with `clients` logged-in users and an API token."""
    var_dir.mkdir(parents=True, exist_ok=True)
    # A fresh database each run: with a new SECRET_KEY the last run's sessions and tokens are
    # dead anyway, and a database grown by many runs made SQLite's page cache, filling during the
    # connect storm, count as memory per connection (up to 3 KiB more after forty runs).
    for stale in var_dir.glob("db.sqlite3*"):
        stale.unlink()
    env = {
        "SWITCHBOARD_VAR_DIR": str(var_dir),
        "SECRET_KEY": f"bench-{secrets.token_hex(16)}",
        "LOG_LEVEL": "WARNING",
    }
    # Every client connects from 127.0.0.1, thousands within seconds: no per-IP connect limit.
    config = ClusterConfig(
        replicas=replicas, run_dir=var_dir / "run", env=env, ws_connects_per_ip_10s=1_000_000
    )
    if stock:
        config.settings_module = "devtools.bench.stock_settings"
        config.asgi_app = "devtools.bench.stock_asgi:application"
        config.publish_port = False  # its publish views are its own, served by Daphne
        config.socket_port = False  # stock Channels: Daphne serves its sockets
    cluster = Cluster(config)
    _manage(cluster, "migrate", "--noinput", "-v0")
    sessions = json.loads(
        _manage(cluster, "bench_users", "--count", str(clients), "--prefix", "bench")
    )
    token = _manage(cluster, "apitoken", "create", f"bench-{uuid.uuid4().hex[:8]}").strip()
    cluster.start(timeout=120)
    procs = cluster.processes
    return ClusterTarget(
        name=name,
        ws_url=cluster.ws_url,
        origin=cluster.url,
        sessions=sessions,
        replica_pids={n: pid for n in cluster.replica_names if (pid := procs[n].pid)},
        other_pids={
            n: pid for n, p in procs.items() if n not in cluster.replica_names and (pid := p.pid)
        },
        resumable=not stock,
        can_batch=not stock,
        cluster=cluster,
        replica_urls={n: cluster.replica_url(n) for n in cluster.replica_names},
        base_url=cluster.url,
        token=token,
        replica_names=list(cluster.replica_names),
    )


def external_cluster(url: str, *, clients: int, state: ClusterState | None) -> ClusterTarget:
    """A cluster already running at `url`, sharing this process's database (like `make up`).

    With the runner's state file (`cluster.json`) its processes' CPU is measured too."""
    from django.core.management import call_command  # Django is set up: we run as a command

    from realtime.services import api_token_issue

    out = io.StringIO()
    call_command("bench_users", count=clients, prefix="bench", stdout=out)
    # Revoked when the run ends (ClusterTarget.stop): a publish token must not outlive it in
    # the cluster's database (with --rounds, one is issued a round).
    issued, token = api_token_issue(name=f"bench-{uuid.uuid4().hex[:8]}")
    parts = urlsplit(url)
    pids: dict[str, int] = {}
    ports: dict[str, int] = {}
    if state and state.get("url") == f"{parts.scheme}://{parts.netloc}":
        pids = {p["name"]: p["pid"] for p in state["processes"] if p["pid"] is not None}
        ports = {p["name"]: p["port"] for p in state["processes"]}
    # The runner names replicas d1..d8; the rest (Redis, sentinels, PostgreSQL, HAProxy) serve them.
    replicas = sorted(n for n in pids if is_replica_name(n)) or ["d1", "d2", "d3"]
    return ClusterTarget(
        name="ours",
        ws_url=f"ws://{parts.netloc}/ws/",
        origin=f"{parts.scheme}://{parts.netloc}",
        sessions=json.loads(out.getvalue()),
        replica_pids={n: p for n, p in pids.items() if n in replicas},
        other_pids={n: p for n, p in pids.items() if not is_replica_name(n)},
        # The runner binds every replica to 127.0.0.1 (devtools/cluster.py).
        replica_urls={n: f"http://127.0.0.1:{ports[n]}" for n in replicas if n in ports},
        base_url=f"{parts.scheme}://{parts.netloc}",
        token=token,
        token_name=issued.name,
        replica_names=replicas,
    )


# --- the raw websockets ceiling -------------------------------------------------------------------


@dataclass
class LimitTarget(Target):
    process: ManagedProcess | None = None
    port: int = 0

    def publisher(self, concurrency: int) -> Publisher:
        return LimitPublisher(f"ws://127.0.0.1:{self.port}/control", concurrency)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


def start_limit(*, clients: int, var_dir: Path) -> LimitTarget:
    var_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    process = ManagedProcess(
        name="limit",
        argv=[sys.executable, "-m", "devtools.bench.limit", "--port", str(port)],
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(BASE_DIR)},
        log_path=var_dir / "limit.log",
        port=port,
    )
    process.start()
    wait_until(lambda: not port_is_free(port), timeout=30, what="the limit server's port")
    assert process.pid is not None
    return LimitTarget(
        name="limit",
        ws_url=f"ws://127.0.0.1:{port}/",
        origin=f"http://127.0.0.1:{port}",
        sessions={f"raw{i}": "" for i in range(clients)},
        replica_pids={"limit": process.pid},
        resumable=False,
        can_push=False,
        can_batch=False,
        process=process,
        port=port,
    )


class LimitPublisher(Publisher):
    """Publishes over the limit server's control socket: one frame out, one seq back."""

    def __init__(self, url: str, concurrency: int) -> None:
        self.url = url
        self.free = asyncio.Semaphore(concurrency)
        self.waiting: dict[int, asyncio.Future[int]] = {}
        self.ids = itertools.count(1)
        self.protocol: WsProtocol | None = None

    def _answers(self, texts: list[bytes], now_ms: float) -> None:
        for text in texts:
            answer = json.loads(text)
            future = self.waiting.pop(answer["id"], None)
            if future is not None and not future.done():
                future.set_result(answer["seq"])

    async def broadcast(self, n: int) -> tuple[str, int]:
        if self.protocol is None:
            self.protocol, _ = await ws_connect(self.url, on_messages=self._answers)
        async with self.free:
            frame_id = next(self.ids)
            future = self.waiting[frame_id] = asyncio.get_running_loop().create_future()
            self.protocol.send_text(json.dumps({"id": frame_id, "payload": {"n": n}}))
            return "broadcast", await asyncio.wait_for(future, 30)

    async def close(self) -> None:
        if self.protocol is not None:
            await self.protocol.close()
