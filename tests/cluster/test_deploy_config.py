"""docker compose cannot run here (no engine): check what can be checked of its topology.

Compose substitutes `${VAR}`, `${VAR:-default}` and `${VAR:?error}` from the shell before it
starts anything; `interpolate` does the same here (compose's rules, for the forms the file
uses), so the file is checked as compose would run it with a given environment.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import tempfile
import urllib.error
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import redis
import yaml

from devtools.cluster import ManagedProcess, free_port, wait_until
from ops.reports import haproxy_states
from tests.conftest import BASE_DIR, require_binaries

REQUIRED = {"SECRET_KEY": "k" * 60, "SB_STATS_PASSWORD": "0123abcd" * 3}
VARIABLE = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\})")


class MissingVariable(Exception):
    """What compose prints and exits with when a `${VAR:?error}` variable is unset or empty."""


def interpolate(value: Any, env: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name, op, arg = match["name"], match["op"], match["arg"]
        present = env.get(name) if op is None or not op.startswith(":") else env.get(name) or None
        if present is not None:
            return present
        if op is not None and op.endswith("?"):
            raise MissingVariable(f"required variable {name} is missing a value: {arg}")
        return arg if op is not None else ""

    return VARIABLE.sub(substitute, value)


def compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    raw = yaml.safe_load((BASE_DIR / "docker-compose.yml").read_text())
    return interpolate(raw, REQUIRED if env is None else env)  # type: ignore[no-any-return]


def test_compose_describes_redis_postgres_three_replicas_and_haproxy() -> None:
    services = compose()["services"]
    assert {"redis", "postgres", "d1", "d2", "d3", "haproxy"} <= set(services)
    for name in ("d1", "d2", "d3"):
        env = services[name]["environment"]
        assert env["REPLICA_ID"] == name
        assert env["DATABASE_URL"].startswith("postgres://")
        assert env["REDIS_URL"] == "redis://redis:6379/0"
        assert env["SECRET_KEY"] == REQUIRED["SECRET_KEY"]
    haproxy_env = services["haproxy"]["environment"]
    assert [haproxy_env[f"SB_D{i}"] for i in (1, 2, 3)] == ["d1:8000", "d2:8000", "d3:8000"]


@pytest.mark.parametrize("missing", sorted(REQUIRED))
def test_compose_refuses_to_start_without_a_secret_key_or_stats_password(missing: str) -> None:
    for unset in ({}, {missing: ""}):
        env = {k: v for k, v in REQUIRED.items() if k != missing} | unset
        with pytest.raises(MissingVariable, match=f"required variable {missing} is missing"):
            compose(env)
    # No published fallback anywhere in the file: `${SECRET_KEY:-...}` would start with it.
    text = (BASE_DIR / "docker-compose.yml").read_text()
    assert not re.search(rf"\$\{{{missing}:?-", text)


def test_stats_page_is_password_protected_and_not_published_to_the_host() -> None:
    services = compose(REQUIRED | {"SB_STATS_USER": "ops"})["services"]
    for name, service in services.items():
        published = [str(port) for port in service.get("ports", [])]
        assert not [port for port in published if "8404" in port], f"{name} publishes 8404"
    assert services["haproxy"]["ports"] == ["8000:8000"]
    haproxy_env = services["haproxy"]["environment"]
    assert haproxy_env["SB_STATS_USER"] == "ops"
    assert haproxy_env["SB_STATS_PASSWORD"] == REQUIRED["SB_STATS_PASSWORD"]
    url = f"http://ops:{REQUIRED['SB_STATS_PASSWORD']}@haproxy:8404/"
    assert {services[name]["environment"]["HAPROXY_STATS_URL"] for name in ("d1", "d2", "d3")} == {
        url
    }
    assert compose()["services"]["haproxy"]["environment"]["SB_STATS_USER"] == "stats"


@pytest.mark.parametrize(
    ("demo_users", "seeded"), [(None, False), ("0", False), ("", False), ("1", True)]
)
def test_migrate_creates_the_demo_users_only_when_asked(
    tmp_path: Path, demo_users: str | None, seeded: bool
) -> None:
    env = REQUIRED | ({} if demo_users is None else {"SWITCHBOARD_DEMO_USERS": demo_users})
    migrate = compose(env)["services"]["migrate"]
    # A stand-in `python` records what the service's command runs.
    calls = tmp_path / "calls"
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    run_env = {**migrate["environment"], "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    result = subprocess.run(
        migrate["command"], env=run_env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    expected = ["manage.py migrate --noinput"] + (["manage.py seed_demo"] if seeded else [])
    assert calls.read_text().splitlines() == expected
    replicas_show_them = compose(env)["services"]["d1"]["environment"]["SHOW_DEMO_LOGINS"]
    assert replicas_show_them == ("1" if seeded else "0")


def haproxy_env(**overrides: str) -> dict[str, str]:
    env = {**os.environ, **compose()["services"]["haproxy"]["environment"]}
    # Compose's service names do not resolve here: check with loopback addresses instead.
    env.update({f"SB_D{i}": f"127.0.0.1:{free_port()}" for i in (1, 2, 3)})
    env.update(overrides)
    return env


def test_haproxy_cfg_is_valid_with_the_compose_environment() -> None:
    require_binaries("haproxy")
    env = haproxy_env(SB_ADMIN_SOCKET="/tmp/sb-config-check.sock")
    result = subprocess.run(
        ["haproxy", "-c", "-f", str(BASE_DIR / "haproxy.cfg")],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Configuration file is valid" in result.stdout


def test_replicas_read_the_stats_page_with_compose_credentials_and_others_are_refused(
    tmp_path: Path,
) -> None:
    require_binaries("haproxy")
    stats_port = free_port()
    socket_dir = tempfile.mkdtemp(prefix="sb-deploy-")
    env = haproxy_env(
        SB_HTTP_BIND=f"127.0.0.1:{free_port()}",
        SB_STATS_BIND=f"127.0.0.1:{stats_port}",
        SB_ADMIN_SOCKET=f"{socket_dir}/admin.sock",
    )
    haproxy = ManagedProcess(
        name="haproxy",
        argv=["haproxy", "-db", "-f", str(BASE_DIR / "haproxy.cfg")],
        env=env,
        log_path=tmp_path / "haproxy.log",
        port=stats_port,
    )
    # What a replica is given, pointed at this HAProxy; settings split it the same way.
    given = urlsplit(compose()["services"]["d1"]["environment"]["HAPROXY_STATS_URL"])
    url = f"http://127.0.0.1:{stats_port}/"
    user, password = unquote(given.username or ""), unquote(given.password or "")
    haproxy.start()
    try:

        def answers() -> bool:
            assert haproxy.running(), (tmp_path / "haproxy.log").read_text()
            return set(haproxy_states(url, user=user, password=password)) == {"d1", "d2", "d3"}

        wait_until(answers, timeout=15, what="HAProxy's stats page")
        for wrong in ({}, {"user": user, "password": "not-" + password}):
            with pytest.raises(urllib.error.HTTPError) as refused:
                haproxy_states(url, **wrong)
            assert refused.value.code == 401
    finally:
        haproxy.stop()
        Path(socket_dir, "admin.sock").unlink(missing_ok=True)
        os.rmdir(socket_dir)


def test_the_image_runs_as_an_unprivileged_user_that_owns_only_var() -> None:
    lines = (BASE_DIR / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
    instructions = [line.split(None, 1) for line in lines if line and not line.startswith("#")]
    users = [(at, arg.strip()) for at, (word, arg) in enumerate(instructions) if word == "USER"]
    assert users, "no USER: the server would run as root"
    last_user_at, user = users[-1]
    assert user.split(":")[0] not in ("root", "0")
    assert "CMD" in [word for word, _ in instructions[last_user_at:]]
    runs = " ".join(arg for word, arg in instructions if word == "RUN")
    assert f"--uid {user.split(':')[0]}" in runs
    assert re.search(r"chown \S+ /app/var\b", runs) and "chmod 700 /app/var" in runs
    assert "var" in (BASE_DIR / ".dockerignore").read_text().split()


def test_the_sentinel_profile_runs_a_replica_and_three_sentinels_the_replicas_use() -> None:
    services = compose(REQUIRED | {"REDIS_SENTINELS": "sentinel-1:26379"})["services"]
    profiled = {
        name for name, service in services.items() if "sentinel" in service.get("profiles", [])
    }
    assert profiled == {"redis-replica", "sentinel-1", "sentinel-2", "sentinel-3"}
    assert services["redis-replica"]["command"][-2:] == ["redis", "6379"]
    assert services["d1"]["environment"]["REDIS_SENTINELS"] == "sentinel-1:26379"
    # Without the variable, the replicas use the one Redis (REDIS_URL).
    assert compose()["services"]["d2"]["environment"]["REDIS_SENTINELS"] == ""
    assert all(
        services[f"sentinel-{n}"]["command"] == services["sentinel-1"]["command"] for n in (2, 3)
    )


def test_the_sentinel_profiles_config_runs_in_a_real_sentinel(tmp_path: Path) -> None:
    """The profile's sentinel command, run here with loopback addresses for the compose names:
    redis-server takes the config it writes and watches the primary it names."""
    require_binaries("redis-server")
    primary_port, sentinel_port = free_port(), free_port()
    primary = ManagedProcess(
        name="primary",
        argv=["redis-server", "--port", str(primary_port), "--bind", "127.0.0.1", "--save", ""],
        env=dict(os.environ),
        log_path=tmp_path / "primary.log",
        port=primary_port,
    )
    script = compose()["services"]["sentinel-1"]["command"][2]
    script = (
        script.replace("port 26379", f"port {sentinel_port}")
        .replace("switchboard redis 6379", f"switchboard 127.0.0.1 {primary_port}")
        .replace("/tmp/sentinel.conf", str(tmp_path / "sentinel.conf"))
    )
    sentinel = ManagedProcess(
        name="sentinel",
        argv=["sh", "-c", script],
        env=dict(os.environ),
        log_path=tmp_path / "sentinel.log",
        port=sentinel_port,
    )
    primary.start()
    sentinel.start()
    try:
        client = redis.Redis(port=sentinel_port, socket_timeout=1, decode_responses=True)

        def watches_the_primary() -> bool:
            try:
                return client.sentinel_get_master_addr_by_name("switchboard") == (
                    "127.0.0.1",
                    primary_port,
                )
            except redis.RedisError:
                return False

        wait_until(watches_the_primary, timeout=15, what="the sentinel to watch the primary")
        client.close()
    finally:
        sentinel.stop()
        primary.stop()
