"""Server-Sent Events: the fallback for networks that let no WebSocket through.

`GET /sse/` (with `?resume=` as for /ws/) answers an endless `text/event-stream`; each frame a
WebSocket would get is one event whose data is the same JSON text. The client sends its frames
with `POST /sse/send` ({"connection", "frame"}), which any replica may take: the frame travels
to the replica holding the stream through the channel layer (`rt.client_frame`), so the GET
needs no stickiness. A close is an `event: close` with the code a WebSocket would have closed
with (4401, 4429, …), then the end of the response.
"""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings

from realtime.lifetimes import counted
from realtime.transport import WithoutBacklog

# A comment line this often keeps proxies from closing a quiet stream (HAProxy's `timeout
# server` is 30 s), and is how the server learns that a client behind HAProxy went away:
# HAProxy passes a client's close on only when a write to it fails, the second after the close.
# At 15 s a closed stream stayed counted (and its session held) for up to 30 s; at 5 s (the
# default of settings.SSE_HEARTBEAT_SECS), 10 s.


def event(data: str, *, name: str | None = None) -> bytes:
    """One event. Frames are single-line JSON (protocol.encode escapes newlines)."""
    head = f"event: {name}\n" if name else ""
    return f"{head}data: {data}\n\n".encode()


async def heartbeat(writer: Any) -> None:
    await writer.heartbeat()


@counted
class SseWriter(WithoutBacklog):
    """SocketWriter over an HTTP response that never ends until the socket closes."""

    __slots__ = ("closed", "send", "started")
    name = "sse"

    def __init__(self, send: Any) -> None:
        self.send = send
        self.started = False
        self.closed = False

    def is_open(self) -> bool:
        return self.started and not self.closed

    async def accept(self) -> None:
        self.started = True
        await self.send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-cache, no-store"),
                    (b"x-accel-buffering", b"no"),  # proxies that buffer: not this response
                    (b"x-replica", settings.REPLICA_ID.encode()),
                ],
            }
        )
        # A first comment, so the browser's EventSource sees the stream open at once.
        await self.send({"type": "http.response.body", "body": b": open\n\n", "more_body": True})

    async def write(self, text: str) -> None:
        await self.send({"type": "http.response.body", "body": event(text), "more_body": True})

    async def heartbeat(self) -> None:
        if self.is_open():
            await self.send(
                {"type": "http.response.body", "body": b": ping\n\n", "more_body": True}
            )

    async def close(self, code: int, reason: str = "") -> None:
        if self.closed:
            return
        self.closed = True
        close = event(json.dumps({"code": code, "reason": reason}), name="close")
        await self.send({"type": "http.response.body", "body": close, "more_body": False})
