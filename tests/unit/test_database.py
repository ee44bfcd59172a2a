"""The unit tier's database is SQLite in every run: only the integration and cluster tiers move
to PostgreSQL (CI=true, SB_TEST_DB=postgres), so one run covers both."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
import yaml
from django.core.exceptions import ImproperlyConfigured
from django.db import connection

from tests.conftest import BASE_DIR
from tests.support.database import settings_for_database_url


@pytest.mark.django_db
def test_the_unit_tier_runs_on_sqlite() -> None:
    assert connection.vendor == "sqlite"


def test_compose_replicas_reach_its_postgres_service_through_a_pool() -> None:
    compose = yaml.safe_load((BASE_DIR / "docker-compose.yml").read_text())
    url = compose["x-replica"]["environment"]["DATABASE_URL"]
    assert urlsplit(url).hostname == "postgres" and "postgres" in compose["services"]
    # The image installs requirements.txt, which brings psycopg and its pool.
    assert "pip install --no-cache-dir -r requirements.txt" in (BASE_DIR / "Dockerfile").read_text()
    pinned = {
        line.split("==")[0] for line in (BASE_DIR / "requirements.txt").read_text().splitlines()
    }
    assert {"psycopg", "psycopg-binary", "psycopg-pool"} <= pinned
    database = settings_for_database_url(url)
    assert database["ENGINE"] == "django.db.backends.postgresql"
    assert database["CONN_MAX_AGE"] == 0 and database["CONN_HEALTH_CHECKS"] is True
    assert database["OPTIONS"]["pool"] == {"min_size": 2, "max_size": 10, "timeout": 10.0}


def test_a_pool_smaller_than_its_minimum_is_refused_by_name() -> None:
    url = "postgres://u:p@db.example/app"
    database = settings_for_database_url(url, DATABASE_POOL_MIN_SIZE="20")
    assert database["OPTIONS"]["pool"]["max_size"] == 20
    with pytest.raises(ImproperlyConfigured, match="DATABASE_POOL_MAX_SIZE=5 is below"):
        settings_for_database_url(url, DATABASE_POOL_MIN_SIZE="20", DATABASE_POOL_MAX_SIZE="5")
