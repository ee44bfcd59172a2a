"""Drain, undrain and rolling restarts of the runner's replicas (realtime/drain.py is the
replica's side).

Draining dX: HAProxy puts dX in maintenance first (every new request and socket goes elsewhere
at once, cookie holders too, without waiting for two failed readiness checks), then dX is told
to drain: its sockets get reconnect slots spread over the window and leave one by one, resuming
on the other replicas. Undrain: dX takes sockets again, and HAProxy puts it back once its
readiness check passes. A rolling restart drains, restarts and re-admits each replica in turn,
waiting for each to be ready before the next goes.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from devtools.cluster import (
    BASE_DIR,
    STATE_FILE,
    Cluster,
    ClusterError,
    haproxy_command,
    is_replica_name,
    process_start_ticks,
    read_state,
    record_runs,
    server_states,
    stop_recorded,
    wait_until,
)

# The backends that list the replicas as servers of their own (haproxy.cfg); replicas_nosticky
# tracks `replicas`, so it follows.
BACKENDS = ("replicas", "replicas_live")


def post(url: str, *, timeout: float = 10.0) -> dict[str, Any]:
    request = urllib.request.Request(url, data=b"", method="POST")
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        return json.loads(answer.read())  # type: ignore[no-any-return]


def set_haproxy_state(admin_socket: str, name: str, state: str) -> None:
    for backend in BACKENDS:
        haproxy_command(admin_socket, f"set server {backend}/{name} state {state}")


def drain(
    admin_socket: str, replica_url: str, name: str, *, window_secs: float | None = None
) -> dict[str, Any]:
    set_haproxy_state(admin_socket, name, "maint")
    query = "" if window_secs is None else f"?window_secs={window_secs:g}"
    return post(f"{replica_url}/drain{query}")


def undrain(admin_socket: str, replica_url: str, name: str) -> dict[str, Any]:
    answer = post(f"{replica_url}/drain?undo=1")
    # READY, not UP: HAProxy checks readiness before it sends anything there.
    set_haproxy_state(admin_socket, name, "ready")
    return answer


def open_sockets(replica_url: str) -> int | None:
    try:
        with urllib.request.urlopen(f"{replica_url}/healthz", timeout=2) as answer:
            return int(json.loads(answer.read())["connections"])
    except (OSError, ValueError, KeyError):
        return None


def _emptied(replica_url: str) -> bool:
    return open_sockets(replica_url) == 0


def restart_rolling(
    cluster: Cluster, *, window_secs: float, say: Callable[[str], None] = print
) -> list[dict[str, Any]]:
    """Drain, restart and re-admit each replica in turn; what each step took."""

    def restart(name: str) -> None:
        cluster.processes[name].stop(timeout=window_secs + 10)
        cluster.start_replica(name)

    def admitted(name: str) -> bool:
        return cluster.server_states().get(name, {}).get("status") == "UP"

    return [
        _roll_one(
            cluster.admin_socket,
            cluster.replica_url(name),
            name,
            window_secs=window_secs,
            restart=restart,
            admitted=admitted,
            say=say,
        )
        for name in cluster.replica_names
    ]


def _roll_one(
    admin_socket: str,
    url: str,
    name: str,
    *,
    window_secs: float,
    restart: Callable[[str], None],
    admitted: Callable[[str], bool],
    say: Callable[[str], None],
) -> dict[str, Any]:
    """One replica: drained until its sockets are gone, restarted, re-admitted once ready."""
    started = time.monotonic()
    told = drain(admin_socket, url, name, window_secs=window_secs)["sockets"]
    wait_until(
        partial(_emptied, url),
        timeout=window_secs + 10,
        what=f"{name}'s sockets to move to other replicas",
    )
    drained = time.monotonic() - started
    restart(name)
    wait_until(partial(_live, url), timeout=60, what=f"{name} to serve again")
    undrain(admin_socket, url, name)
    wait_until(partial(admitted, name), timeout=30, what=f"HAProxy to admit {name}")
    step = {
        "replica": name,
        "sockets_moved": told,
        "drained_secs": round(drained, 2),
        "back_in_secs": round(time.monotonic() - started, 2),
    }
    say(f"{name}: {json.dumps(step)}")
    return step


def replica_address(state: Any, name: str) -> str:
    """A detached cluster's replica URL, from its state file (cluster.json)."""
    for record in state["processes"]:
        if record["name"] == name:
            argv = record["argv"]
            host = argv[argv.index("-b") + 1] if "-b" in argv else "127.0.0.1"
            return f"http://{host}:{record['port']}"
    raise ClusterError(f"no replica named {name!r} in this cluster")


def restart_detached(
    run_dir: Path, *, window_secs: float, say: Callable[[str], None] = print
) -> list[dict[str, Any]]:
    """`cluster restart --rolling` for a cluster started with `--detach`: each replica in turn,
    drained, stopped by its PID, started again as the runner started it (its command line and
    environment from cluster.json), and re-admitted once ready."""
    state = read_state(run_dir)
    if state is None:
        raise ClusterError(f"No detached cluster recorded in {run_dir}.")
    admin_socket = state["admin_socket"]
    records = {r["name"]: r for r in state["processes"]}

    def restart(name: str) -> None:
        record = records[name]
        stop_recorded(record, timeout=window_secs + 10)
        with open(record.get("log_path") or run_dir / f"{name}.log", "ab") as log:
            popen = subprocess.Popen(
                record["argv"],
                env={**os.environ, **record.get("env", {})},
                cwd=BASE_DIR,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        record["pid"], record["start_ticks"] = popen.pid, process_start_ticks(popen.pid)
        (run_dir / STATE_FILE).write_text(json.dumps(state, indent=2))

    names = [n for n, r in records.items() if is_replica_name(n) and record_runs(r)]
    return [
        _roll_one(
            admin_socket,
            replica_address(state, name),
            name,
            window_secs=window_secs,
            restart=restart,
            admitted=partial(_up_in_haproxy, admin_socket),
            say=say,
        )
        for name in names
    ]


def _live(replica_url: str) -> bool:
    return open_sockets(replica_url) is not None


def _up_in_haproxy(admin_socket: str, name: str) -> bool:
    return server_states(admin_socket).get(name, {}).get("status") == "UP"
