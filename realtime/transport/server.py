"""Switchboard's Daphne (`python -m realtime.serve [daphne options] project.asgi:application`).

It offers the application the fast write path (transport.FAST_PATH in each WebSocket scope,
with Daphne's protocol object) once `daphne.check_fast_path()` has found the versions and
attributes that path reads; otherwise it says so loudly at start-up and sockets write through
plain ASGI `send`.

Autobahn, under Daphne, fails a connection that breaks the protocol (a frame above the 1 MiB
limit, say) by dropping TCP, so the client sees only 1006 "abnormal closure". With failByDrop off
it sends a close frame with the real code first (1009 "message too big"), which a client can
act on. Daphne exposes no option for this, hence the factory subclass.

The others make a connection cheaper, in memory and in CPU at the handshake (measured with
tracemalloc and py-spy on a replica during a connect storm, docs/performance.md):
- each connection's application gets a lighter input queue (`Inbox`): Daphne makes an
  asyncio.Queue per connection, three deques and an Event, about 3.8 KiB of a socket's memory,
  where Daphne only ever calls put_nowait() and the application only get();
- Autobahn copies its ~40 protocol options from the factory onto every connection, and
  pretty-prints them (and names methods) for debug lines that are normally not written (8% of a
  replica's CPU in a connect storm). The options are fixed once Daphne has set them, so they
  become attributes of the protocol class (nothing is copied), and the debug arguments are
  rendered only if their line is logged.
Last, the objects built before serving starts are frozen out of the garbage collector's scans
(`LeanServer.run`), which shortens the stalls of its full collections, and those run on a timer
(`realtime/gc_policy.py`, GC_FULL_COLLECT_SECS) rather than whenever CPython's thresholds say.
"""

from __future__ import annotations

import asyncio
import gc
import pprint
import signal
import sys
from collections import deque
from functools import partial
from typing import Any

import autobahn.util
import autobahn.websocket.protocol
import daphne.server
from channels.layers import get_channel_layer
from daphne.cli import CommandLineInterface
from daphne.http_protocol import HTTPFactory, WebRequest
from daphne.ws_protocol import WebSocketFactory, WebSocketProtocol
from django.conf import settings
from twisted.internet.defer import succeed
from twisted.internet.task import LoopingCall

from realtime import drain, gc_policy, transport
from realtime.lifetimes import counted
from realtime.transport import daphne as fast_path
from realtime.transport import publish_port, warm_up
from realtime.transport.inbox import Inbox
from realtime.transport.socket_port import SocketPort


@counted
class LeanWebSocketProtocol(WebSocketProtocol):
    """Daphne's protocol; its factory sets the Autobahn options on this class (see below)."""

    # Loop time of the last fan-out that wrote to this socket (direct_send holds busy sockets).
    fanned_out_at: float | None = None
    # Set when direct_send left bytes in Twisted's buffer: only then is the backlog counted.
    behind = False
    # The socket port's connections write their own frames (transport/socket_port.py); the
    # fan-out path writes to this one through Twisted.
    write_frames = None
    # Autobahn's queue for chopped and "sync" writes (it makes an empty deque, ~600 bytes, per
    # connection; nearly none ever queues): made by the first write that queues.
    _send_queue: deque[tuple[bytes, bool]] | None = None

    @property
    def send_queue(self) -> Any:
        return () if self._send_queue is None else self._send_queue

    @send_queue.setter
    def send_queue(self, queue: Any) -> None:
        self._send_queue = queue or None

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        if (sync or chopsize) and self._send_queue is None:
            self._send_queue = deque()  # Autobahn appends to it: a real one from now on
        super().sendData(data, sync, chopsize)

    def onOpen(self) -> None:
        super().onOpen()
        # The handshake is over, and the application read the headers it needed from its scope
        # (realtime/socket_auth.py checks them before accepting). What Autobahn kept of the
        # request and of its answer, ~2 KiB a socket, is dropped; Daphne's log lines use only
        # the request's path, which stays.
        self.http_request_data = self.http_response_data = None
        self.http_headers.clear()  # the dict Daphne's `request.headers` is too
        self.http_status_line = None

    def connectionLost(self, reason: Any) -> None:
        super().connectionLost(reason)
        # Autobahn resolves `is_closed` with the protocol itself: protocol -> Deferred ->
        # protocol, a cycle that kept every closed socket (its transport, request, consumer
        # and session with it) until a full garbage collection. Nothing awaits it here.
        self.is_closed = succeed(None)


