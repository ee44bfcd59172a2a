"""devtools.cluster.free_port: ports below the kernel's ephemeral range, never handed out twice,
and a slice of their own for each pytest-xdist worker (two workers' clusters start at once)."""

from __future__ import annotations

import socket

import pytest

from devtools import cluster


def test_ports_are_below_the_ephemeral_range_and_never_repeated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    low, high = cluster._port_slice()
    ports = [cluster.free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert all(low <= port < high for port in ports)
    with open("/proc/sys/net/ipv4/ip_local_port_range") as ranges:
        assert high <= int(ranges.read().split()[0])


def test_each_worker_draws_from_its_own_slice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    slices = []
    for worker in ("gw0", "gw1"):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        slices.append(cluster._port_slice())
        assert all(slices[-1][0] <= cluster.free_port() < slices[-1][1] for _ in range(50))
    assert slices[0][1] <= slices[1][0], "the slices do not overlap"


def test_a_port_someone_listens_on_is_not_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "1")
    monkeypatch.setattr(cluster, "_port_slice", lambda: (20_000, 20_002))
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", 20_000))
        taken.listen()
        monkeypatch.setattr(cluster, "_handed_out", set())
        assert cluster.free_port() == 20_001
