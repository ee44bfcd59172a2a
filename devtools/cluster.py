"""The cluster runner: Redis, N Daphne replicas and HAProxy as local processes.

One runner serves development (`manage.py cluster up`), the test fixtures and the benchmarks.
Every process writes its output to `<run_dir>/<name>.log`, so processes never depend on the
runner staying alive (`--detach`); in the foreground the runner follows those files and prints
each line prefixed by the process name. Processes are stopped only by the PIDs this runner
started, after checking that the PID still runs the command it started (PIDs get reused).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import NotRequired, TypedDict

from devtools.postgres import LocalPostgres
from devtools.redis_topology import (
    SENTINEL_MASTER,
    SentinelGroup,
    redis_server_argv,
    sentinel_config,
)
from devtools.tls import DevCertificate, dev_certificate

BASE_DIR = Path(__file__).resolve().parent.parent
HAPROXY_CFG = BASE_DIR / "haproxy.cfg"
# haproxy.cfg lists servers d1..d8, each present when its SB_Dn variable is set.
MAX_REPLICAS = 8
STATE_FILE = "cluster.json"
# What the runner names its replicas (haproxy.cfg's servers): the other processes serve them.
REPLICA_NAME = re.compile(r"d[1-9][0-9]*")


def is_replica_name(name: str) -> bool:
    return REPLICA_NAME.fullmatch(name) is not None


class ClusterError(RuntimeError):
    """The cluster could not be started, or a process misbehaved; the message says which."""


# Ports this process has handed out: a port is given once, even after it is free again.
_handed_out: set[int] = set()
# Below this, ports are ours to choose: outgoing connections take theirs from the kernel's
# ephemeral range above it.
_LOWEST = 10_000


def free_port() -> int:
    """A loopback port nobody listens on, for a server started next. Chosen below the kernel's
    ephemeral range: a port the kernel picked (bind to 0) comes from the range that outgoing
    connections also take theirs from, and one of them could hold it before the server binds.
    Each pytest-xdist worker draws from a slice of its own, so two workers' clusters never get
    the same port."""
    low, high = _port_slice()
    for _ in range(500):
        port = random.randrange(low, high)
        if port not in _handed_out and port_is_free(port):
            _handed_out.add(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # the slice is full
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_slice() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as ranges:
            ephemeral_low = int(ranges.read().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32_768  # Linux's default
    high = max(ephemeral_low, _LOWEST + 1_000)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw0", "gw1", …
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
    if not worker.startswith("gw") or workers <= 1:
        return _LOWEST, high
    span = (high - _LOWEST) // workers
    index = int(worker[2:]) % workers
    return _LOWEST + index * span, _LOWEST + (index + 1) * span


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def wait_until(
    condition: Callable[[], bool], *, timeout: float, interval: float = 0.1, what: str = "condition"
) -> None:
    """Poll `condition` until it is true; raise ClusterError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def haproxy_command(admin_socket: str, command: str) -> str:
    """Run one command on HAProxy's runtime API (the admin socket) and return its answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(admin_socket)
        sock.sendall(command.encode() + b"\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


# realtime/conf.py's DRAIN_WINDOW_SECS, unless the environment says otherwise.
DEFAULT_DRAIN_WINDOW_SECS = 10.0


def server_states(admin_socket: str) -> dict[str, dict[str, str]]:
    """HAProxy's view of the servers of its `replicas` backend, from its runtime API: status
    (UP, DOWN, MAINT, DRAIN…), last check and open sessions, by server name."""
    lines = haproxy_command(admin_socket, "show stat").splitlines()
    header = lines[0].lstrip("# ").split(",")
    states = {}
    for line in lines[1:]:
        row = dict(zip(header, line.split(","), strict=False))
        if row.get("pxname") == "replicas" and row.get("svname") not in (None, "BACKEND"):
            states[row["svname"]] = {
                "status": row.get("status", ""),
                "check_status": row.get("check_status", ""),
                "sessions": row.get("scur", ""),
            }
    return states


@dataclass
class ManagedProcess:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    port: int
    popen: subprocess.Popen[bytes] | None = None
    # Where it runs: the repository by default; elsewhere for a project that installed the
    # package (the repository's own `realtime` would shadow the installed one).
    cwd: Path = BASE_DIR
    # What asks it to stop (SIGKILL follows after the timeout); PostgreSQL's is SIGINT.
    stop_signal: int = signal.SIGTERM
    # How long stop() waits before SIGKILL: a replica drains first (realtime/drain.py).
    stop_timeout: float = 10.0

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def start(self) -> None:
        if self.running():
            raise ClusterError(f"{self.name} is already running (pid {self.pid})")
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Own session: Ctrl-C reaches the runner only, which stops everything in order.
                start_new_session=True,
            )

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.running():
            assert self.popen is not None
            self.popen.send_signal(sig)

    def stop(self, timeout: float | None = None) -> None:
        if not self.running():
            return
        assert self.popen is not None
        self.popen.send_signal(self.stop_signal)
        try:
            self.popen.wait(self.stop_timeout if timeout is None else timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)

    def kill(self) -> None:
        """SIGKILL, as a crash would: no shutdown code runs."""
        if self.running():
            assert self.popen is not None
            self.popen.kill()
            self.popen.wait(5)


@dataclass
class ClusterConfig:
    replicas: int = 3
    http_port: int = 0  # 0: pick a free port
    redis_port: int = 0
    stats_port: int = 0
    run_dir: Path = field(default_factory=lambda: BASE_DIR / "var" / "cluster")
    redis_persistence: bool = False
    # "single": one redis-server; "sentinel": a primary, its replica and three sentinels
    # (devtools/redis_topology.py), the replicas finding the primary through them.
    redis_mode: str = "single"
    # Redis shards (REDIS_URLS): 2 or more redis-servers, redis-shard-0 on redis_port, each
    # holding the streams whose names hash to it (realtime/broker/redis_broker.py).
    redis_shards: int = 1
    # TLS at HAProxy (https, wss) with a development certificate (devtools/tls.py) on
    # https_port; plain HTTP on http_port redirects there. The replicas run SWITCHBOARD_TLS=1.
    tls: bool = False
    https_port: int = 0
    # App hosts, simulated: with 2 or more, the replicas bind to 127.0.0.2, 127.0.0.3, … in
    # turn (Linux routes all of 127/8 to loopback), as if each address were a machine of its
    # own; Redis, PostgreSQL and HAProxy stay on 127.0.0.1. 1: every replica on 127.0.0.1.
    hosts: int = 1
    # "sqlite": the replicas share the SQLite file in their var dir (or DATABASE_URL's database);
    # "postgres": a PostgreSQL of the runner's own, its data in <run_dir>/postgres, migrated.
    db: str = "sqlite"
    postgres_port: int = 0
    access_log: bool = False
    # Extra environment for every replica (and for commands run with `command_env`).
    env: dict[str, str] = field(default_factory=dict)
    check_inter: str = "1s"
    # New WebSockets HAProxy accepts per client IP per 10 s (SB_WS_CONNECTS_PER_IP_10S); the
    # default is haproxy.cfg's. The tests and the benchmark open 1000+ sockets from 127.0.0.1
    # within seconds, so they raise it.
    ws_connects_per_ip_10s: int = 100
    # What the replicas serve; the benchmark's stock baseline swaps both.
    settings_module: str = "project.settings"
    asgi_app: str = "project.asgi:application"
    # Each replica's publish port (PUBLISH_PORT_BIND, realtime/transport/publish_port.py), where
    # HAProxy sends the token publish API; off for the stock baseline, whose views are its own.
    publish_port: bool = True
    # Each replica's socket port (SOCKET_PORT_BIND, realtime/transport/socket_port.py), where
    # HAProxy sends WebSocket upgrades; off for the stock baseline, which runs Daphne alone.
    socket_port: bool = True


class Cluster:
    """Start with `start()`, stop with `stop()` (or use it as a context manager)."""

    def __init__(self, config: ClusterConfig) -> None:
        if not 1 <= config.replicas <= MAX_REPLICAS:
            raise ClusterError(f"--replicas must be 1..{MAX_REPLICAS} (haproxy.cfg lists d1..d8)")
        self.config = config
        self.run_dir = config.run_dir
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.http_port = config.http_port or free_port()
        self.redis_port = config.redis_port or free_port()
        self.stats_port = config.stats_port or free_port()
        for port, what in [
            (self.http_port, "HTTP"),
            (self.redis_port, "Redis"),
            (self.stats_port, "stats"),
        ]:
            if not port_is_free(port):
                raise ClusterError(f"the {what} port {port} is taken; pick another with its option")
        # A Unix socket path must stay under ~100 bytes, so it cannot live in a deep run_dir.
        self._socket_dir = tempfile.mkdtemp(prefix="sb-haproxy-")
        self.admin_socket = str(Path(self._socket_dir) / "admin.sock")
        if config.redis_shards < 1:
            raise ClusterError("--redis-shards must be at least 1")
        if config.redis_shards > 1 and config.redis_mode != "single":
            raise ClusterError(
                "--redis-shards runs plain redis-servers; shards of Sentinel groups are "
                "configured with REDIS_SENTINEL_MASTER=a,b,c (docs/deploying.md)"
            )
        # Shards after the first: the ports after a --redis-port given (stable from run to run,
        # for commands run by hand), else free ones.
        self.shard_ports = [self.redis_port] + [
            self.redis_port + index if config.redis_port else free_port()
            for index in range(1, config.redis_shards)
        ]
        for port in self.shard_ports[1:]:
            if not port_is_free(port):
                raise ClusterError(
                    f"the Redis shard port {port} is taken; pick another --redis-port"
                )
        self.redis_urls = [f"redis://127.0.0.1:{port}/0" for port in self.shard_ports]
        self.redis_url = self.redis_urls[0]
        self.certificate: DevCertificate | None = None
        self.https_port = 0
        if config.tls:
            self.https_port = config.https_port or free_port()
            if not port_is_free(self.https_port):
                raise ClusterError(f"the HTTPS port {self.https_port} is taken; pick another")
            self.certificate = dev_certificate(self.run_dir / "tls")
        self.sentinel_group: SentinelGroup | None = None
        if config.redis_mode == "sentinel":
            self.sentinel_group = SentinelGroup(
                self.redis_port, free_port(), [free_port() for _ in range(3)]
            )
        elif config.redis_mode != "single":
            raise ClusterError(f"--redis is single or sentinel, not {config.redis_mode!r}")
        self.postgres: LocalPostgres | None = None
        if config.db == "postgres":
            port = config.postgres_port or free_port()
            if not port_is_free(port):
                raise ClusterError(f"the PostgreSQL port {port} is taken; pick another")
            self.postgres = LocalPostgres(self.run_dir / "postgres", port)
        elif config.db != "sqlite":
            raise ClusterError(f"--db is sqlite or postgres, not {config.db!r}")
        self.replica_names = [f"d{i}" for i in range(1, config.replicas + 1)]
        self.replica_ports = {name: free_port() for name in self.replica_names}
        # Each replica's publish port (PUBLISH_PORT_BIND), as _build_replica gives one.
        self.publish_binds: dict[str, str] = {}
        # Each replica's socket port (SOCKET_PORT_BIND), as _build_replica gives one.
        self.socket_binds: dict[str, str] = {}
        if config.hosts < 1:
            raise ClusterError("--hosts must be at least 1")
        self.replica_hosts = {
            name: "127.0.0.1" if config.hosts == 1 else f"127.0.0.{2 + index % config.hosts}"
            for index, name in enumerate(self.replica_names)
        }
        self.processes: dict[str, ManagedProcess] = {}
        self._build_processes()

    # --- addresses -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self.certificate is not None:
            return f"https://127.0.0.1:{self.https_port}"
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def ws_url(self) -> str:
        if self.certificate is not None:
            return f"wss://127.0.0.1:{self.https_port}/ws/"
        return f"ws://127.0.0.1:{self.http_port}/ws/"

    @property
    def stats_url(self) -> str:
        return f"http://127.0.0.1:{self.stats_port}/"

    def replica_url(self, name: str) -> str:
        return f"http://{self.replica_hosts[name]}:{self.replica_ports[name]}"

    def command_env(self, **extra: str) -> dict[str, str]:
        """The environment a `manage.py` command needs to publish into this cluster."""
        # A cluster this runner starts is a development one (`make run`, the tests): its login
        # page lists the demo users, unless the environment says otherwise.
        env = {"SHOW_DEMO_LOGINS": "1", **os.environ}
        env.update(self.config.env)
        env.update(
            {
                "DJANGO_SETTINGS_MODULE": self.config.settings_module,
                "REDIS_URL": self.redis_url,
                "PYTHONUNBUFFERED": "1",
            }
        )
        if len(self.redis_urls) > 1:
            env["REDIS_URLS"] = ",".join(self.redis_urls)
        if self.certificate is not None:
            env["SWITCHBOARD_TLS"] = "1"
            # Five minutes, not the profile's year: a development certificate on localhost, and
            # a browser that remembered HSTS for a year would refuse plain http://localhost.
            env.setdefault("SECURE_HSTS_SECONDS", "300")
            env.setdefault("SECURE_HSTS_PRELOAD", "0")
        if self.sentinel_group is not None:
            env["REDIS_SENTINELS"] = self.sentinel_group.sentinels_setting
            env["REDIS_SENTINEL_MASTER"] = SENTINEL_MASTER
        if self.postgres is not None:
            env["DATABASE_URL"] = self.postgres.url
        if self.config.hosts > 1 and "ALLOWED_HOSTS" not in self.config.env:
            # Health checks and tests reach a replica by its own address.
            addresses = sorted(set(self.replica_hosts.values()))
            env["ALLOWED_HOSTS"] = ",".join(["localhost", "127.0.0.1", "[::1]", *addresses])
        env.update(extra)
        return env

    def manage(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """`manage.py <args>` in a process of its own against this cluster, output captured."""
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=BASE_DIR,
            env=self.command_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    # --- building --------------------------------------------------------------------------------

    def _build_processes(self) -> None:
        if self.postgres is not None:
            argv = self.postgres.server_argv()
            self._add(
                "postgres", argv, dict(os.environ), self.postgres.port, LocalPostgres.stop_signal
            )
        self._build_redis()
        for name, port in self.replica_ports.items():
            self._build_replica(name, port)
        haproxy_env = dict(os.environ)
        haproxy_env.update(
            {
                "SB_HTTP_BIND": f"127.0.0.1:{self.http_port}",
                "SB_STATS_BIND": f"127.0.0.1:{self.stats_port}",
                "SB_ADMIN_SOCKET": self.admin_socket,
                "SB_CHECK_INTER": self.config.check_inter,
                "SB_WS_CONNECTS_PER_IP_10S": str(self.config.ws_connects_per_ip_10s),
            }
        )
        if self.certificate is not None:
            haproxy_env["SB_TLS_BIND"] = f"127.0.0.1:{self.https_port}"
            haproxy_env["SB_TLS_CERT"] = str(self.certificate.bundle)
            haproxy_env["SB_TLS_PORT"] = str(self.https_port)
        for index, port in enumerate(self.replica_ports.values(), start=1):
            haproxy_env[f"SB_D{index}"] = f"{self.replica_hosts[f'd{index}']}:{port}"
            if bind := self.publish_binds.get(f"d{index}"):
                haproxy_env[f"SB_D{index}_PUBLISH"] = bind
            if bind := self.socket_binds.get(f"d{index}"):
                haproxy_env[f"SB_D{index}_SOCKETS"] = bind
        self._add(
            "haproxy", ["haproxy", "-db", "-f", str(HAPROXY_CFG)], haproxy_env, self.http_port
        )

    def _build_replica(self, name: str, port: int) -> None:
        """One Daphne replica. A subclass serves something else behind the same Redis and
        HAProxy (the benchmark's Socket.IO peer, devtools/bench/socketio_peer.py)."""
        # Command lines keep each option beside its value (the formatter would put one per line).
        argv = [
            sys.executable, "-m", "realtime.serve",
            "-b", self.replica_hosts[name], "-p", str(port),
            "--proxy-headers", "--websocket_timeout", "-1",
            "-v", "1" if self.config.access_log else "0",
            self.config.asgi_app,
        ]  # fmt: skip
        # The stats page, read-only, tells each replica HAProxy's view of all of them.
        # The publish port: the token publish API past Daphne (haproxy.cfg's `publishers`).
        env = self.command_env(REPLICA_ID=name, HAPROXY_STATS_URL=self.stats_url)
        if self.config.publish_port:
            bind = self.publish_binds[name] = f"{self.replica_hosts[name]}:{free_port()}"
            env["PUBLISH_PORT_BIND"] = bind
        if self.config.socket_port:
            bind = self.socket_binds[name] = f"{self.replica_hosts[name]}:{free_port()}"
            env["SOCKET_PORT_BIND"] = bind
        self._add(name, argv, env, port)
        # SIGTERM drains first: the window, a second of grace, and some slack.
        window = float(env.get("DRAIN_WINDOW_SECS") or DEFAULT_DRAIN_WINDOW_SECS)
        self.processes[name].stop_timeout = window + 5

    def _build_redis(self) -> None:
        persistence = self.config.redis_persistence
        group = self.sentinel_group
        if group is None:
            for name, port in zip(self.redis_process_names, self.shard_ports, strict=True):
                argv = redis_server_argv(port, self.run_dir, name=name, persistence=persistence)
                self._add(name, argv, dict(os.environ), port)
            return
        primary = redis_server_argv(
            group.primary_port, self.run_dir, name="redis-primary", persistence=persistence
        )
        self._add("redis-primary", primary, dict(os.environ), group.primary_port)
        replica = redis_server_argv(
            group.replica_port, self.run_dir, name="redis-replica", persistence=persistence
        )
        replica += ["--replicaof", "127.0.0.1", str(group.primary_port)]
        self._add("redis-replica", replica, dict(os.environ), group.replica_port)
        for index, port in enumerate(group.sentinel_ports, start=1):
            config = self.run_dir / f"sentinel-{index}.conf"
            config.write_text(sentinel_config(port, group.primary_port, self.run_dir))
            argv = ["redis-server", str(config), "--sentinel"]
            self._add(f"sentinel-{index}", argv, dict(os.environ), port)

    @property
    def redis_process_names(self) -> list[str]:
        if len(self.shard_ports) > 1:
            return [f"redis-shard-{index}" for index in range(len(self.shard_ports))]
        if self.sentinel_group is None:
            return ["redis"]
        return ["redis-primary", "redis-replica", "sentinel-1", "sentinel-2", "sentinel-3"]

    def _add(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        port: int,
        stop_signal: int = signal.SIGTERM,
    ) -> None:
        log_path = self.run_dir / f"{name}.log"
        self.processes[name] = ManagedProcess(
            name=name, argv=argv, env=env, log_path=log_path, port=port, stop_signal=stop_signal
        )

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self, *, timeout: float = 60.0) -> None:
        try:
            self.start_database(timeout=timeout)
            self.start_redis(timeout=timeout)
            for name in self.replica_names:
                self.processes[name].start()
            for name in self.replica_names:
                self.wait_replica_healthy(name, timeout=timeout)
            self.processes["haproxy"].start()
            self.wait_all_up(timeout=timeout)
            self.write_state()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop everything this runner started, in reverse order, by PID."""
        for name in reversed(list(self.processes)):
            self.processes[name].stop()
        (self.run_dir / STATE_FILE).unlink(missing_ok=True)

    def __enter__(self) -> Cluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the database ----------------------------------------------------------------------------

    def start_database(self, *, timeout: float = 60.0) -> None:
        """With --db postgres: the server started (initdb on first use), the application's role
        and database made and migrated. Nothing to do for SQLite, or once it runs."""
        process = self.processes.get("postgres")
        if self.postgres is None or process is None or process.running():
            return
        self.postgres.prepare()
        process.start()
        self.write_state()
        server = self.postgres

        def ready() -> bool:
            if not process.running():
                raise ClusterError(
                    f"postgres exited; see {process.log_path}:\n{self.tail('postgres')}"
                )
            return server.ready()

        wait_until(ready, timeout=timeout, what=f"PostgreSQL on {server.port}")
        server.create_database()
        migrate = self.manage("migrate", "--noinput", "-v0")
        if migrate.returncode != 0:
            raise ClusterError(f"migrate failed on PostgreSQL:\n{migrate.stdout}{migrate.stderr}")

    # --- Redis -----------------------------------------------------------------------------------

    def start_redis(self, *, timeout: float = 30.0) -> None:
        for name in self.redis_process_names:
            self.processes[name].start()
        # The state file names every PID: `cluster down` and the benchmark's CPU readings must
        # see a restarted process, not the one it replaced.
        self.write_state()
        for port in self.shard_ports:
            wait_until(partial(self.redis_ping, port), timeout=timeout, what=f"redis on {port}")
        group = self.sentinel_group
        if group is not None:
            wait_until(group.replica_in_sync, timeout=timeout, what="the Redis replica's sync")
            wait_until(group.sentinels_ready, timeout=timeout, what="three sentinels in agreement")

    def stop_redis(self) -> None:
        for name in reversed(self.redis_process_names):
            self.processes[name].stop()

    def kill_redis_primary(self) -> str:
        """SIGKILL the Redis that the sentinels name primary now, as a crash would; its name."""
        assert self.sentinel_group is not None, "a Sentinel cluster (--redis sentinel) only"
        port = self.sentinel_group.primary_port_now()
        (name,) = [n for n in self.redis_process_names if self.processes[n].port == port]
        self.processes[name].kill()
        return name

    def redis_primary_port(self) -> int | None:
        """Where the primary is now: this cluster's Redis, or the sentinels' primary."""
        if self.sentinel_group is None:
            return self.redis_port
        return self.sentinel_group.primary_port_now()

    def restart_redis(self, *, timeout: float = 30.0) -> None:
        """Restart Redis on the same port; without persistence it comes back empty."""
        self.stop_redis()
        self.start_redis(timeout=timeout)

    def stop_redis_shard(self, index: int, *, kill: bool = False) -> str:
        """Stop one shard's redis-server (SIGKILL with `kill`, as a crash); its name."""
        name = f"redis-shard-{index}"
        if kill:
            self.processes[name].kill()
        else:
            self.processes[name].stop()
        return name

    def start_redis_shard(self, index: int, *, timeout: float = 30.0) -> None:
        """Start one shard's redis-server again on its port (empty, without persistence)."""
        self.processes[f"redis-shard-{index}"].start()
        self.write_state()
        port = self.shard_ports[index]
        wait_until(lambda: self.redis_ping(port), timeout=timeout, what=f"redis on {port}")

    def redis_ping(self, port: int | None = None) -> bool:
        with socket.create_connection(("127.0.0.1", port or self.redis_port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")

    # --- replicas --------------------------------------------------------------------------------

    def kill_replica(self, name: str) -> None:
        self.processes[name].kill()

    def start_replica(self, name: str, *, timeout: float = 30.0) -> None:
        self.processes[name].start()
        self.write_state()
        self.wait_replica_healthy(name, timeout=timeout)

    def replica_health(self, name: str) -> dict[str, object]:
        with urllib.request.urlopen(f"{self.replica_url(name)}/healthz", timeout=2) as response:
            return json.loads(response.read())  # type: ignore[no-any-return]

    def wait_replica_healthy(self, name: str, *, timeout: float = 30.0) -> None:
        process = self.processes[name]

        def healthy() -> bool:
            if not process.running():
                raise ClusterError(f"{name} exited; see {process.log_path}:\n{self.tail(name)}")
            return self.replica_health(name).get("replica") == name

        wait_until(healthy, timeout=timeout, what=f"{name} /healthz")

    # --- HAProxy ---------------------------------------------------------------------------------

    def haproxy_command(self, command: str) -> str:
        return haproxy_command(self.admin_socket, command)

    def server_states(self) -> dict[str, dict[str, str]]:
        """HAProxy's view of each replica: status (UP, DOWN, MAINT, DRAIN…) and last check."""
        states = server_states(self.admin_socket)
        return {name: state for name, state in states.items() if name in self.replica_ports}

    def wait_server_status(self, name: str, prefix: str, *, timeout: float = 20.0) -> None:
        def matches() -> bool:
            return self.server_states().get(name, {}).get("status", "").startswith(prefix)

        wait_until(matches, timeout=timeout, what=f"HAProxy to report {name} {prefix}")

    def wait_all_up(self, *, timeout: float = 30.0) -> None:
        def all_up() -> bool:
            if not self.processes["haproxy"].running():
                raise ClusterError(f"haproxy exited:\n{self.tail('haproxy')}")
            states = self.server_states()
            return len(states) == len(self.replica_names) and all(
                s["status"] == "UP" and s["check_status"] == "L7OK" for s in states.values()
            )

        wait_until(all_up, timeout=timeout, interval=0.2, what="HAProxy to report every server UP")

    # --- logs and state --------------------------------------------------------------------------

    def tail(self, name: str, lines: int = 30) -> str:
        path = self.processes[name].log_path
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def write_state(self) -> None:
        state: ClusterState = {
            "url": self.url,
            "stats_url": self.stats_url,
            "redis_url": self.redis_url,
            "redis_urls": self.redis_urls,
            "admin_socket": self.admin_socket,
            "processes": [
                {
                    "name": p.name,
                    "pid": p.pid,
                    "start_ticks": process_start_ticks(p.pid) if p.pid else None,
                    "port": p.port,
                    "argv": p.argv,
                    "stop_signal": p.stop_signal,
                    "stop_timeout": p.stop_timeout,
                    "log_path": str(p.log_path),
                    # What differs from the runner's own environment, so that `cluster restart`
                    # from another shell starts a replica as this runner did.
                    "env": {k: v for k, v in p.env.items() if os.environ.get(k) != v}
                    if is_replica_name(p.name)
                    else {},
                }
                for p in self.processes.values()
            ],
        }
        path = self.run_dir / STATE_FILE
        # Owner only: a replica's environment can hold its SECRET_KEY.
        path.touch(mode=0o600, exist_ok=True)
        path.chmod(0o600)
        path.write_text(json.dumps(state, indent=2))


# --- a detached cluster, seen from another process ----------------------------------------------


class ProcessRecord(TypedDict):
    """One process in the state file; `pid` and `start_ticks` are None if it never started."""

    name: str
    pid: int | None
    start_ticks: int | None
    port: int
    argv: list[str]
    # Missing from a state file written before it was recorded: SIGTERM.
    stop_signal: NotRequired[int]
    # Seconds to wait before SIGKILL (a replica drains first); missing: the caller's.
    stop_timeout: NotRequired[float]
    log_path: NotRequired[str]
    env: NotRequired[dict[str, str]]


class ClusterState(TypedDict):
    """The state file (`cluster.json`) a running cluster keeps in its run dir."""

    url: str
    stats_url: str
    redis_url: str
    # Every shard's, in order (written since shards exist).
    redis_urls: NotRequired[list[str]]
    admin_socket: str
    processes: list[ProcessRecord]


def read_state(run_dir: Path) -> ClusterState | None:
    path = run_dir / STATE_FILE
    if not path.exists():
        return None
    state: ClusterState = json.loads(path.read_text())
    return state


def process_start_ticks(pid: int) -> int | None:
    """When `pid` started, in clock ticks since boot (None if no such process).

    A PID and its start time name one process for good; a PID alone may have been reused.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22 (starttime); the command name (field 2) may hold spaces, so split after it.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":  # a zombie has exited already
        return None
    return int(fields[19])


def pid_runs(pid: int, start_ticks: int) -> bool:
    """True when the process recorded as (`pid`, `start_ticks`) is still alive."""
    return process_start_ticks(pid) == start_ticks


def record_runs(record: ProcessRecord) -> bool:
    """True when the recorded process is still alive; one that never started is not."""
    pid, started = record["pid"], record["start_ticks"]
    return pid is not None and started is not None and pid_runs(pid, started)


def stop_recorded(entry: ProcessRecord, *, timeout: float) -> None:
    """Stop a recorded process by its PID (and start time: never a reused PID): its stop signal,
    then SIGKILL after `timeout`. Nothing if it is not running."""
    pid, started = entry["pid"], entry["start_ticks"]
    if pid is None or started is None or not pid_runs(pid, started):
        return
    os.kill(pid, entry.get("stop_signal", signal.SIGTERM))
    deadline = time.monotonic() + timeout
    while pid_runs(pid, started) and time.monotonic() < deadline:
        time.sleep(0.05)  # polling the PID: a process not our child has no wait() to block on
    if pid_runs(pid, started):
        os.kill(pid, signal.SIGKILL)


def stop_detached(
    run_dir: Path, *, timeout: float = 10.0, say: Callable[[str], None] = print
) -> bool:
    """Stop the processes a detached `cluster up` recorded, in reverse order. False if none."""
    state = read_state(run_dir)
    if state is None:
        return False
    for entry in reversed(state["processes"]):
        pid, started = entry["pid"], entry["start_ticks"]
        if pid is None or started is None or not pid_runs(pid, started):
            say(f"{entry['name']}: not running")
            continue
        stop_recorded(entry, timeout=entry.get("stop_timeout", timeout))
        say(f"{entry['name']}: stopped (pid {pid})")
    (run_dir / STATE_FILE).unlink(missing_ok=True)
    return True


class LogFollower:
    """Prints new lines of each process's log, prefixed by its name, until stopped."""

    def __init__(self, cluster: Cluster, say: Callable[[str], None]) -> None:
        self.cluster = cluster
        self.say = say
        self._stop = threading.Event()
        self._offsets: dict[str, int] = {}
        self._thread = threading.Thread(target=self._run, name="log-follower", daemon=True)

    def start(self) -> None:
        for name, process in self.cluster.processes.items():
            self._offsets[name] = (
                process.log_path.stat().st_size if process.log_path.exists() else 0
            )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._poll()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self._poll()

    def _poll(self) -> None:
        width = max(len(name) for name in self.cluster.processes)
        for name, process in self.cluster.processes.items():
            if not process.log_path.exists():
                continue
            with open(process.log_path, "rb") as log:
                log.seek(self._offsets.get(name, 0))
                data = log.read()
            complete = data[: data.rfind(b"\n") + 1]
            self._offsets[name] = self._offsets.get(name, 0) + len(complete)
            for line in complete.decode(errors="replace").splitlines():
                self.say(f"{name:<{width}} | {line}")
