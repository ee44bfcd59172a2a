"""Fixtures that start real processes (redis-server, Daphne replicas, HAProxy) on free ports.

Each tier is a marker named after its folder. A tier whose binary is missing is skipped on a
developer's machine and fails under CI=true, where nothing may be skipped.

The integration and cluster tiers run on PostgreSQL under CI=true or with SB_TEST_DB=postgres
(TEST_DB), on SQLite otherwise; the unit tier and the e2e tier stay on SQLite either way, so
one run covers both databases.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from devtools import postgres
from devtools.cluster import Cluster, ClusterConfig, ManagedProcess, free_port, wait_until
from devtools.postgres import LocalPostgres

TIERS = ("unit", "integration", "cluster", "package", "e2e")
BASE_DIR = Path(__file__).resolve().parent.parent


def _test_db() -> str:
    value = os.environ.get("SB_TEST_DB") or ("postgres" if os.environ.get("CI") else "sqlite")
    if value not in ("sqlite", "postgres"):
        raise pytest.UsageError(f"SB_TEST_DB={value!r}: use sqlite or postgres")
    return value


# The integration and cluster tiers' database, as ClusterConfig.db names it.
TEST_DB = _test_db()


def _tier_of(item: pytest.Item) -> str | None:
    parts = Path(str(item.fspath)).relative_to(BASE_DIR / "tests").parts
    return parts[0] if parts and parts[0] in TIERS else None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        tier = _tier_of(item)
        if tier is not None:
            item.add_marker(getattr(pytest.mark, tier))
    # Fastest tiers first, so a broken unit fails in seconds; e2e last, because Playwright's sync
    # API keeps an event loop of its own for the session, which async tests after it would meet.
    order = {tier: rank for rank, tier in enumerate(TIERS)}
    items.sort(key=lambda item: order.get(_tier_of(item) or "", len(TIERS)))


# Marked tests that xdist failed to group on this worker (see pytest_collection_finish).
_UNGROUPED: set[str] = set()


def pytest_collection_finish(session: pytest.Session) -> None:
    """Under `--dist loadgroup` (make test), each module marked `xdist_group` must run whole on
    one worker, or its module fixture (a cluster, a virtualenv) starts once per worker, at the
    same time. xdist groups by a suffix it adds to each marked test's node id; pytest 9.2
    ignores that change (pytest-dev/pytest-xdist#1386), and the grouping then stopped without
    a word. Now those tests fail, saying why."""
    # On a worker, xdist sets `loadgroup` (its `dist` is "no" there).
    if not getattr(session.config.option, "loadgroup", False):
        return
    _UNGROUPED.update(
        item.nodeid
        for item in session.items
        if item.get_closest_marker("xdist_group") is not None and "@" not in item.nodeid
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.nodeid in _UNGROUPED:
        pytest.fail(
            "--dist loadgroup did not group this test: this pytest drops the node id suffix "
            "xdist groups by (pytest-dev/pytest-xdist#1386); install the pytest that "
            "requirements-dev.txt pins.",
            pytrace=False,
        )


def require_binaries(*names: str) -> None:
    missing = [name for name in names if shutil.which(name) is None]
    if not missing:
        return
    _skip_or_fail(f"{', '.join(missing)} not installed (make test installs them)")


def require_postgres() -> None:
    """PostgreSQL's server programs, which Debian keeps off PATH (devtools/postgres.py)."""
    if postgres.bin_dir() is None:
        _skip_or_fail("PostgreSQL (initdb, postgres) not installed (make test installs it)")


def _skip_or_fail(message: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{message}; under CI=true no tier may be skipped")
    pytest.skip(message)


def start_redis_server(run_dir: Path, port: int | None = None) -> tuple[str, ManagedProcess]:
    """A real redis-server on `port` (a free one by default), answering: its URL and process
    (stopped by PID; started again on the same port by `process.start()`)."""
    require_binaries("redis-server")
    port = port or free_port()
    run_dir.mkdir(parents=True, exist_ok=True)
    # Each option beside its value (the formatter would put one per line).
    argv = [
        "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
        "--appendonly", "no", "--dir", str(run_dir),
    ]  # fmt: skip
    process = ManagedProcess(
        name=f"redis-{port}",
        argv=argv,
        env=dict(os.environ),
        log_path=run_dir / "redis.log",
        port=port,
    )
    process.start()
    try:
        wait_until(lambda: _redis_answers(port), timeout=15, what="redis-server")
    except BaseException:
        process.stop()
        raise
    return f"redis://127.0.0.1:{port}/0", process


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on a free port, for the integration tier."""
    url, process = start_redis_server(tmp_path_factory.mktemp("redis"))
    try:
        yield url
    finally:
        process.stop()


@pytest.fixture(scope="session")
def redis_shard_urls(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[str]]:
    """Three real redis-servers, the first `redis_url`'s, for a layer of three shards (with
    SB_TEST_SHARDS=3 every integration test's layer is one: tests/integration/conftest.py)."""
    others = [start_redis_server(tmp_path_factory.mktemp("redis-shard")) for _ in range(2)]
    try:
        yield [redis_url] + [url for url, _ in others]
    finally:
        for _, process in others:
            process.stop()


def _redis_answers(port: int) -> bool:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(16).startswith(b"+PONG")


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real PostgreSQL on a free port, started as the runner starts one, for the integration
    tier's test database (made by pytest-django: its role may create databases)."""
    require_postgres()
    server = LocalPostgres(tmp_path_factory.mktemp("postgres"), free_port())
    server.prepare()
    process = ManagedProcess(
        name="postgres",
        argv=server.server_argv(),
        env=dict(os.environ),
        log_path=server.base_dir / "postgres.log",
        port=server.port,
        stop_signal=server.stop_signal,
    )

    def ready() -> bool:
        if not process.running():
            raise AssertionError(f"postgres exited:\n{process.log_path.read_text()}")
        return server.ready()

    process.start()
    try:
        wait_until(ready, timeout=30, what="PostgreSQL")
        server.create_database()
        yield server.url
    finally:
        process.stop()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Redis + 3 Daphne replicas + HAProxy, with demo users, shared by the cluster tier; its
    database is TEST_DB's (a PostgreSQL of the runner's own, or a SQLite file).

    Tests that kill a replica or Redis put it back before they end.
    """
    yield from running_cluster(tmp_path_factory, db=TEST_DB)


def running_cluster(tmp_path_factory: pytest.TempPathFactory, *, db: str) -> Iterator[Cluster]:
    require_binaries("redis-server", "haproxy")
    if db == "postgres":
        require_postgres()
    var_dir = tmp_path_factory.mktemp("cluster")
    env = {
        "SWITCHBOARD_VAR_DIR": str(var_dir),
        "SECRET_KEY": "cluster-tests-secret-key",
        # A client that stops reading is held back sooner than by default (1 MiB): less to send.
        "SOCKET_BACKLOG_MAX_BYTES": str(256 * 1024),
        # Full garbage collections every second (60 by default), so a test can see them run.
        "GC_FULL_COLLECT_SECS": "1",
        # Sessions checked every second (60 by default), so a test sees an expiry close a socket.
        "SESSION_CHECK_SECS": "1",
        # A closed SSE stream is noticed within ~2 s (10 s by default), and a dead replica's
        # users leave presence after 6 s (15 s): the tests wait for both.
        "SSE_HEARTBEAT_SECS": "1",
        "PRESENCE_HEARTBEAT_SECS": "2",
        # A drain moves a replica's sockets over 2 s (10 by default): the rolling restart test.
        "DRAIN_WINDOW_SECS": "2",
    }
    os.environ.update(env)
    # The tests open hundreds of sockets from 127.0.0.1 within seconds: no per-IP connect limit
    # in effect (tests/cluster/test_haproxy_limits.py checks it on a HAProxy of its own).
    config = ClusterConfig(
        replicas=3, run_dir=var_dir / "run", env=env, ws_connects_per_ip_10s=1_000_000, db=db
    )
    the_cluster = Cluster(config)
    try:
        # PostgreSQL first (started and migrated by the runner), for the commands.
        the_cluster.start_database()
        for command in (["migrate", "--noinput", "-v0"], ["seed_demo"]):
            manage(the_cluster, *command)
        the_cluster.start()
        yield the_cluster
    finally:
        the_cluster.stop()


@contextmanager
def cluster_of_its_own(
    tmp_path_factory: pytest.TempPathFactory, name: str, **config: Any
) -> Iterator[Cluster]:
    """A cluster for one module whose Redis differs from the shared one (Sentinel, shards):
    migrated, started, and stopped by PID after. `config`: ClusterConfig's fields."""
    require_binaries("redis-server", "haproxy")
    var_dir = tmp_path_factory.mktemp(name)
    env = {"SWITCHBOARD_VAR_DIR": str(var_dir), "SECRET_KEY": f"{name}-tests-secret-key"}
    the_cluster = Cluster(
        ClusterConfig(run_dir=var_dir / "run", env=env, ws_connects_per_ip_10s=1_000_000, **config)
    )
    manage(the_cluster, "migrate", "--noinput", "-v0")
    the_cluster.start()
    try:
        yield the_cluster
    finally:
        the_cluster.stop()


def manage(cluster: Cluster, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `manage.py` as a separate process against the cluster, as an operator would."""
    result = cluster.manage(*args, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(
            f"manage.py {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
        )
    return result


@pytest.fixture
def healthy_cluster(cluster: Cluster) -> Iterator[Cluster]:
    """The shared cluster, checked whole before the test and made whole again after it."""
    cluster.wait_all_up(timeout=30)
    try:
        yield cluster
    finally:
        if not cluster.processes["redis"].running():
            cluster.start_redis()
        for name in cluster.replica_names:
            if not cluster.processes[name].running():
                cluster.start_replica(name)
        cluster.wait_all_up(timeout=30)
