"""The database this tier runs on: SQLite, or PostgreSQL (CI=true, SB_TEST_DB=postgres) reached
through the pool that project/settings.py configures for a postgres:// DATABASE_URL."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth.models import User
from django.db import connection

from tests.conftest import TEST_DB

pytestmark = pytest.mark.django_db(transaction=True)

on_postgres = pytest.mark.skipif(
    TEST_DB != "postgres", reason="SQLite run; CI=true or SB_TEST_DB=postgres runs it on PostgreSQL"
)
CALLS = 20


def _backend() -> tuple[int, str]:
    """The PostgreSQL backend serving this thread's connection: its pid and start time."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid, backend_start::text FROM pg_stat_activity WHERE pid = pg_backend_pid()"
        )
        pid, started = cursor.fetchone()
    return pid, started


async def test_the_tier_runs_on_the_database_asked_for() -> None:
    assert connection.vendor == {"postgres": "postgresql", "sqlite": "sqlite"}[TEST_DB]
    await User.objects.acreate(username="Dora")
    # Byte order and case-sensitive matches on both: PostgreSQL's database is made with the C
    # locale (devtools/postgres.py), as SQLite compares text.
    assert not await User.objects.filter(username="dora").aexists()
    await User.objects.acreate(username="ada")
    names = User.objects.order_by("username").values_list("username", flat=True)
    assert [name async for name in names] == ["Dora", "ada"]


@on_postgres
async def test_database_calls_from_async_code_reuse_the_pools_connections() -> None:
    settings_dict = connection.settings_dict
    assert settings_dict["CONN_MAX_AGE"] == 0 and "pool" in settings_dict["OPTIONS"]
    # As the consumers call: database_sync_to_async closes the thread's connection after each
    # call, which without a pool (CONN_MAX_AGE=0) opened a new one for each: CALLS backends.
    backends = [await database_sync_to_async(_backend)() for _ in range(CALLS)]
    assert await User.objects.acount() == 0  # the async ORM between them, in the same pool
    backends += [await database_sync_to_async(_backend)() for _ in range(CALLS)]
    opened = len(set(backends))
    assert opened < CALLS, f"{opened} connections for {2 * CALLS} calls"
    assert connection.pool is not None and opened <= connection.pool.get_stats()["pool_size"]


@on_postgres
async def test_a_connection_postgresql_dropped_is_replaced_not_failed() -> None:
    pooled = {pid for pid, _ in [await database_sync_to_async(_backend)() for _ in range(5)]}

    def terminate_the_others() -> int:
        """End every pooled backend but the one asking, as a PostgreSQL restart would."""
        others = sorted(pooled - {_backend()[0]})
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM unnest(%s::int[]) AS pid"
                " WHERE pg_terminate_backend(pid, 5000)",
                [others],
            )
            return int(cursor.fetchone()[0])

    assert await database_sync_to_async(terminate_the_others)() >= 1
    # Each connection is checked as it leaves the pool (CONN_HEALTH_CHECKS): a dead one is
    # swapped for a new one, and no call sees an error.
    after = [await database_sync_to_async(_backend)() for _ in range(CALLS)]
    assert len(after) == CALLS
