"""`manage.py cluster up --detach | status | down`: the runner as an operator uses it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from devtools.cluster import Cluster, ClusterConfig, free_port, pid_runs
from tests.cluster.helpers import api_post, sessions_for, socket_for
from tests.conftest import BASE_DIR, TEST_DB, manage, require_binaries, require_postgres


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
    # On the tiers' database: with PostgreSQL, the runner's own first, stopped last.
    names = ["redis", "d1", "d2", "haproxy"]
    if TEST_DB == "postgres":
        require_postgres()
        names.insert(0, "postgres")
    env = {**os.environ, "SWITCHBOARD_VAR_DIR": str(tmp_path), "SECRET_KEY": "runner-test-key"}
    port = free_port()
    ports = [
        "--port",
        str(port),
        "--redis-port",
        str(free_port()),
        "--stats-port",
        str(free_port()),
        "--postgres-port",
        str(free_port()),
    ]
    up = run(env, "up", "--detach", "--replicas", "2", "--db", TEST_DB, *ports)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"http://127.0.0.1:{port}/" in up.stdout
        state = json.loads((tmp_path / "cluster" / "cluster.json").read_text())
        processes = state["processes"]
        assert [p["name"] for p in processes] == names
        assert all(pid_runs(p["pid"], p["start_ticks"]) for p in processes)
        seen = {httpx.get(f"http://127.0.0.1:{port}/healthz").json()["replica"] for _ in range(6)}
        assert seen == {"d1", "d2"}

        status = run(env, "status")
        assert status.returncode == 0
        assert status.stdout.count("running") == len(names) and "NOT RUNNING" not in status.stdout
        assert "UP" in status.stdout
        again = run(env, "up", "--detach", *ports)
        assert again.returncode != 0 and "already running" in again.stderr
    finally:
        down = run(env, "down")
    assert down.returncode == 0
    assert down.stdout.count("stopped") == len(names)
    assert not any(pid_runs(p["pid"], p["start_ticks"]) for p in processes)
    assert not (tmp_path / "cluster" / "cluster.json").exists()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz")


async def test_replicas_on_simulated_hosts_listen_on_their_own_addresses_and_deliver_across(
    tmp_path: Path,
) -> None:
    """`--hosts 2`: d1 on 127.0.0.2 and d2 on 127.0.0.3, as two machines; HAProxy reaches both
    and a push made through d1 reaches a socket held by d2."""
    require_binaries("redis-server", "haproxy")
    env = {"SWITCHBOARD_VAR_DIR": str(tmp_path), "SECRET_KEY": "hosts-test-key"}
    # On SQLite whatever the tier's database: this is about addresses (and it keeps SQLite
    # shared across processes covered when the tiers run on PostgreSQL).
    cluster = Cluster(ClusterConfig(replicas=2, hosts=2, run_dir=tmp_path / "run", env=env))
    assert cluster.replica_hosts == {"d1": "127.0.0.2", "d2": "127.0.0.3"}
    try:
        await asyncio.to_thread(manage, cluster, "migrate", "--noinput", "-v0")
        await asyncio.to_thread(cluster.start)
        async with httpx.AsyncClient(timeout=5) as http:
            for name, host in cluster.replica_hosts.items():
                port = cluster.replica_ports[name]
                health = (await http.get(f"http://{host}:{port}/healthz")).json()
                assert health["replica"] == name
                # Only on its own address: nothing answers on the same port elsewhere.
                with pytest.raises(httpx.ConnectError):
                    await http.get(f"http://127.0.0.1:{port}/healthz")
        ((name, session),) = (await asyncio.to_thread(sessions_for, cluster, 1, "hosts")).items()
        socket = await socket_for(cluster, session, replica="d2")
        (hello,) = socket.of_type("hello")
        assert hello["replica"] == "d2"
        answer = await asyncio.to_thread(
            api_post, cluster, "/api/push", {"user": name, "payload": "across"}, replica="d1"
        )
        assert (answer.status_code, answer.headers["x-replica"]) == (200, "d1")
        (push,) = await socket.wait_type("push", timeout=10)
        assert (push["payload"], push["origin"]) == ("across", "d1")
        await socket.close()
    finally:
        await asyncio.to_thread(cluster.stop)
