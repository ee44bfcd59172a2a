from collections.abc import AsyncIterator

import pytest

from tests.support.clients import close_all_clients


@pytest.fixture(autouse=True)
async def close_sockets_left_open() -> AsyncIterator[None]:
    """A failed test must not leave sockets behind: leastconn would route around them."""
    yield
    await close_all_clients()
