"""docker compose cannot run here (no engine): check what can be checked of its topology.

Compose substitutes `${VAR}`, `${VAR:-default}` and `${VAR:?error}` from the shell before it
starts anything; `interpolate` does the same here (compose's rules, for the forms the file
uses), so the file is checked as compose would run it with a given environment.
"""

from __future__ import annotations

import base64
import json
import os
import re
import stat
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
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
    # Each replica's publish port, inside the compose network only, and HAProxy pointed at it.
    ports = {services[name]["environment"]["PUBLISH_PORT_BIND"] for name in ("d1", "d2", "d3")}
    assert ports == {"0.0.0.0:8001"}
    assert [haproxy_env[f"SB_D{i}_PUBLISH"] for i in (1, 2, 3)] == ["d1:8001", "d2:8001", "d3:8001"]
    assert not [p for s in services.values() for p in s.get("ports", []) if "8001" in str(p)]
    # And its socket port, the same way.
    ports = {services[name]["environment"]["SOCKET_PORT_BIND"] for name in ("d1", "d2", "d3")}
    assert ports == {"0.0.0.0:8002"}
    assert [haproxy_env[f"SB_D{i}_SOCKETS"] for i in (1, 2, 3)] == ["d1:8002", "d2:8002", "d3:8002"]
    assert not [p for s in services.values() for p in s.get("ports", []) if "8002" in str(p)]


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
    env.update({f"SB_D{i}_PUBLISH": f"127.0.0.1:{free_port()}" for i in (1, 2, 3)})
    env.update({f"SB_D{i}_SOCKETS": f"127.0.0.1:{free_port()}" for i in (1, 2, 3)})
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


def compose_like_haproxy(tmp_path: Path) -> tuple[int, ManagedProcess, Callable[[], None]]:
    """haproxy.cfg with compose's environment on free loopback ports (not started yet): its
    stats port, its process, and what stops it and removes its admin socket's folder."""
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

    def stop() -> None:
        haproxy.stop()
        Path(socket_dir, "admin.sock").unlink(missing_ok=True)
        os.rmdir(socket_dir)

    return stats_port, haproxy, stop


def test_replicas_read_the_stats_page_with_compose_credentials_and_others_are_refused(
    tmp_path: Path,
) -> None:
    stats_port, haproxy, stop = compose_like_haproxy(tmp_path)
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
        stop()


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


# --- The monitoring profile (docs/monitoring.md) ------------------------------------------------

MONITORING = BASE_DIR / "docs" / "monitoring"
# What each replica exports (realtime/metrics.py) for the dashboard; histograms are used through
# their _bucket, _sum and _count series.
SWITCHBOARD_METRICS = {
    "switchboard_sockets",
    "switchboard_connects_total",
    "switchboard_frames_in_total",
    "switchboard_frames_out_total",
    "switchboard_deliveries_total",
    "switchboard_publish_seconds",
    "switchboard_delivery_lag_seconds",
    "switchboard_replayed_total",
    "switchboard_gap_repairs_total",
    "switchboard_frames_dropped_total",
    "switchboard_frames_deferred_total",
    "switchboard_backlogged_sockets",
    "switchboard_redis_up",
    "switchboard_redis_subscribed",
    "switchboard_event_loop_lag_seconds",
}
HISTOGRAMS = {"switchboard_publish_seconds", "switchboard_delivery_lag_seconds"}
PROCESS_METRICS = {"process_resident_memory_bytes", "process_cpu_seconds_total"}
# HAProxy 2.6's built-in exporter (checked against a real one below).
HAPROXY_METRICS = {
    "haproxy_backend_active_servers",
    "haproxy_server_status",
    "haproxy_frontend_current_sessions",
}
# A value that only names a variable, with no default: `${VAR}`, `${VAR:-}`, `${VAR:?message}`.
BARE_REFERENCE = re.compile(r"\$\{\w+(?::?-|:?\?[^}]*)?\}")
SECRET_KEYS = re.compile(r"(?i)pass(word)?|secret|token|credential")


def monitoring_services(env: dict[str, str] | None = None) -> dict[str, Any]:
    services = compose(env)["services"]
    return {
        name: service
        for name, service in services.items()
        if "monitoring" in service.get("profiles", [])
    }


def prometheus_config() -> dict[str, Any]:
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    return config  # type: ignore[no-any-return]


def scrape_job(name: str) -> dict[str, Any]:
    jobs = {job["job_name"]: job for job in prometheus_config()["scrape_configs"]}
    return jobs[name]  # type: ignore[no-any-return]


