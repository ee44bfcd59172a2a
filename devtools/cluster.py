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
from pathlib import Path
from typing import TypedDict

BASE_DIR = Path(__file__).resolve().parent.parent
HAPROXY_CFG = BASE_DIR / "haproxy.cfg"
# haproxy.cfg lists servers d1..d8, each present when its SB_Dn variable is set.
MAX_REPLICAS = 8
STATE_FILE = "cluster.json"


class ClusterError(RuntimeError):
    """The cluster could not be started, or a process misbehaved; the message says which."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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

    def stop(self, timeout: float = 10.0) -> None:
        if not self.running():
            return
        assert self.popen is not None
        self.popen.terminate()
        try:
            self.popen.wait(timeout)
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
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.replica_names = [f"d{i}" for i in range(1, config.replicas + 1)]
        self.replica_ports = {name: free_port() for name in self.replica_names}
        self.processes: dict[str, ManagedProcess] = {}
        self._build_processes()

    # --- addresses -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.http_port}/ws/"

    @property
    def stats_url(self) -> str:
        return f"http://127.0.0.1:{self.stats_port}/"

    def replica_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.replica_ports[name]}"

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
        env.update(extra)
        return env

    # --- building --------------------------------------------------------------------------------

    def _build_processes(self) -> None:
        # Command lines keep each option beside its value (the formatter would put one per line).
        redis_argv = [
            "redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1",
            "--dir", str(self.run_dir), "--daemonize", "no", "--save", "",
            "--appendonly", "yes" if self.config.redis_persistence else "no",
        ]  # fmt: skip
        self._add("redis", redis_argv, dict(os.environ), self.redis_port)
        for name, port in self.replica_ports.items():
            argv = [
                sys.executable, "-m", "realtime.serve", "-b", "127.0.0.1", "-p", str(port),
                "--proxy-headers", "--websocket_timeout", "-1",
                "-v", "1" if self.config.access_log else "0",
                self.config.asgi_app,
            ]  # fmt: skip
            # The stats page, read-only, tells each replica HAProxy's view of all of them.
            env = self.command_env(REPLICA_ID=name, HAPROXY_STATS_URL=self.stats_url)
            self._add(name, argv, env, port)
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
        for index, port in enumerate(self.replica_ports.values(), start=1):
            haproxy_env[f"SB_D{index}"] = f"127.0.0.1:{port}"
        self._add(
            "haproxy", ["haproxy", "-db", "-f", str(HAPROXY_CFG)], haproxy_env, self.http_port
        )

    def _add(self, name: str, argv: list[str], env: dict[str, str], port: int) -> None:
        self.processes[name] = ManagedProcess(
            name=name, argv=argv, env=env, log_path=self.run_dir / f"{name}.log", port=port
        )

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self, *, timeout: float = 60.0) -> None:
        try:
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

    # --- Redis -----------------------------------------------------------------------------------

    def start_redis(self, *, timeout: float = 30.0) -> None:
        self.processes["redis"].start()
        # The state file names every PID: `cluster down` and the benchmark's CPU readings must
        # see a restarted process, not the one it replaced.
        self.write_state()
        wait_until(self.redis_ping, timeout=timeout, what=f"redis-server on {self.redis_port}")

    def stop_redis(self) -> None:
        self.processes["redis"].stop()

    def restart_redis(self, *, timeout: float = 30.0) -> None:
        """Restart Redis on the same port; without persistence it comes back empty."""
        self.stop_redis()
        self.start_redis(timeout=timeout)

    def redis_ping(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.redis_port), timeout=1) as sock:
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
        lines = self.haproxy_command("show stat").splitlines()
        header = lines[0].lstrip("# ").split(",")
        states = {}
        for line in lines[1:]:
            row = dict(zip(header, line.split(","), strict=False))
            if row.get("pxname") == "replicas" and row.get("svname") in self.replica_ports:
                states[row["svname"]] = {
                    "status": row.get("status", ""),
                    "check_status": row.get("check_status", ""),
                    "sessions": row.get("scur", ""),
                }
        return states

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
            "admin_socket": self.admin_socket,
            "processes": [
                {
                    "name": p.name,
                    "pid": p.pid,
                    "start_ticks": process_start_ticks(p.pid) if p.pid else None,
                    "port": p.port,
                    "argv": p.argv,
                }
                for p in self.processes.values()
            ],
        }
        (self.run_dir / STATE_FILE).write_text(json.dumps(state, indent=2))


# --- a detached cluster, seen from another process ----------------------------------------------


class ProcessRecord(TypedDict):
    """One process in the state file; `pid` and `start_ticks` are None if it never started."""

    name: str
    pid: int | None
    start_ticks: int | None
    port: int
    argv: list[str]


class ClusterState(TypedDict):
    """The state file (`cluster.json`) a running cluster keeps in its run dir."""

    url: str
    stats_url: str
    redis_url: str
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
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while pid_runs(pid, started) and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid_runs(pid, started):
            os.kill(pid, signal.SIGKILL)
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
