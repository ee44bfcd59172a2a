"""HAProxy's own limits: new WebSockets per client IP, request body size, the stats page.

The shared cluster runs with the per-IP limit out of the way (its tests open hundreds of
sockets from 127.0.0.1), so the limit is checked on a second HAProxy, started from the same
haproxy.cfg in front of the same replicas with a low limit and a stats password.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import InvalidStatus

from devtools.cluster import (
    HAPROXY_CFG,
    Cluster,
    ClusterConfig,
    ManagedProcess,
    free_port,
    haproxy_command,
    wait_until,
)
from tests.cluster.helpers import api_post, sessions_for
from tests.conftest import require_binaries
from tests.support.clients import WsClient

CONNECTS_PER_IP_10S = 5
STATS_USER, STATS_PASSWORD = "ops", "limits-test-password"
# Two loopback addresses of their own, so no other test's sockets count against the limit.
LIMITED_SOURCE, WITNESS_SOURCE = "127.0.0.7", "127.0.0.8"


@dataclass
class LimitedHaproxy:
    ws_url: str
    stats_url: str


def all_servers_up(admin_socket: str, count: int) -> bool:
    lines = haproxy_command(admin_socket, "show stat").splitlines()
    header = lines[0].lstrip("# ").split(",")
    rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:]]
    up = [
        row
        for row in rows
        if row.get("pxname") == "replicas"
        and row.get("svname", "").startswith("d")
        and row.get("status") == "UP"
        and row.get("check_status") == "L7OK"
    ]
    return len(up) == count


@pytest.fixture
def limited_haproxy(cluster: Cluster, tmp_path: Path) -> Iterator[LimitedHaproxy]:
    """A second HAProxy before the shared replicas: 5 connects per IP per 10 s, stats password."""
    http_port, stats_port = free_port(), free_port()
    # A Unix socket path must stay short: not under pytest's deep tmp_path.
    socket_dir = tempfile.mkdtemp(prefix="sb-limits-")
    admin_socket = str(Path(socket_dir) / "admin.sock")
    env = {
        **os.environ,
        "SB_HTTP_BIND": f"127.0.0.1:{http_port}",
        "SB_STATS_BIND": f"127.0.0.1:{stats_port}",
        "SB_ADMIN_SOCKET": admin_socket,
        "SB_CHECK_INTER": "200ms",
        "SB_WS_CONNECTS_PER_IP_10S": str(CONNECTS_PER_IP_10S),
        "SB_STATS_USER": STATS_USER,
        "SB_STATS_PASSWORD": STATS_PASSWORD,
    }
    for index, port in enumerate(cluster.replica_ports.values(), start=1):
        env[f"SB_D{index}"] = f"127.0.0.1:{port}"
    process = ManagedProcess(
        name="haproxy-limited",
        argv=["haproxy", "-db", "-f", str(HAPROXY_CFG)],
        env=env,
        log_path=tmp_path / "haproxy-limited.log",
        port=http_port,
    )
    process.start()
    try:

        def up() -> bool:
            assert process.running(), process.log_path.read_text()
            return all_servers_up(admin_socket, len(cluster.replica_ports))

        wait_until(up, timeout=20, what="the second HAProxy to report every server UP")
        yield LimitedHaproxy(
            ws_url=f"ws://127.0.0.1:{http_port}/ws/", stats_url=f"http://127.0.0.1:{stats_port}/"
        )
    finally:
        process.stop()
        Path(admin_socket).unlink(missing_ok=True)
        os.rmdir(socket_dir)


async def socket_from(source: str, ws_url: str, session_key: str) -> WsClient:
    """A user's socket whose TCP connection comes from the loopback address `source`."""
    ws = await WsClient.open(ws_url, cookie=f"sessionid={session_key}", local_addr=(source, 0))
    await ws.wait_type("hello")
    return ws


