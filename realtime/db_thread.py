"""The database thread of the hot paths: the socket handshake's session and user lookups and
the push API's usernames, each a lookup by key (realtime/compiled_lookup.py).

Not database_sync_to_async: that closes the thread's database connection after every call
(CONN_MAX_AGE=0), and opening it again (for SQLite the file and its WAL pragmas) cost more than
the lookup; a push to a user this replica had not seen spent a sixth of its CPU there. Here the
connection stays open from one call to the next, and one that failed is closed at once (the
next call opens a fresh one: PostgreSQL restarted, say). Not asgiref's sync_to_async either:
its hand-off cost as much as the lookups (0.32 ms on the bench machine), a plain executor's
0.18 ms (docs/performance.md). One thread: lookups by key take ~0.3 ms, so it serves thousands
a second, and it holds one connection, not one per request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from django.db import DatabaseError, connections

T = TypeVar("T")

_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sb-db")


async def run(function: Callable[..., T], *args: Any) -> T:
    """`function(*args)` on the database thread; its result, or its exception."""
    return await asyncio.get_running_loop().run_in_executor(_thread, _guarded, function, args)


def _guarded(function: Callable[..., T], args: tuple[Any, ...]) -> T:
    try:
        return function(*args)
    except DatabaseError:
        for connection in connections.all(initialized_only=True):
            connection.close()
        raise
