"""The one error for "Redis is not answering", and the one place Redis' errors become it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from redis.exceptions import RedisError


class BrokerUnavailable(Exception):
    """Redis could not be reached or did not answer in time: the operation did not happen (or
    may not have: a publish whose answer was lost). Callers report it and retry later."""


# What redis-py raises when Redis is down, restarting, slow or dropped the connection.
REDIS_FAILURES = (RedisError, OSError, asyncio.TimeoutError, ConnectionError)


@contextmanager
def translated(what: str) -> Iterator[None]:
    """Run a block of Redis calls; any Redis failure leaves it as BrokerUnavailable."""
    try:
        yield
    except REDIS_FAILURES as exc:
        raise BrokerUnavailable(f"{what}: {exc!r}") from exc
