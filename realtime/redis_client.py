"""A plain Redis client for what the channel layer does not do (health checks, later history).

One client per event loop: Daphne has one loop per process, while management commands and
sync views reach us through `async_to_sync`, which may run on a loop of its own.
"""

from __future__ import annotations

import asyncio
import weakref

import redis.asyncio as aioredis
from django.conf import settings

_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aioredis.Redis] = (
    weakref.WeakKeyDictionary()
)


def get_redis() -> aioredis.Redis:
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None:
        client = aioredis.Redis.from_url(
            settings.REDIS_URL,
            socket_timeout=settings.REDIS_TIMEOUT_SECS,
            socket_connect_timeout=settings.REDIS_TIMEOUT_SECS,
        )
        _clients[loop] = client
    return client