async def test_new_sockets_over_the_per_ip_limit_get_429_from_haproxy(
    cluster: Cluster, limited_haproxy: LimitedHaproxy
) -> None:
    users = sessions_for(cluster, 2, "ipcap")
    sockets = [
        await socket_from(LIMITED_SOURCE, limited_haproxy.ws_url, users["ipcap0"])
        for _ in range(CONNECTS_PER_IP_10S)
    ]
    with pytest.raises(InvalidStatus) as refused:
        await socket_from(LIMITED_SOURCE, limited_haproxy.ws_url, users["ipcap0"])
    response = refused.value.response
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "10"
    assert "X-Replica" not in response.headers, "a replica answered; HAProxy should have"
    # Another address is not held back by the first one's count.
    witness = await socket_from(WITNESS_SOURCE, limited_haproxy.ws_url, users["ipcap1"])
    assert witness.hello["user"] == "ipcap1"
    # The limit refuses new sockets only: the open ones keep receiving.
    answer = await asyncio.to_thread(
        api_post, cluster, "/api/push", {"user": "ipcap0", "payload": {"marker": "ipcap"}}
    )
    assert answer.status_code == 200, answer.text
    for ws in sockets:
        await ws.wait_for(
            lambda frames: any(f.get("payload") == {"marker": "ipcap"} for f in frames),
            what="the push on a socket opened before the limit",
        )
    for ws in [*sockets, witness]:
        await ws.close()


def test_the_runners_default_limit_is_haproxy_cfgs() -> None:
    default = re.search(r'"\$\{SB_WS_CONNECTS_PER_IP_10S-(\d+)\}"', HAPROXY_CFG.read_text())
    assert default, "haproxy.cfg no longer reads SB_WS_CONNECTS_PER_IP_10S with a default"
    assert ClusterConfig().ws_connects_per_ip_10s == int(default.group(1))


def test_body_over_the_limit_gets_413_from_haproxy_before_any_replica(cluster: Cluster) -> None:
    answer = api_post(cluster, "/api/push", b"x" * (2 * 1024 * 1024))
    assert answer.status_code == 413
    assert "X-Replica" not in answer.headers, "a replica answered; HAProxy should have"
    assert answer.json()["error"] == "body_too_large"
    # Just over the API's own 1 MiB, HAProxy lets it through and the replica's API refuses it.
    answer = api_post(cluster, "/api/push", b"x" * (1024 * 1024 + 1))
    assert answer.status_code == 413
    assert answer.headers["X-Replica"] in cluster.replica_names
    assert answer.json()["error"] == "body_too_large"


def test_the_runners_stats_page_listens_on_loopback_only(cluster: Cluster) -> None:
    assert httpx.get(f"{cluster.stats_url};csv", timeout=5).status_code == 200
    # Bound to 127.0.0.1, not to every address: another loopback address finds nothing there.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.2", cluster.stats_port), timeout=5).close()
    assert '"${SB_STATS_BIND-127.0.0.1:8404}"' in HAPROXY_CFG.read_text()


def test_stats_page_asks_for_the_password_when_one_is_set(limited_haproxy: LimitedHaproxy) -> None:
    assert httpx.get(limited_haproxy.stats_url, timeout=5).status_code == 401
    wrong = httpx.get(limited_haproxy.stats_url, auth=(STATS_USER, "wrong"), timeout=5)
    assert wrong.status_code == 401
    right = httpx.get(limited_haproxy.stats_url, auth=(STATS_USER, STATS_PASSWORD), timeout=5)
    assert right.status_code == 200


@pytest.mark.parametrize("password", [None, "", "s3cret"], ids=["unset", "empty", "set"])
def test_haproxy_cfg_is_valid_with_and_without_a_stats_password(password: str | None) -> None:
    require_binaries("haproxy")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SB_STATS_")}
    env.update({"SB_ADMIN_SOCKET": "/tmp/sb-limits-check.sock", "SB_D1": "127.0.0.1:8001"})
    if password is not None:
        env["SB_STATS_PASSWORD"] = password
    result = subprocess.run(
        ["haproxy", "-c", "-f", str(HAPROXY_CFG)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Configuration file is valid" in result.stdout
