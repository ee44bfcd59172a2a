"""The seam between a socket's session and the server it runs on.

A session (realtime/delivery/) writes through a `SocketWriter` and never sees the server or
the protocol. Three writers:
- `AsgiWriter` (asgi.py): plain ASGI `send`; runs on any ASGI server (Daphne, uvicorn, the
  test communicator).
- `DaphneWriter` (daphne.py): Daphne's fast path. A stream frame is framed once per replica and
  written straight to the socket, frames for one socket coalesce into one send(), and a client
  that stops reading is held back at SOCKET_BACKLOG_MAX_BYTES instead of growing Twisted's
  buffers. It needs Daphne's protocol object, which only our own server entry point
  (server.py) offers, through `scope["extensions"][FAST_PATH]`; nothing walks `send` chains.
  The server checks at start-up that Daphne, Twisted and Autobahn are the versions and shapes
  the fast path was written against, and says loudly when they are not (then sockets get the
  ASGI writer: slower, still correct).
- `SseWriter` (sse.py): Server-Sent Events over a streaming HTTP response, for networks that
  block WebSockets; the client's frames come back by POST through the channel layer.

Only this package imports daphne, twisted or autobahn (an import-linter contract holds it).
"""

from __future__ import annotations

from typing import Any, Protocol

# The scope extension our server entry point sets on WebSocket scopes: {"protocol": <Daphne's>}.
FAST_PATH = "switchboard.daphne_fast_path"


class SocketClosed(ConnectionError):
    """The socket closed under a write (the server's own exception, translated)."""


class SocketWriter(Protocol):
    """How a session writes to its socket, whatever the server."""

    name: str

    def is_open(self) -> bool: ...

    async def accept(self) -> None: ...

    def write_now(self, frame: str) -> bool:
        """Write a stream frame synchronously if this transport can (the fan-out fast path);
        False: the caller queues it and writes it with `write`."""
        ...

    async def write(self, text: str) -> None:
        """Write a text frame, after anything `write_now` queued."""
        ...

    def backlog_bytes(self) -> int:
        """Bytes written and not yet taken by the kernel (0 where the server does not say)."""
        ...

    def backlogged(self) -> bool:
        """Past SOCKET_BACKLOG_MAX_BYTES unsent: write nothing more until it drained."""
        ...

    async def drained(self) -> None:
        """Return once the backlog is down to half the limit (at once where there is none)."""
        ...

    async def close(self, code: int, reason: str = "") -> None: ...


class WithoutBacklog:
    """For writers whose server says nothing of unsent bytes (plain ASGI, SSE): no fast write,
    no backlog to hold back on; the server's own flow control applies."""

    __slots__ = ()

    def write_now(self, frame: str) -> bool:
        return False  # frames go through the session's queue and `write`

    def backlog_bytes(self) -> int:
        return 0

    def backlogged(self) -> bool:
        return False

    async def drained(self) -> None:
        return None


def writer_for(scope: dict[str, Any], send: Any) -> SocketWriter:
    """SSE for an HTTP scope; for a WebSocket the fast path where our server offers it, the
    plain ASGI writer elsewhere."""
    if scope["type"] == "http":
        from realtime.transport.sse import SseWriter

        return SseWriter(send)
    offered = scope.get("extensions", {}).get(FAST_PATH)
    if offered is not None:
        from realtime.transport.daphne import DaphneWriter

        return DaphneWriter(offered["protocol"], send)
    from realtime.transport.asgi import AsgiWriter

    return AsgiWriter(send)


# What this process serves WebSockets with, for /healthz: set by server.py at start-up.
active_transport = "asgi"
