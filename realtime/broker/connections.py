"""Where the broker's Redis is, and the client that reaches it: one server by URL, or the
primary that a Sentinel group names, followed through failovers.

With Sentinel, redis-py's SentinelConnectionPool asks the sentinels for the primary's address
whenever a connection (re)connects, and drops a connection that finds itself on a demoted
primary (READONLY); commands, pipelines and the layer's pub/sub connection all come from that
pool, so after a failover each of them lands on the new primary at its next reconnect. What a
failover may lose (Redis replicates asynchronously) is made visible, not hidden: see
lua/publish.lua's replication-id check.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
import redis.connection
import redis.retry
import redis.sentinel
from redis.asyncio.connection import BlockingConnectionPool
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.connection import parse_url
from redis.exceptions import ConnectionError as RedisConnectionError

try:
    import hiredis
except ImportError:  # optional: redis-py then packs and parses in Python
    hiredis = None  # type: ignore[assignment]

# Command connections per process and loop: enough for Redis to pipeline a burst of publishes
# (each is one short script), few enough that 3 replicas never crowd Redis' connection table.
MAX_REDIS_CONNECTIONS = 32
# How long a question to a sentinel may take: a dead sentinel is skipped for the next one.
SENTINEL_TIMEOUT_SECS = 0.5


@dataclass(frozen=True)
class RedisAddress:
    """One Redis by `url`, or, with `sentinels`, the primary of the group `sentinel_master`
    (then `url` gives only the database number and credentials)."""

    url: str
    sentinels: tuple[tuple[str, int], ...] = ()
    sentinel_master: str = ""

    def describe(self) -> str:
        """For logs and errors: never the password."""
        if self.sentinels:
            where = ",".join(f"{host}:{port}" for host, port in self.sentinels)
            return f"Sentinel group {self.sentinel_master!r} via {where}"
        parts = parse_url(self.url)
        return f"{parts.get('host', '?')}:{parts.get('port', 6379)}/{parts.get('db', 0)}"


def shard_addresses(
    urls: list[str] | tuple[str, ...],
    sentinels: list[str] | tuple[str, ...] = (),
    sentinel_masters: str | list[str] | tuple[str, ...] = "",
) -> list[RedisAddress]:
    """The shards a configuration names: one per URL, or with `sentinels` one per Sentinel
    group in `sentinel_masters` (a list, or names separated by commas), all found through the
    same sentinels (a Sentinel trio may watch several primaries); the first URL then gives the
    database number and credentials. ValueError for a configuration that names none."""
    if isinstance(sentinel_masters, str):
        sentinel_masters = [m for m in sentinel_masters.split(",")]
    masters = [m.strip() for m in sentinel_masters if m.strip()]
    if sentinels:
        if not masters:
            raise ValueError("Name the Sentinel group's primary (sentinel_master) with sentinels.")
        if len(set(masters)) != len(masters):
            raise ValueError(f"a Sentinel group is named twice in {masters}")
        where = parse_sentinels(list(sentinels))
        return [RedisAddress(urls[0] if urls else "redis://", where, m) for m in masters]
    if not urls:
        raise ValueError("no Redis URL given")
    if len(set(urls)) != len(urls):
        raise ValueError("a Redis URL is named twice: each shard is its own Redis")
    return [RedisAddress(url) for url in urls]


def parse_sentinels(items: list[str] | tuple[str, ...]) -> tuple[tuple[str, int], ...]:
    """["10.0.0.5:26379", …] -> ((host, port), …); ValueError naming a malformed entry."""
    out = []
    for item in items:
        host, sep, port = item.strip().rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"{item!r} is not host:port (a Sentinel's address)")
        out.append((host.strip("[]"), int(port)))
    return tuple(out)


class BlockingSentinelConnectionPool(SentinelConnectionPool, BlockingConnectionPool):
    """Sentinel's pool with BlockingConnectionPool's bound: a burst of publishes waits for one
    of MAX_REDIS_CONNECTIONS connections instead of failing (redis-py has no such pool)."""


def _pool_options(client_name: str | None) -> dict[str, Any]:
    # A blocking pool: a burst of concurrent publishes waits for one of a bounded number of
    # connections instead of failing with MaxConnectionsError (redis-py's default).
    # One retry on a connection error: after a Redis restart or a failover every pooled
    # connection is dead, and the first command on each would otherwise fail although Redis is
    # back. (A publish retried after its connection died mid-command may be stored twice;
    # clients that must not see that send an idempotency key.)
    return {
        "max_connections": MAX_REDIS_CONNECTIONS,
        "timeout": 5,
        "socket_connect_timeout": 3,
        "socket_timeout": 5,
        "health_check_interval": 0,
        "retry": Retry(NoBackoff(), 1),
        "retry_on_error": [RedisConnectionError],
        # CLIENT LIST then says which replica holds a connection (operators, the tests).
        "client_name": client_name,
    }


class _HiredisPacking:
    """Commands packed by hiredis (C) where redis-py's asyncio connections pack them in Python
    (its sync ones use hiredis when installed): a third of what a publish cost the replica's
    event loop was that packing (docs/performance.md)."""

    def pack_command(self, *args: Any) -> list[bytes]:
        if isinstance(args[0], str):
            args = tuple(args[0].encode().split()) + args[1:]
        try:
            return [hiredis.pack_command(args)]
        except TypeError:  # a type hiredis does not take: redis-py's own packing and error
            return super().pack_command(*args)  # type: ignore[misc,no-any-return]


def _packing_with_hiredis(pool: Any) -> Any:
    """`pool`, its connections' class (plain, TLS, Unix or Sentinel-managed) given hiredis'
    packing, when hiredis is installed."""
    if hiredis is not None:
        base = pool.connection_class
        pool.connection_class = type(f"Hiredis{base.__name__}", (_HiredisPacking, base), {})
    return pool


def client_for(address: RedisAddress, *, client_name: str | None = None) -> aioredis.Redis:
    """A client with a pool of its own, for the running event loop; its connections named
    `client_name` in Redis (CLIENT SETNAME) if given."""
    if not address.sentinels:
        pool = BlockingConnectionPool.from_url(address.url, **_pool_options(client_name))
        return aioredis.Redis(connection_pool=_packing_with_hiredis(pool))
    credentials = {
        name: value
        for name, value in parse_url(address.url).items()
        if name in ("db", "username", "password")
    }
    sentinel = Sentinel(
        list(address.sentinels),
        sentinel_kwargs={
            "socket_connect_timeout": SENTINEL_TIMEOUT_SECS,
            "socket_timeout": SENTINEL_TIMEOUT_SECS,
        },
    )
    sentinel_pool = BlockingSentinelConnectionPool(
        address.sentinel_master, sentinel, **credentials, **_pool_options(client_name)
    )
    return aioredis.Redis(connection_pool=_packing_with_hiredis(sentinel_pool))


def sync_pool_for(
    address: RedisAddress, *, client_name: str | None = None, timeout: float = 5.0
) -> redis.connection.ConnectionPool:
    """A connection pool for blocking clients, for publishing from sync code without an event
    loop. Not bounded: each thread that publishes holds one connection of it (see
    RedisBroker.sync_redis), so a WSGI server's or a worker's threads never wait for each other.
    Commands wait at most `timeout` for Redis; after a fork the child opens its own connections
    (the pool checks its pid)."""
    options = {**_pool_options(client_name), "socket_timeout": timeout}
    options["retry"] = redis.retry.Retry(NoBackoff(), 1)
    del options["max_connections"], options["timeout"]  # BlockingConnectionPool's only
    if not address.sentinels:
        return redis.connection.ConnectionPool.from_url(address.url, **options)
    credentials = {
        name: value
        for name, value in parse_url(address.url).items()
        if name in ("db", "username", "password")
    }
    sentinel = redis.sentinel.Sentinel(
        list(address.sentinels),
        sentinel_kwargs={
            "socket_connect_timeout": SENTINEL_TIMEOUT_SECS,
            "socket_timeout": SENTINEL_TIMEOUT_SECS,
        },
    )
    return redis.sentinel.SentinelConnectionPool(
        address.sentinel_master, sentinel, **credentials, **options
    )


async def close_client(client: aioredis.Redis) -> None:
    """Close a client from `client_for` with its pool, and for Sentinel the connections its pool
    keeps to the sentinels (closing the pool leaves those open)."""
    pool = client.connection_pool
    await client.aclose(close_connection_pool=True)
    if isinstance(pool, SentinelConnectionPool):
        await pool.sentinel_manager.aclose()
