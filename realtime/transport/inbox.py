"""An application's input queue, as the servers here use it (server.py's Daphne, socket_port.py)."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from realtime.lifetimes import counted


@counted
class Inbox:
    """An application's input queue as Daphne uses it: put_nowait() from the server, get() from
    the one task that reads it. Unbounded, like the asyncio.Queue it replaces."""

    __slots__ = ("items", "waiter")

    def __init__(self) -> None:
        self.items: deque[Any] | None = None
        self.waiter: asyncio.Future[Any] | None = None

    def put_nowait(self, item: Any) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(item)
            return
        if self.items is None:
            self.items = deque()
        self.items.append(item)

    async def get(self) -> Any:
        items = self.items
        if items:
            item = items.popleft()
            if not items:
                self.items = None  # an empty deque is ~600 bytes a socket
            return item
        self.waiter = asyncio.get_running_loop().create_future()
        return await self.waiter
