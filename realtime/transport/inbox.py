"""An application's input queue, as the servers here use it (server.py's Daphne, socket_port.py).

A client can send faster than its application reads: while the application awaits Redis or the
database, a flood of frames would wait in the queue, in memory, however many there are. So the
queue holds at most INBOX_MAX_MESSAGES messages or INBOX_MAX_BYTES of text and bytes: past
either the server stops reading the client's connection (`pause`), and reads again once the
application has taken everything (`resume`). The rest waits in the kernel's buffers and then in
the client's: TCP's own backpressure, so nothing is lost, and nobody else's socket notices.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

from realtime.lifetimes import counted

INBOX_MAX_MESSAGES = 64
INBOX_MAX_BYTES = 1024 * 1024


@counted
class Inbox:
    """An application's input queue as Daphne uses it: put_nowait() from the server, get() from
    the one task that reads it. Bounded when given `pause` and `resume` (the connection's reads)."""

    __slots__ = ("held", "items", "pause", "paused", "resume", "waiter")

    def __init__(
        self,
        pause: Callable[[], Any] | None = None,
        resume: Callable[[], Any] | None = None,
    ) -> None:
        self.items: deque[Any] | None = None
        self.waiter: asyncio.Future[Any] | None = None
        self.pause = pause
        self.resume = resume
        self.held = 0  # bytes of text and data queued
        self.paused = False

    def put_nowait(self, item: Any) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(item)  # the application was waiting: nothing is queued
            return
        if self.items is None:
            self.items = deque()
        self.items.append(item)
        if self.pause is not None:
            self.held += _size(item)
            if not self.paused and (
                len(self.items) >= INBOX_MAX_MESSAGES or self.held >= INBOX_MAX_BYTES
            ):
                self.paused = True
                self.pause()

    def release(self) -> None:
        """The application has ended: what it did not take is dropped, and a connection paused
        for it is read again (its close handshake, its EOF)."""
        self.items = None
        self.held = 0
        self._read_again()

    def _read_again(self) -> None:
        if self.paused and self.resume is not None:
            self.paused = False
            self.resume()

    async def get(self) -> Any:
        items = self.items
        if items:
            item = items.popleft()
            if self.pause is not None:
                self.held -= _size(item)
            if not items:
                self.items = None  # an empty deque is ~600 bytes a socket
                self._read_again()
            return item
        self.waiter = asyncio.get_running_loop().create_future()
        return await self.waiter


def _size(item: Any) -> int:
    """A WebSocket message's text or bytes (what a bounded inbox holds), in characters or bytes."""
    text = item.get("text")
    if text is not None:
        return len(text)
    data = item.get("bytes")
    return len(data) if data else 0
