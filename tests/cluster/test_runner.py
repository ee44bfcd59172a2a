"""`manage.py cluster up --detach | status | down`: the runner as an operator uses it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from devtools.cluster import free_port, pid_runs
from tests.conftest import BASE_DIR, require_binaries


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", "cluster", *args],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_detached_cluster_comes_up_reports_status_and_goes_down_completely(
    tmp_path: Path,
) -> None:
    require_binaries("redis-server", "haproxy")
    env = {**os.environ, "SWITCHBOARD_VAR_DIR": str(tmp_path), "SECRET_KEY": "runner-test-key"}
    port = free_port()
    ports = [
        "--port",
        str(port),
        "--redis-port",
        str(free_port()),
        "--stats-port",
        str(free_port()),
    ]
    up = run(env, "up", "--detach", "--replicas", "2", *ports)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"http://127.0.0.1:{port}/" in up.stdout
        state = json.loads((tmp_path / "cluster" / "cluster.json").read_text())
        processes = state["processes"]
        assert [p["name"] for p in processes] == ["redis", "d1", "d2", "haproxy"]
        assert all(pid_runs(p["pid"], p["start_ticks"]) for p in processes)
        seen = {httpx.get(f"http://127.0.0.1:{port}/healthz").json()["replica"] for _ in range(6)}
        assert seen == {"d1", "d2"}

        status = run(env, "status")
        assert status.returncode == 0
        assert status.stdout.count("running") == 4 and "NOT RUNNING" not in status.stdout
        assert "UP" in status.stdout
        again = run(env, "up", "--detach", *ports)
        assert again.returncode != 0 and "already running" in again.stderr
    finally:
        down = run(env, "down")
    assert down.returncode == 0
    assert down.stdout.count("stopped") == 4
    assert not any(pid_runs(p["pid"], p["start_ticks"]) for p in processes)
    assert not (tmp_path / "cluster" / "cluster.json").exists()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz")
