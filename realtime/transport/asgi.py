"""The plain ASGI writer: every frame through the application's `send`, on any ASGI server."""

from __future__ import annotations

from typing import Any


class AsgiWriter:
    __slots__ = ("closed", "send")
    name = "asgi"

    def __init__(self, send: Any) -> None:
        self.send = send
        self.closed = False

    def is_open(self) -> bool:
        return not self.closed

    def write_now(self, frame: str) -> bool:
        return False  # no synchronous write on plain ASGI: frames go through the queue

    async def accept(self) -> None:
        await self.send({"type": "websocket.accept"})

    async def write(self, text: str) -> None:
        await self.send({"type": "websocket.send", "text": text})

    def backlog_bytes(self) -> int:
        return 0  # ASGI does not say; the server's own flow control applies

    def backlogged(self) -> bool:
        return False

    async def drained(self) -> None:
        return None

    async def close(self, code: int, reason: str = "") -> None:
        if self.closed:
            return
        self.closed = True
        message: dict[str, Any] = {"type": "websocket.close", "code": code}
        if reason:
            message["reason"] = reason
        await self.send(message)
