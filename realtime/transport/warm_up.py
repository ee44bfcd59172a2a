"""What a replica builds once, before its first socket, instead of during it.

The first socket a replica serves used to pay for things made lazily and then kept for the
process's life: modules imported on first use (Django's SQL compiler, the IDNA codec a host
name lookup loads), the thread pools that database calls and name lookups run in, the first
connections to Redis. Made while sockets come and go, their long-lived objects land among
the sockets' short-lived ones, and the heap cannot give those pages back (docs/memory.md);
made here, they sit with the rest of start-up, and the first client does not wait for them.
"""

from __future__ import annotations

import asyncio
import logging

from asgiref.sync import sync_to_async
from django.db import DatabaseError, connections

from realtime import broker
from realtime.broker import BrokerUnavailable

logger = logging.getLogger(__name__)


def import_lazy_modules() -> None:
    """Before the garbage collector freezes start-up's objects (transport/server.py)."""
    for alias in connections:
        connections[alias].ops.compiler("SQLCompiler")  # imports the backend's compiler module
    "replica.invalid".encode("idna")  # the codec socket.getaddrinfo loads for a host name


async def start_pools() -> None:
    """Once the event loop runs: the threads and the Redis connection sockets will use."""
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, _nothing)  # asyncio's default pool (name lookups)
    await sync_to_async(_touch_database)()  # asgiref's thread for database calls
    try:
        await broker.current().ping()
    except BrokerUnavailable:
        logger.warning("Redis is not reachable at start-up; sockets will wait for it")


def _nothing() -> None:
    return None


def _touch_database() -> None:
    """One query from the thread database calls run in: the thread's heap then holds what a
    connection needs (SQLite's schema and page cache) before sockets' objects come."""
    connection = connections["default"]
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except DatabaseError:
        logger.warning("the database is not reachable at start-up")
    finally:
        connection.close()