def relabel(job: dict[str, Any], address: str) -> dict[str, str]:
    """The labels Prometheus' `replace` relabelling gives a target (RE2 and Python's re agree on
    the patterns used here; Prometheus anchors them at both ends)."""
    labels = {"__address__": address}
    for rule in job.get("relabel_configs", []):
        assert rule.get("action", "replace") == "replace"
        value = rule.get("separator", ";").join(labels.get(n, "") for n in rule["source_labels"])
        match = re.fullmatch(rule.get("regex", "(.*)"), value)
        if match:
            replacement = re.sub(r"\$\{?(\d+)\}?", r"\\\1", rule.get("replacement", "$1"))
            labels[rule["target_label"]] = match.expand(replacement)
    return labels


def secret_file(service: dict[str, Any], path: str) -> str:
    """The variable compose writes to `path` in the service's container (a compose secret)."""
    secrets = compose()["secrets"]
    for grant in service.get("secrets", []):
        grant = {"source": grant} if isinstance(grant, str) else grant
        target = grant.get("target") or f"/run/secrets/{grant['source']}"
        if target == path:
            # The process in the container does not run as root (Prometheus: nobody).
            assert grant.get("mode") == 0o444, grant
            return secrets[grant["source"]]["environment"]  # type: ignore[no-any-return]
    raise AssertionError(f"nothing puts {path} in place")