class UpgradedWebRequest(WebRequest):
    """Daphne's HTTP request, which hands a WebSocket upgrade over to the protocol above."""

    def process(self) -> None:
        super().process()
        if self.transport is None and self.channel is not None:
            # Upgraded: the connection is the WebSocket protocol's now. The HTTP channel still
            # lists this request and the request names the channel, a cycle only a full
            # collection would free; the channel is not used again.
            self.channel.requests.clear()


class LeanHTTPFactory(HTTPFactory):
    def buildProtocol(self, addr: Any) -> Any:
        protocol = super().buildProtocol(addr)
        protocol.requestFactory = UpgradedWebRequest
        return protocol


class ClosingWebSocketFactory(WebSocketFactory):
    protocol = LeanWebSocketProtocol

    def setProtocolOptions(self, **options: Any) -> None:
        super().setProtocolOptions(failByDrop=False, **options)
        # Autobahn's _connectionMade copies each option that a protocol does not already have;
        # as class attributes, every connection has them all and nothing is copied.
        # A function option (perMessageCompressionAccept) is kept from becoming a method.
        for name in LeanWebSocketProtocol.CONFIG_ATTRS:
            value = getattr(self, name)
            setattr(LeanWebSocketProtocol, name, staticmethod(value) if callable(value) else value)


class WhenLogged:
    """A log argument rendered when the log line is written, not when it is not. Autobahn's
    protocol module renders its debug arguments eagerly (pprint.pformat of ~40 options, and
    `hltype` names of methods) on every connection, for lines that are normally discarded."""

    __slots__ = ("render", "value")

    def __init__(self, render: Any, value: Any) -> None:
        self.render = render
        self.value = value

    def __str__(self) -> str:
        return str(self.render(self.value))

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


def rendered_when_logged(render: Any) -> Any:
    return lambda value: WhenLogged(render, value)


