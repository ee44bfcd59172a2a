"""Every closed Daphne WebSocket connection is freed only by the cycle collector.

Standalone reproduction (no project code): plain Daphne serving a trivial ASGI app that accepts
the WebSocket and then waits for websocket.disconnect. With the cycle collector disabled
(gc.disable() + gc.DEBUG_SAVEALL), N clients connect and close (half with a close frame, half by
just closing the TCP socket); then one gc.collect() puts into gc.garbage everything that reference
counting could not free. Every connection's objects are there, because of two reference cycles:

1. autobahn/websocket/protocol.py:993 and :1269 (WebSocketProtocol.dropConnection /
   _connectionLost) do `txaio.resolve(self.is_closed, self)`: the protocol's `is_closed` Deferred
   (created at :596) holds the protocol as its result: protocol -> Deferred.result -> protocol.
2. twisted/web/http.py:2388 (HTTPChannel.lineReceived) appends the request to `channel.requests`,
   which only requestDone (:2675, on Request.finish) removes, and the request keeps
   `request.channel` (:937). Daphne upgrades to WebSocket in daphne/http_protocol.py:118-149
   (WebRequest.process, websocket branch: the transport is handed over at :131-137) and never
   finishes the request, so channel -> requests[0] -> WebRequest.channel -> channel stays.

`--fixed` breaks both at runtime (after WebSocketProtocol.connectionLost: `self.is_closed =
defer.succeed(None)`; after an upgrading WebRequest.process: `self.channel.requests.clear()`) and
the same objects are then freed by reference counting (nothing of interest in gc.garbage).
The app's asyncio Task is in no cycle: it is freed by reference counting in both modes once
Daphne's application_checker drops it from server.connections (which this script waits for).

Run:  python daphne_ws_cycles.py [--sockets N]  and  python daphne_ws_cycles.py --fixed
Checked with CPython 3.11.7, daphne 4.2.3, autobahn 26.10.2, twisted 26.10.0.

Expected output (default mode):

    50 WebSocket connections closed; unfixed Daphne
    type in gc.garbage                                  count  per closed socket
    autobahn.nvx._utf8validator.Utf8Validator              50  1
    autobahn.nvx._xormasker.XorMaskerSimple                25  0.5
    autobahn.wamp.types.TransportDetails                   50  1
    autobahn.websocket.protocol.TrafficStats               50  1
    autobahn.websocket.types.ConnectionRequest             50  1
    daphne.http_protocol.WebRequest                        50  1
    daphne.ws_protocol.WebSocketProtocol                   50  1
    twisted.internet.tcp.Server                            50  1
    twisted.web.http.HTTPChannel                           50  1

Expected output (--fixed):

    50 WebSocket connections closed; fixed (both cycles broken)
    type in gc.garbage                                  count  per closed socket
    (none)
"""

import daphne.server  # isort:skip  (installs the asyncio reactor: must come first)

import argparse
import asyncio
import base64
import gc
import os
import socket
import struct
import sys
import threading
from collections import Counter
from typing import Any

from daphne.http_protocol import WebRequest
from daphne.ws_protocol import WebSocketProtocol
from twisted.internet import defer, task
from twisted.internet import reactor as _reactor

reactor: Any = _reactor  # the asyncio reactor daphne.server installed (untyped module attribute)

TIMEOUT = 5.0  # seconds, for every client socket operation


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    assert scope["type"] == "websocket"
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    while (await receive())["type"] != "websocket.disconnect":
        pass


def apply_fix() -> None:
    lost, process = WebSocketProtocol.connectionLost, WebRequest.process

    def connection_lost(self: Any, reason: Any) -> None:
        lost(self, reason)
        self.is_closed = defer.succeed(None)  # cycle 1: drop the Deferred holding the protocol

    def process_and_forget(self: Any) -> Any:
        result = process(self)
        if self.transport is None:  # upgraded to WebSocket: this request never finishes
            self.channel.requests.clear()  # cycle 2: channel.requests[0].channel is channel
        return result

    WebSocketProtocol.connectionLost = connection_lost
    WebRequest.process = process_and_forget


def client(port: int, count: int) -> None:
    """Open and close `count` WebSockets with blocking sockets (runs in a thread)."""
    for i in range(count):
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
            key = base64.b64encode(os.urandom(16)).decode()
            sock.sendall(
                f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n".encode()
            )
            response = b""
            while b"\r\n\r\n" not in response:
                chunk = sock.recv(4096)
                if not chunk:
                    raise RuntimeError(f"connection closed during handshake: {response!r}")
                response += chunk
            if not response.startswith(b"HTTP/1.1 101"):
                raise RuntimeError(f"handshake failed: {response!r}")
            if i % 2 == 0:  # clean close: masked close frame (code 1000), wait for EOF
                mask = os.urandom(4)
                payload = bytes(b ^ mask[j % 4] for j, b in enumerate(struct.pack("!H", 1000)))
                sock.sendall(bytes([0x88, 0x80 | 2]) + mask + payload)
                while sock.recv(4096):
                    pass
            # else: just close the TCP socket


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sockets", type=int, default=50)
    parser.add_argument("--fixed", action="store_true", help="break both cycles at runtime")
    args = parser.parse_args()
    if args.fixed:
        apply_fix()

    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    server = daphne.server.Server(
        application=app, endpoints=["tcp:port=0:interface=127.0.0.1"], signal_handlers=False
    )
    outcome = {"exit": 1}

    def report() -> None:
        gc.collect()
        counts: Counter[str] = Counter()
        for o in gc.garbage:
            name = type(o).__module__ + "." + type(o).__qualname__
            if isinstance(o, asyncio.Task) or name.startswith(
                ("daphne.", "autobahn.", "twisted.internet.tcp.", "twisted.web.http.")
            ):
                counts[name] += 1
        mode = "fixed (both cycles broken)" if args.fixed else "unfixed Daphne"
        print(f"{args.sockets} WebSocket connections closed; {mode}")
        print(f"{'type in gc.garbage':<50} {'count':>6}  per closed socket")
        for name, n in sorted(counts.items()):
            print(f"{name:<50} {n:>6}  {n / args.sockets:g}")
        if not counts:
            print("(none)")
        outcome["exit"] = 0
        reactor.stop()

    def wait_for_server_cleanup(error: BaseException | None) -> None:
        if error is not None:
            print(f"client failed: {error!r}", file=sys.stderr)
            reactor.stop()
            return
        waited = {"ticks": 0}

        def poll() -> None:  # Daphne's application_checker empties server.connections
            waited["ticks"] += 1
            if not server.connections or waited["ticks"] >= 100:
                loop.stop()
                report()

        loop = task.LoopingCall(poll)
        loop.start(0.1)

    def run_client() -> None:
        error: BaseException | None = None
        try:
            client(server.listening_addresses[0][1], args.sockets)
        except BaseException as e:
            error = e
        reactor.callFromThread(wait_for_server_cleanup, error)

    def start() -> None:
        gc.set_debug(0)  # free (for real) whatever start-up left as cyclic garbage
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        threading.Thread(target=run_client, daemon=True).start()

    reactor.callWhenRunning(start)
    reactor.callLater(30, reactor.stop)  # safety net: always exit
    server.run()
    return outcome["exit"]


if __name__ == "__main__":
    sys.exit(main())
