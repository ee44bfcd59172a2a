"""project.settings as a deployment meets it: var/ kept private, the TLS profile clean under
`check --deploy`, plain HTTP working without it, and the demo logins shown in development only.

Settings are read once per process, so each case runs `manage.py` in a process of its own.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import Client
from django.views.debug import SafeExceptionReporterFilter
from pytest_django.fixtures import Settings

from devtools.cluster import Cluster, ClusterConfig
from tests.conftest import BASE_DIR

# What the test process sets for itself (tests/settings.py), and what a shell may have set.
INHERITED = (
    "SECRET_KEY",
    "DATABASE_URL",
    "DEBUG",
    "SWITCHBOARD_TLS",
    "SWITCHBOARD_VAR_DIR",
    "SESSION_COOKIE_SECURE",
    "SHOW_DEMO_LOGINS",
    "SECURE_HSTS_PRELOAD",
    "SECURE_HSTS_SECONDS",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS",
)


def manage(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in INHERITED}
    clean.update(DJANGO_SETTINGS_MODULE="project.settings", **env)
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=BASE_DIR,
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
    )


PRINT_SETTINGS = (
    "import json, os; from django.conf import settings; "
    "print(json.dumps({n: getattr(settings, n, None) for n in os.environ['NAMES'].split()}))"
)


def settings_of(var_dir: Path, *names: str, **env: str) -> dict[str, object]:
    """The named settings as a replica started with `env` would have them (None: unset)."""
    result = manage(
        "shell",
        "-c",
        PRINT_SETTINGS,
        SWITCHBOARD_VAR_DIR=str(var_dir),
        NAMES=" ".join(names),
        **env,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_var_dir_is_made_private_with_the_secret_key_and_database_inside(tmp_path: Path) -> None:
    var_dir = tmp_path / "var"
    result = manage("check", SWITCHBOARD_VAR_DIR=str(var_dir))
    assert result.returncode == 0, result.stderr
    assert mode(var_dir) == 0o700
    assert mode(var_dir / "secret_key") == 0o600


def test_an_existing_var_dir_open_to_others_is_tightened(tmp_path: Path) -> None:
    var_dir = tmp_path / "var"
    var_dir.mkdir(mode=0o755)
    var_dir.chmod(0o755)
    # SECRET_KEY given: it is the SQLite database that needs var/ here.
    result = manage("check", SWITCHBOARD_VAR_DIR=str(var_dir), SECRET_KEY="x" * 60)
    assert result.returncode == 0, result.stderr
    assert mode(var_dir) == 0o700


def test_the_tls_profile_passes_check_deploy_with_no_warnings(tmp_path: Path) -> None:
    result = manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        SWITCHBOARD_TLS="1",
        DEBUG="0",
        SECRET_KEY=secrets.token_urlsafe(50),
        SWITCHBOARD_VAR_DIR=str(tmp_path / "var"),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout
    assert "WARNINGS" not in result.stdout + result.stderr


def test_the_tls_profile_trusts_haproxys_proto_header_and_exempts_health_checks(
    tmp_path: Path,
) -> None:
    values = settings_of(
        tmp_path / "var",
        "SECURE_PROXY_SSL_HEADER",
        "SECURE_SSL_REDIRECT",
        "SECURE_REDIRECT_EXEMPT",
        "SECURE_HSTS_SECONDS",
        "SESSION_COOKIE_SECURE",
        "CSRF_COOKIE_SECURE",
        SWITCHBOARD_TLS="1",
    )
    assert values == {
        "SECURE_PROXY_SSL_HEADER": ["HTTP_X_FORWARDED_PROTO", "https"],
        "SECURE_SSL_REDIRECT": True,
        "SECURE_REDIRECT_EXEMPT": ["^healthz$", "^readyz$", "^metrics$"],
        "SECURE_HSTS_SECONDS": 365 * 24 * 3600,
        "SESSION_COOKIE_SECURE": True,
        "CSRF_COOKIE_SECURE": True,
    }


def test_without_the_profile_cookies_are_not_secure_so_plain_http_works(tmp_path: Path) -> None:
    values = settings_of(
        tmp_path / "var",
        "SESSION_COOKIE_SECURE",
        "CSRF_COOKIE_SECURE",
        "SECURE_SSL_REDIRECT",
        "SECURE_PROXY_SSL_HEADER",
        "SHOW_DEMO_LOGINS",
    )
    assert values == {
        "SESSION_COOKIE_SECURE": False,
        "CSRF_COOKIE_SECURE": False,
        "SECURE_SSL_REDIRECT": False,
        "SECURE_PROXY_SSL_HEADER": None,
        # DEBUG is off by default, and so is the login page's list of demo passwords.
        "SHOW_DEMO_LOGINS": False,
    }
    assert settings_of(tmp_path / "var", "SHOW_DEMO_LOGINS", DEBUG="1") == {
        "SHOW_DEMO_LOGINS": True
    }


@pytest.mark.django_db
@pytest.mark.parametrize("show", [True, False])
def test_login_page_lists_demo_passwords_only_when_told_to(settings: Settings, show: bool) -> None:
    settings.SHOW_DEMO_LOGINS = show
    page = Client().get("/accounts/login/").content.decode()
    assert ("alice-pass" in page) is show


def test_the_local_cluster_runner_is_development_and_shows_the_demo_logins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SHOW_DEMO_LOGINS", raising=False)
    cluster = Cluster(ClusterConfig(replicas=1, run_dir=tmp_path / "run"))
    try:
        assert cluster.processes["d1"].env["SHOW_DEMO_LOGINS"] == "1"
        monkeypatch.setenv("SHOW_DEMO_LOGINS", "0")
        assert cluster.command_env()["SHOW_DEMO_LOGINS"] == "0"
    finally:
        shutil.rmtree(cluster._socket_dir, ignore_errors=True)


def test_stats_url_credentials_are_split_off_into_a_setting_error_pages_hide(
    tmp_path: Path,
) -> None:
    values = settings_of(
        tmp_path / "var",
        "HAPROXY_STATS_URL",
        "HAPROXY_STATS_USER",
        "HAPROXY_STATS_PASSWORD",
        HAPROXY_STATS_URL="http://stats:p%40ss%3Aw%2Frd@haproxy:8404/",
    )
    assert values == {
        "HAPROXY_STATS_URL": "http://haproxy:8404/",
        "HAPROXY_STATS_USER": "stats",
        "HAPROXY_STATS_PASSWORD": "p@ss:w/rd",
    }
    shown = SafeExceptionReporterFilter().cleanse_setting("HAPROXY_STATS_PASSWORD", "p@ss:w/rd")
    assert shown == SafeExceptionReporterFilter.cleansed_substitute
    assert settings_of(tmp_path / "var", "HAPROXY_STATS_URL", "HAPROXY_STATS_PASSWORD") == {
        "HAPROXY_STATS_URL": "",
        "HAPROXY_STATS_PASSWORD": "",
    }