class LeanServer(daphne.server.Server):
    fast_path = False  # set by main() after the start-up check

    def run(self) -> None:
        # Everything imported and built so far (Django, Twisted, the app: hundreds of thousands
        # of objects) lives as long as the process. Frozen, the garbage collector stops
        # scanning it: a full collection with 333 sockets took 50-170 ms, a stall that showed
        # as the p99 latency of pushes.
        warm_up.import_lazy_modules()
        gc.collect()
        gc.freeze()
        daphne.server.reactor.callWhenRunning(lambda: asyncio.ensure_future(warm_up.start_pools()))
        # After Twisted installed its own signal handlers (its startup runs first): ours.
        daphne.server.reactor.callWhenRunning(self._drain_on_sigterm)
        if settings.PUBLISH_PORT_BIND:
            daphne.server.reactor.callWhenRunning(
                lambda: asyncio.ensure_future(self._open_publish_port())
            )
        if settings.SOCKET_PORT_BIND:
            daphne.server.reactor.callWhenRunning(
                lambda: asyncio.ensure_future(self._open_socket_port())
            )
        if settings.GC_FULL_COLLECT_SECS:
            gc_policy.take_over_full_collections()
            LoopingCall(gc_policy.collect_full).start(settings.GC_FULL_COLLECT_SECS, now=False)
        super().run()

    async def _open_publish_port(self) -> None:
        from realtime.api import MAX_BODY_BYTES

        self.publish_port = await self._listen(
            "PUBLISH_PORT_BIND", "publish", lambda bind: publish_port.serve(bind, MAX_BODY_BYTES)
        )

    async def _open_socket_port(self) -> None:
        port = SocketPort(self.application, proxy_headers=bool(self.proxy_forwarded_address_header))
        if await self._listen("SOCKET_PORT_BIND", "socket", port.serve) is not None:
            self.socket_port = port

    async def _listen(self, setting: str, what: str, serve: Any) -> Any:
        """`serve(bind)` on the setting's address: what it returns, or None after stopping. A
        replica without a port it was told to serve would leave HAProxy's backend for it
        pointing at nothing: it stops, loudly, as for Daphne's own port."""
        bind = getattr(settings, setting)
        try:
            served = await serve(bind)
        except OSError as exc:
            print(f"switchboard: cannot listen on {setting}={bind}: {exc}", file=sys.stderr)
            daphne.server.reactor.stop()
            return None
        print(f"switchboard: {what} port on {bind}", file=sys.stderr)
        return served

    def _drain_on_sigterm(self) -> None:
        """SIGTERM drains before the process exits (realtime/drain.py): Daphne's own handler
        would stop the reactor at once, and its sockets would close without a word, all at
        the same moment. A second SIGTERM stops at once."""
        self._terminating = False
        asyncio.get_event_loop().add_signal_handler(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self) -> None:
        if self._terminating:
            daphne.server.reactor.stop()
            return
        self._terminating = True
        self._draining = asyncio.ensure_future(self._drain_then_stop())

    async def _drain_then_stop(self) -> None:
        try:
            layer = get_channel_layer()
            await drain.start(layer)
            await drain.finished(layer, timeout=settings.DRAIN_WINDOW_SECS + drain.GRACE_SECS + 2)
        finally:
            daphne.server.reactor.stop()

    def create_application(self, protocol: Any, scope: dict[str, Any]) -> Inbox | None:
        """Daphne's own create_application (4.2), with an Inbox for the queue: a WebSocket's
        bounded, its connection no longer read while its application is behind (inbox.py)."""
        assert "application_instance" not in self.connections[protocol]
        reads = getattr(protocol, "transport", None)
        if scope.get("type") == "websocket" and reads is not None:
            input_queue = Inbox(reads.pauseProducing, reads.resumeProducing)
        else:
            input_queue = Inbox()
        scope.setdefault("asgi", {"version": "3.0"})
        if self.fast_path and scope.get("type") == "websocket":
            scope["extensions"] = {
                **scope.get("extensions", {}),
                transport.FAST_PATH: {"protocol": protocol},
            }
        application_instance = self.application(
            scope=scope, receive=input_queue.get, send=partial(self.handle_reply, protocol)
        )
        if protocol not in self.connections:
            return None
        instance = asyncio.ensure_future(application_instance, loop=asyncio.get_event_loop())
        # An application that ended leaves nothing queued and its connection read again.
        instance.add_done_callback(lambda _: input_queue.release())
        self.connections[protocol]["application_instance"] = instance
        return input_queue


def main() -> None:
    daphne.server.WebSocketFactory = ClosingWebSocketFactory
    daphne.server.HTTPFactory = LeanHTTPFactory
    # In autobahn.websocket.protocol these two build debug log arguments only (on the server
    # side; the client's handshake and timing tracking, unused here, use pformat otherwise).
    # (Module globals it imported, not exported: hence setattr.)
    setattr(autobahn.websocket.protocol, "pformat", rendered_when_logged(pprint.pformat))  # noqa: B010
    setattr(autobahn.websocket.protocol, "hltype", rendered_when_logged(autobahn.util.hltype))  # noqa: B010
    problems = fast_path.check_fast_path()
    LeanServer.fast_path = not problems
    transport.active_transport = "asgi" if problems else fast_path.DaphneWriter.name
    if problems:
        print(
            "switchboard: the Daphne fast path is OFF (" + "; ".join(problems) + "): sockets "
            "write through plain ASGI send, correct but several times slower under fan-out, and "
            "a client that stops reading is not held back. Install the versions in "
            "requirements.txt.",
            file=sys.stderr,
        )
    cli = CommandLineInterface()
    cli.server_class = LeanServer
    cli.run(sys.argv[1:])


if __name__ == "__main__":
    main()
