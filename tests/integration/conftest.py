from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from channels.layers import channel_layers, get_channel_layer
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User
from django.db import connections
from django.test.utils import setup_databases, teardown_databases
from pytest_django import DjangoDbBlocker
from pytest_django.fixtures import Settings

from realtime.consumers import RealtimeConsumer
from realtime.layer import StreamChannelLayer
from tests.conftest import TEST_DB
from tests.support.database import settings_for_database_url, use_default_database


@pytest.fixture(scope="session")
def django_db_setup(
    request: pytest.FixtureRequest, django_db_blocker: DjangoDbBlocker
) -> Iterator[None]:
    """This tier's test database: pytest-django's (SQLite, the unit tier's too), or with
    TEST_DB=postgres one made as pytest-django makes it (Django's setup_databases) on the
    `postgres_url` server, set up as project/settings.py sets up a postgres:// DATABASE_URL
    (pooled)."""
    if TEST_DB != "postgres":
        request.getfixturevalue("django_db_setup")  # pytest-django's own
        yield
        return
    database = settings_for_database_url(request.getfixturevalue("postgres_url"))
    verbosity = request.config.option.verbose
    with django_db_blocker.unblock():
        previous = use_default_database(database)
        test_databases = setup_databases(
            verbosity=verbosity, interactive=False, aliases={"default"}, serialized_aliases=set()
        )
    try:
        yield
    finally:
        with django_db_blocker.unblock():
            # Connections still open would keep PostgreSQL from dropping the test database:
            # the pool's idle ones, and one a worker thread of the tests' event loops may hold.
            for connection in connections.all(initialized_only=True):
                connection.close()
                close_pool = getattr(connection, "close_pool", None)
                if close_pool is not None:
                    close_pool()
            with connections["default"]._nodb_cursor() as cursor:
                cursor.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = %s AND pid <> pg_backend_pid()",
                    [connections["default"].settings_dict["NAME"]],
                )
            teardown_databases(test_databases, verbosity=verbosity)
            use_default_database(previous)


# SB_TEST_SHARDS=3 runs every test of this tier on a layer of three Redis shards (the default,
# one Redis, is what CI runs; tests/integration/test_shards.py covers shards there).
TEST_SHARDS = int(os.environ.get("SB_TEST_SHARDS", "1"))


@pytest.fixture
async def layer(
    settings: Settings, redis_url: str, request: pytest.FixtureRequest
) -> AsyncIterator[StreamChannelLayer]:
    """Switchboard's layer on the real redis-server, under a prefix of its own per test."""
    settings.REDIS_URL = redis_url
    hosts = [redis_url]
    if TEST_SHARDS > 1:
        hosts = request.getfixturevalue("redis_shard_urls")[:TEST_SHARDS]
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "realtime.layer.StreamChannelLayer",
            "CONFIG": {"hosts": hosts, "prefix": f"t{uuid.uuid4().hex[:8]}", "node": "unit"},
        }
    }
    channel_layers.backends.clear()
    the_layer = get_channel_layer()
    yield the_layer  # type: ignore[misc]
    await the_layer.flush()  # type: ignore[union-attr]
    channel_layers.backends.clear()


class Socket:
    """A consumer driven through Channels' communicator, with frames decoded."""

    def __init__(self, communicator: WebsocketCommunicator) -> None:
        self.communicator = communicator

    async def receive(self, timeout: float = 3) -> dict[str, Any]:
        return json.loads(await self.communicator.receive_from(timeout=timeout))  # type: ignore[no-any-return]

    async def receive_many(self, count: int, timeout: float = 5) -> list[dict[str, Any]]:
        return [await self.receive(timeout) for _ in range(count)]

    async def send(self, frame: dict[str, Any]) -> None:
        await self.communicator.send_to(text_data=json.dumps(frame))

    async def nothing(self, timeout: float = 0.3) -> bool:
        return await self.communicator.receive_nothing(timeout=timeout)  # type: ignore[no-any-return]

    async def close(self) -> None:
        await self.communicator.disconnect()


async def open_socket(user: Any, query: str = "") -> tuple[Socket, dict[str, Any]]:
    communicator = WebsocketCommunicator(RealtimeConsumer.as_asgi(), f"/ws/{query}")
    communicator.scope["user"] = user
    accepted, _ = await communicator.connect()
    assert accepted
    socket = Socket(communicator)
    return socket, await socket.receive()


def a_user(pk: int, name: str = "alice", staff: bool = False) -> User:
    return User(pk=pk, username=f"{name}{pk}", is_staff=staff)


async def memberships_written(layer: StreamChannelLayer, timeout: float = 3) -> None:
    """Wait until the layer has written its groups' socket counts (soon after each join, in the
    background; with shards, a pipeline per shard)."""
    loop_layer = layer._layer()
    async with asyncio.timeout(timeout):
        while loop_layer._membership_writer is not None or loop_layer._membership_dirty:  # noqa: ASYNC110
            await asyncio.sleep(0.005)


async def eventually(check: Any, timeout: float = 3) -> None:
    """Wait until the async `check()` is true: for writes that follow an answer (presence)."""
    async with asyncio.timeout(timeout):
        while not await check():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


class Fallback:
    """Stands in for Django: records what reached it and answers 299."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.paths.append(scope["path"])
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b"django"})
