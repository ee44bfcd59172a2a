"""docker compose cannot run here (no engine): check what can be checked of its topology."""

from __future__ import annotations

import os
import subprocess

import yaml

from tests.conftest import BASE_DIR, require_binaries


def compose() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((BASE_DIR / "docker-compose.yml").read_text())  # type: ignore[no-any-return]


def test_compose_describes_redis_postgres_three_replicas_and_haproxy() -> None:
    services = compose()["services"]
    assert {"redis", "postgres", "d1", "d2", "d3", "haproxy"} <= set(services)
    for name in ("d1", "d2", "d3"):
        env = services[name]["environment"]
        assert env["REPLICA_ID"] == name
        assert env["DATABASE_URL"].startswith("postgres://")
        assert env["REDIS_URL"] == "redis://redis:6379/0"
    haproxy_env = services["haproxy"]["environment"]
    assert [haproxy_env[f"SB_D{i}"] for i in (1, 2, 3)] == ["d1:8000", "d2:8000", "d3:8000"]


def test_haproxy_cfg_is_valid_with_the_compose_environment() -> None:
    require_binaries("haproxy")
    env = {**os.environ, **compose()["services"]["haproxy"]["environment"]}
    env["SB_ADMIN_SOCKET"] = "/tmp/sb-config-check.sock"
    # Compose's service names do not resolve here: check with loopback addresses instead.
    env.update({f"SB_D{i}": f"127.0.0.1:{8000 + i}" for i in (1, 2, 3)})
    result = subprocess.run(
        ["haproxy", "-c", "-f", str(BASE_DIR / "haproxy.cfg")], env=env, capture_output=True,
        text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Configuration file is valid" in result.stdout