def secret_literals(node: Any, where: str = "") -> list[str]:
    """Where a password, token or secret is written out rather than read from a file or named
    as a variable with no default."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{where}.{key}"
            is_secret = SECRET_KEYS.search(str(key)) and not re.search(r"(?i)_file$", str(key))
            if is_secret and isinstance(value, str | int | float) and str(value):
                text = str(value)
                if not (BARE_REFERENCE.fullmatch(text) or text.startswith("/")):
                    found.append(f"{here}: {text!r}")
            found += secret_literals(value, here)
    elif isinstance(node, list):
        for index, item in enumerate(node):
            found += secret_literals(item, f"{where}[{index}]")
    return found


def dashboard() -> dict[str, Any]:
    board = json.loads((MONITORING / "grafana" / "dashboards" / "switchboard.json").read_text())
    return board  # type: ignore[no-any-return]


def dashboard_panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    found = []
    for panel in panels:
        found.append(panel)
        found += dashboard_panels(panel.get("panels", []))  # a collapsed row holds its own
    return found


def test_the_monitoring_profile_runs_pinned_prometheus_and_grafana_on_loopback_only() -> None:
    # Nothing required is added: without the monitoring variables the default `up` still works
    # (compose substitutes every service's variables, whatever the profiles).
    services = monitoring_services()
    assert set(services) == {"prometheus", "grafana"}
    assert re.fullmatch(r"prom/prometheus:v\d+\.\d+\.\d+", services["prometheus"]["image"])
    assert re.fullmatch(r"grafana/grafana:\d+\.\d+\.\d+", services["grafana"]["image"])
    assert services["prometheus"]["ports"] == ["127.0.0.1:9090:9090"]
    assert services["grafana"]["ports"] == ["127.0.0.1:3000:3000"]
    for name, service in services.items():
        for mount in service["volumes"]:
            source, _target, mode = mount.split(":")
            assert mode == "ro", mount
            assert (BASE_DIR / source).exists(), f"{name} mounts {source}, which is not here"


def test_prometheus_scrapes_each_compose_replica_with_the_token_and_haproxys_exporter() -> None:
    config = prometheus_config()
    assert config["global"]["scrape_interval"] == "15s"
    services = compose()["services"]
    prometheus = services["prometheus"]
    config_mount = "./docs/monitoring/prometheus.yml:/etc/prometheus/prometheus.yml:ro"
    assert config_mount in prometheus["volumes"]

    # Every replica directly, as HAProxy reaches it, never HAProxy's own port.
    replicas = {
        name for name, svc in services.items() if "REPLICA_ID" in svc.get("environment", {})
    }
    haproxy_env = services["haproxy"]["environment"]
    addresses = sorted(v for k, v in haproxy_env.items() if re.fullmatch(r"SB_D\d", k))
    assert {address.split(":")[0] for address in addresses} == replicas == {"d1", "d2", "d3"}
    job = scrape_job("switchboard")
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert [address for group in job["static_configs"] for address in group["targets"]] == (
        addresses
    )
    for address in addresses:
        assert relabel(job, address)["replica"] == address.split(":")[0]
    # The bearer token is read from a file compose fills with the replicas' METRICS_TOKEN.
    assert job["authorization"] == {
        "type": "Bearer",
        "credentials_file": "/etc/prometheus/metrics_token",
    }
    assert secret_file(prometheus, "/etc/prometheus/metrics_token") == "METRICS_TOKEN"
    with_token = compose(REQUIRED | {"METRICS_TOKEN": "t0k3n"})["services"]
    assert {with_token[name]["environment"]["METRICS_TOKEN"] for name in replicas} == {"t0k3n"}
    assert {services[name]["environment"]["METRICS_TOKEN"] for name in replicas} == {""}

    # HAProxy's exporter on the stats port (inside the compose network), with the stats login.
    haproxy = scrape_job("haproxy")
    assert haproxy.get("metrics_path", "/metrics") == "/metrics"
    stats_port = haproxy_env["SB_STATS_BIND"].rsplit(":", 1)[1]
    assert stats_port in [str(port) for port in services["haproxy"]["expose"]]
    assert haproxy["static_configs"] == [{"targets": [f"haproxy:{stats_port}"]}]
    assert haproxy["basic_auth"]["username"] == haproxy_env["SB_STATS_USER"] == "stats"
    password_file = haproxy["basic_auth"]["password_file"]
    assert secret_file(prometheus, password_file) == "SB_STATS_PASSWORD"


def test_grafana_shows_the_switchboard_dashboard_from_the_provisioned_prometheus() -> None:
    services = compose()["services"]
    grafana = services["grafana"]
    provisioning = MONITORING / "grafana" / "provisioning"
    assert {
        "./docs/monitoring/grafana/provisioning:/etc/grafana/provisioning:ro",
        "./docs/monitoring/grafana/dashboards:/var/lib/grafana/dashboards:ro",
    } <= set(grafana["volumes"])
    [source] = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    prometheus_port = services["prometheus"]["ports"][0].rsplit(":", 1)[1]
    assert source["type"] == "prometheus"
    assert source["url"] == f"http://prometheus:{prometheus_port}"
    [provider] = yaml.safe_load((provisioning / "dashboards" / "switchboard.yml").read_text())[
        "providers"
    ]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"

    board = dashboard()
    assert board["uid"] == "switchboard"
    assert board["schemaVersion"] == 39
    panels = dashboard_panels(board["panels"])
    assert len({panel["id"] for panel in panels}) == len(panels)
    queries = [panel for panel in panels if panel["type"] != "row"]
    assert queries
    expressions = []
    for panel in queries:
        assert panel["datasource"] == {"type": "prometheus", "uid": source["uid"]}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == source["uid"]
            expressions.append(target["expr"])
    for variable in board["templating"]["list"]:
        assert variable["datasource"]["uid"] == source["uid"]
        expressions.append(variable["definition"])

    used = set()
    for expression in expressions:
        for name in re.findall(r"\b(?:switchboard|haproxy|process)_\w+", expression):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            used.add(base if base in HISTOGRAMS else name)
    unknown = used - SWITCHBOARD_METRICS - PROCESS_METRICS - HAPROXY_METRICS
    assert not unknown, f"the dashboard uses metrics nothing exports: {sorted(unknown)}"
    # And it shows every one of them.
    assert used == SWITCHBOARD_METRICS | PROCESS_METRICS | HAPROXY_METRICS
    quantiles = [e for e in expressions if "histogram_quantile" in e]
    for histogram in HISTOGRAMS:
        assert {q for q in quantiles if f"{histogram}_bucket" in q and "0.99" in q}, histogram


def test_no_password_or_token_of_the_monitoring_profile_is_committed() -> None:
    files = [
        MONITORING / "prometheus.yml",
        *(MONITORING / "grafana" / "provisioning").rglob("*.yml"),
    ]
    for path in files:
        assert not secret_literals(yaml.safe_load(path.read_text())), path
    assert not secret_literals(dashboard())
    assert (
        "secureJsonData"
        not in (MONITORING / "grafana")
        .joinpath("provisioning", "datasources", "prometheus.yml")
        .read_text()
    )
    # The compose file as written (not substituted): the profile's services, the replicas' token.
    raw = yaml.safe_load((BASE_DIR / "docker-compose.yml").read_text())
    assert not secret_literals({name: raw["services"][name] for name in ("prometheus", "grafana")})
    replica_env = raw["x-replica"]["environment"]
    assert not secret_literals({"METRICS_TOKEN": replica_env["METRICS_TOKEN"]})
    assert not secret_literals(raw["secrets"])
    text = (BASE_DIR / "docker-compose.yml").read_text()
    for variable in ("METRICS_TOKEN", "GRAFANA_ADMIN_PASSWORD"):
        assert set(re.findall(rf"\$\{{{variable}:?-([^}}]*)\}}", text)) <= {""}, variable
    # Grafana reads its admin password from the file only: an empty GF_SECURITY_ADMIN_PASSWORD
    # would leave Grafana's published default in place.
    grafana_env = raw["services"]["grafana"]["environment"]
    assert "GF_SECURITY_ADMIN_PASSWORD" not in grafana_env
    password_file = grafana_env["GF_SECURITY_ADMIN_PASSWORD__FILE"]
    assert secret_file(compose()["services"]["grafana"], password_file) == "GRAFANA_ADMIN_PASSWORD"


@pytest.mark.parametrize(
    ("service", "secret", "program"),
    [
        ("prometheus", "/etc/prometheus/metrics_token", "/bin/prometheus"),
        ("grafana", "/run/secrets/grafana_admin_password", "/run.sh"),
    ],
)
def test_a_monitoring_container_refuses_to_start_with_an_empty_secret(
    tmp_path: Path, service: str, secret: str, program: str
) -> None:
    """Each entrypoint, run here with its secret and its program moved to tmp_path: an empty
    METRICS_TOKEN (the replicas would refuse every scrape) or GRAFANA_ADMIN_PASSWORD (Grafana
    would keep its published default) stops the container with a message naming it."""
    config = compose()["services"][service]
    variable = secret_file(config, secret)
    shell, flag, script, name = config["entrypoint"]
    assert (shell, flag) == ("/bin/sh", "-c") and secret in script and program in script
    calls = tmp_path / "calls"
    stand_in = tmp_path / "program"
    stand_in.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    stand_in.chmod(0o755)
    secret_path = tmp_path / "secret"
    script = script.replace(secret, str(secret_path)).replace(program, str(stand_in))
    argv = ["sh", "-c", script, name, *config.get("command", [])]
    for content, started in (("", False), ("s3cr3t-value", True)):
        secret_path.write_text(content)
        result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        assert (result.returncode == 0) == started, result.stderr
        if started:
            assert calls.read_text().split() == config.get("command", [])
        else:
            assert variable in result.stderr and not calls.exists()


def test_haproxys_exporter_serves_the_dashboards_metrics_behind_the_stats_login(
    tmp_path: Path,
) -> None:
    """What the `haproxy` job scrapes: /metrics on the stats frontend, with the stats login
    (the password Prometheus reads from SB_STATS_PASSWORD), and nothing without it."""
    stats_port, haproxy, stop = compose_like_haproxy(tmp_path)
    job = scrape_job("haproxy")
    url = f"http://127.0.0.1:{stats_port}{job.get('metrics_path', '/metrics')}"
    login = f"{job['basic_auth']['username']}:{REQUIRED['SB_STATS_PASSWORD']}"

    def scrape(authorization: str | None) -> str:
        request = urllib.request.Request(url)
        if authorization is not None:
            request.add_header("Authorization", authorization)
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.headers["Content-Type"].startswith("text/plain")
            return response.read().decode()  # type: ignore[no-any-return]

    haproxy.start()
    try:
        wait_until(haproxy.running, timeout=5, what="HAProxy")
        basic = "Basic " + base64.b64encode(login.encode()).decode()
        body = ""

        def answers() -> bool:
            nonlocal body
            assert haproxy.running(), (tmp_path / "haproxy.log").read_text()
            try:
                body = scrape(basic)
            except OSError:
                return False
            return True

        wait_until(answers, timeout=15, what="HAProxy's exporter")
        for name in HAPROXY_METRICS:
            assert f"# TYPE {name} gauge" in body, name
        assert 'haproxy_backend_active_servers{proxy="replicas"}' in body
        assert 'haproxy_frontend_current_sessions{proxy="switchboard"}' in body
        for server in ("d1", "d2", "d3"):
            for state in ("UP", "DOWN", "MAINT", "DRAIN", "NOLB"):
                series = (
                    f'haproxy_server_status{{proxy="replicas",server="{server}",state="{state}"}}'
                )
                assert series in body
        wrong = "Basic " + base64.b64encode(b"stats:not-the-password").decode()
        for refused in (None, wrong):
            with pytest.raises(urllib.error.HTTPError) as denied:
                scrape(refused)
            denied.value.close()  # its response, with the connection
            assert denied.value.code == 401
    finally:
        stop()
