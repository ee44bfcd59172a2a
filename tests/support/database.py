"""The tests' view of the database settings: what project/settings.py makes of a DATABASE_URL,
and pointing the `default` alias of this process at another database."""

from __future__ import annotations

import runpy
from typing import Any

import pytest
from asgiref.local import Local
from django.conf import settings
from django.db import connections

from tests.conftest import BASE_DIR


def settings_for_database_url(url: str, **env: str) -> dict[str, Any]:
    """DATABASES["default"] as project/settings.py makes it from DATABASE_URL=url (and `env`)."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {"DATABASE_URL": url, **env}.items():
            patch.setenv(name, value)
        module = runpy.run_path(str(BASE_DIR / "project" / "settings.py"))
    database: dict[str, Any] = module["DATABASES"]["default"]
    return database


def use_default_database(database: dict[str, Any]) -> dict[str, Any]:
    """Point the `default` alias at `database` in every thread; return what it was.

    The integration tier's PostgreSQL follows the unit tier's SQLite in the same process.
    Django's connection handler holds settings.DATABASES["default"] itself, so that dict is
    changed in place; each thread (asgiref's keep theirs) has a connection of its own in the
    handler's thread-local store, which is replaced whole, so every thread connects anew."""
    for connection in connections.all(initialized_only=True):
        connection.close()
    current = settings.DATABASES["default"]
    previous = dict(current)
    current.clear()
    current.update(database)
    connections.configure_settings(settings.DATABASES)  # Django's defaults, filled in
    connections._connections = Local(connections.thread_critical)
    return previous
