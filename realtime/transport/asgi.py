"""The plain ASGI writer: every frame through the application's `send`, on any ASGI server."""

from __future__ import annotations

from typing import Any

from realtime.lifetimes import counted
from realtime.transport import WithoutBacklog


@counted
class AsgiWriter(WithoutBacklog):
    __slots__ = ("closed", "send")
    name = "asgi"

    def __init__(self, send: Any) -> None:
        self.send = send
        self.closed = False

    def is_open(self) -> bool:
        return not self.closed

    async def accept(self) -> None:
        await self.send({"type": "websocket.accept"})

    async def write(self, text: str) -> None:
        await self.send({"type": "websocket.send", "text": text})

    async def close(self, code: int, reason: str = "") -> None:
        if self.closed:
            return
        self.closed = True
        message: dict[str, Any] = {"type": "websocket.close", "code": code}
        if reason:
            message["reason"] = reason
        await self.send(message)
