"""`python -m realtime.serve [daphne options] project.asgi:application` — Daphne, with two changes.

Autobahn, under Daphne, fails a connection that breaks the protocol (a frame above the 1 MiB
limit, say) by dropping TCP, so the client sees only 1006 "abnormal closure". With failByDrop off
it sends a close frame with the real code first (1009 "message too big"), which a client can
act on. Daphne exposes no option for this, hence the factory subclass.

And each connection's application gets a lighter input queue (`Inbox`): Daphne makes an
asyncio.Queue per connection, three deques and an Event, about 3.8 KiB of a socket's memory,
where Daphne only ever calls put_nowait() and the application only get().
"""

from __future__ import annotations

import asyncio
import sys
from collections import deque
from functools import partial
from typing import Any

import daphne.server
from daphne.cli import CommandLineInterface
from daphne.ws_protocol import WebSocketFactory


class ClosingWebSocketFactory(WebSocketFactory):
    def setProtocolOptions(self, **options: Any) -> None:  # noqa: N802 (autobahn's name)
        super().setProtocolOptions(failByDrop=False, **options)


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
        if self.items:
            return self.items.popleft()
        self.waiter = asyncio.get_running_loop().create_future()
        return await self.waiter


class LeanServer(daphne.server.Server):
    def create_application(self, protocol: Any, scope: dict[str, Any]) -> Inbox | None:
        """Daphne's own create_application (4.2), with an Inbox for the queue."""
        assert "application_instance" not in self.connections[protocol]
        input_queue = Inbox()
        scope.setdefault("asgi", {"version": "3.0"})
        application_instance = self.application(
            scope=scope, receive=input_queue.get, send=partial(self.handle_reply, protocol)
        )
        if protocol not in self.connections:
            return None
        self.connections[protocol]["application_instance"] = asyncio.ensure_future(
            application_instance, loop=asyncio.get_event_loop()
        )
        return input_queue


def main() -> None:
    daphne.server.WebSocketFactory = ClosingWebSocketFactory  # type: ignore[misc]
    cli = CommandLineInterface()
    cli.server_class = LeanServer
    cli.run(sys.argv[1:])


if __name__ == "__main__":
    main()
