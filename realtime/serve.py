"""`python -m realtime.serve [daphne options] project.asgi:application` — Daphne, with one change.

Autobahn, under Daphne, fails a connection that breaks the protocol (a frame above the 1 MiB
limit, say) by dropping TCP, so the client sees only 1006 "abnormal closure". With failByDrop off
it sends a close frame with the real code first (1009 "message too big"), which a client can
act on. Daphne exposes no option for this, hence the factory subclass.
"""

from __future__ import annotations

import sys
from typing import Any

import daphne.server
from daphne.cli import CommandLineInterface
from daphne.ws_protocol import WebSocketFactory


class ClosingWebSocketFactory(WebSocketFactory):
    def setProtocolOptions(self, **options: Any) -> None:  # noqa: N802 (autobahn's name)
        super().setProtocolOptions(failByDrop=False, **options)


def main() -> None:
    daphne.server.WebSocketFactory = ClosingWebSocketFactory  # type: ignore[misc]
    CommandLineInterface().run(sys.argv[1:])


if __name__ == "__main__":
    main()
