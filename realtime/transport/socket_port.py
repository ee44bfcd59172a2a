"""The socket port: a lean WebSocket listener in each replica, beside Daphne, on its event loop.

A WebSocket handshake through Daphne went through Twisted's HTTP parser, Daphne's request and
protocol objects and Autobahn's handshake: ~35% of a replica's CPU in a connect storm, and a
good part of a socket's memory (docs/performance.md). With `SOCKET_PORT_BIND=host:port` a replica
also listens there, and HAProxy sends WebSocket upgrades of /ws/ to it (haproxy.cfg, backend
`sockets`: the same servers, cookie and health as `replicas`). Each connection is one asyncio
protocol: ws_handshake.py reads its handshake and writes the 101 (websockets' checks and answers,
at a third of its cost), and websockets' sans-I/O `ServerProtocol` parses the frames after it
(masking, reserved bits, opcodes, control frames, close codes, MAX_MESSAGE_BYTES across
fragments: a breach closes with the RFC's code) and writes the answers; this module turns that
into the ASGI WebSocket interface Daphne gives the application: the same scope (headers
lower-cased, names with "_" dropped, the client from X-Forwarded-For as Daphne's
--proxy-headers reads it), `websocket.connect`, `.receive`, `.disconnect`, and accept, send and
close from the application, a close before accept answered with HTTP 403.

The application gets the same fast write path as under Daphne (transport/daphne.py: frames
framed once per replica, coalesced per socket, held back at SOCKET_BACKLOG_MAX_BYTES): a
connection offers what that path reads of a socket (`state`, `write_frames`, `unsent`,
`sendCloseFrame`). What the application is not told, it does not get: frames before the
handshake is accepted wait for it; text that is not UTF-8 closes with 1007; a request that is
not a WebSocket handshake gets websockets' answer (400, 405, 414, 426, 431 or 505) and is
closed; what is not HTTP at all is closed without one.

Limits: the request's head within HANDSHAKE_SECS, the application's accept within
CONNECT_SECS (else 403, as Daphne's websocket_connect_timeout), the client's close frame within
CLOSE_SECS of ours; an application still running APP_CLOSE_SECS after its socket closed is
cancelled (Daphne's application_close_timeout); frames the application has not taken yet, at
most inbox.py's INBOX_MAX_MESSAGES and INBOX_MAX_BYTES (past them the connection is not read
until it catches up). Liveness is the application's heartbeat (HEARTBEAT_SECS), not WebSocket
pings.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

from daphne.utils import parse_x_forwarded_for
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

from realtime import transport
from realtime.lifetimes import counted
from realtime.transport import SocketClosed
from realtime.transport import daphne as fast_path
from realtime.transport.inbox import Inbox
from realtime.transport.ws_handshake import HeadReader, Opening, Refusal, switching

logger = logging.getLogger(__name__)

# As Autobahn under Daphne: a message (all its fragments) above 1 MiB closes with 1009.
MAX_MESSAGE_BYTES = 1024 * 1024
HANDSHAKE_SECS = 10.0
CONNECT_SECS = 5.0
CLOSE_SECS = 5.0
APP_CLOSE_SECS = 10.0
# After the server ended a connection (FIN sent), how long the client's data is read and
# dropped before the connection is cut.
LINGER_SECS = 2.0
# Frames a client may send before the application accepted its socket (they wait for it).
MAX_EARLY_FRAMES = 16


@counted
class SocketPortConnection(asyncio.Protocol):
    """One client's WebSocket (through HAProxy): its handshake, frames and ASGI application."""

    # What the fan-out path (transport/daphne.py) compares `state` with.
    STATE_OPEN = State.OPEN

    # Thousands live at once: no __dict__ each.
    __slots__ = (
        "__weakref__",
        "app",
        "behind",
        "closed",
        "early",
        "fanned_out_at",
        "fragmented_opcode",
        "fragments",
        "inbox",
        "port",
        "reader",
        "response",
        "timer",
        "transport",
        "ws",
    )

    def __init__(self, port: SocketPort) -> None:
        self.port = port
        # The handshake is ws_handshake.py's to read; websockets parses the frames after it, so
        # its protocol starts past the handshake. It is told CONNECTING until the application
        # accepts, as before: the application can neither send a frame nor be handed one before
        # the 101 (frames sent with the handshake wait in `early`).
        self.ws = ServerProtocol(max_size=MAX_MESSAGE_BYTES, logger=logger, state=State.OPEN)
        self.ws.state = State.CONNECTING
        self.reader: HeadReader | None = HeadReader()  # until the request's head is complete
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.inbox: Inbox | None = None
        self.app: asyncio.Task[None] | None = None
        self.response: bytes | None = None  # the Sec-WebSocket-Accept, until the app accepts
        self.early: list[dict[str, Any] | None] | None = None  # frames before that
        self.fragments: list[bytes] | None = None
        self.fragmented_opcode: Any = None
        self.timer: asyncio.TimerHandle | None = None
        # Read and set by the fan-out path, as on Daphne's protocol.
        self.fanned_out_at: float | None = None
        self.behind = False

    @property
    def state(self) -> State:
        return State.CLOSED if self.closed else self.ws.state

    @property
    def ended(self) -> bool:
        """Closed, or ended from this side (websockets sent its EOF: we are lingering)."""
        return self.closed or self.ws.eof_sent

    # --- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._arm(HANDSHAKE_SECS, self._abort)

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        if reader is not None:
            if self.ended:
                return  # refused: what the client still sends is dropped until it goes
            outcome, data = reader.feed(data)
            if outcome is None:
                return
            if isinstance(outcome, Refusal):
                self._refuse(outcome)
                return
            self.reader = None
            self._on_opening(outcome)
            if not data:
                return
        ws = self.ws
        ws.receive_data(data)
        for event in ws.events_received():
            if isinstance(event, Frame):
                self._on_frame(event)
        self._write_protocol_data()

    def eof_received(self) -> bool:
        self.ws.receive_eof()
        self._write_protocol_data()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.inbox is not None:
            # The client's close code; 1006 for a connection that ended without one (or before
            # the application accepted it).
            closed_cleanly = self.ws.close_rcvd is not None and self.response is None
            code = self.ws.close_code if closed_cleanly else 1006
            self.inbox.put_nowait({"type": "websocket.disconnect", "code": code})
        if self.app is not None and not self.app.done():
            self._arm(APP_CLOSE_SECS, self._cancel_app)  # disarmed when it returns (_app_done)
        self.port.connections.discard(self)

    # --- the handshake -----------------------------------------------------------------------

    def _refuse(self, refusal: Refusal) -> None:
        """Not a WebSocket handshake: websockets' answer (400, 405, 414, 426, 431 or 505), or
        none for what is not HTTP; then the connection ends."""
        if refusal.status:
            self._answer_http(refusal.status, refusal.body, refusal.header)
        else:
            self.ws.send_eof()
            self._write_protocol_data()

    def _on_opening(self, opening: Opening) -> None:
        self.response = opening.accept
        assert self.transport is not None
        # Bounded: while the application is behind, the client's frames wait in TCP (inbox.py).
        self.inbox = Inbox(self.transport.pause_reading, self.transport.resume_reading)
        self.inbox.put_nowait({"type": "websocket.connect"})
        scope = self._scope(opening)
        self.app = asyncio.ensure_future(
            self.port.application(scope=scope, receive=self.inbox.get, send=self._send)
        )
        self.app.add_done_callback(self._app_done)
        self._arm(CONNECT_SECS, self._reject)

    def _scope(self, opening: Opening) -> dict[str, Any]:
        # As Daphne: no header whose name has "_" (CVE-2015-0219).
        headers = [header for header in opening.headers if b"_" not in header[0]]
        raw_path, _, query = opening.target.partition("?")
        client = server = None
        assert self.transport is not None
        peer = self.transport.get_extra_info("peername")
        here = self.transport.get_extra_info("sockname")
        if isinstance(peer, tuple) and isinstance(here, tuple):
            client, server = [str(peer[0]), peer[1]], [str(here[0]), here[1]]
        if self.port.proxy_headers:
            client, _ = parse_x_forwarded_for(
                dict(headers), "X-Forwarded-For", "X-Forwarded-Port", None, client
            )
        return {
            "type": "websocket",
            "asgi": {"version": "3.0"},
            "path": unquote(raw_path),
            "raw_path": raw_path.encode("latin1"),
            "root_path": "",
            "headers": headers,
            "query_string": query.encode("latin1"),
            "client": client,
            "server": server,
            "subprotocols": opening.subprotocols,
            "extensions": {transport.FAST_PATH: {"protocol": self}},
        }

    def _accept(self, subprotocol: str | None) -> None:
        accept, self.response = self.response, None
        assert accept is not None
        self._disarm()
        self.ws.state = State.OPEN
        # Queued on the fan-out path, not written: the hello the application sends next joins
        # it, one send() and one wake-up of HAProxy for both.
        fast_path.write_bytes(self, switching(accept, subprotocol))
        if self.ws.writes:  # answers held for the 101 (_write_protocol_data): after it, now
            self._write_protocol_data()
        early, self.early = self.early, None
        for message in early or ():
            assert self.inbox is not None
            if message is not None:  # (None: a ping, answered above)
                self.inbox.put_nowait(message)

    def _reject(self) -> None:
        """A close before accept, or no answer within CONNECT_SECS: HTTP 403, as Daphne."""
        self._refuse_handshake(403, "Access denied\n")

    def _refuse_handshake(self, status: int, text: str) -> None:
        """Answer the held handshake with an HTTP error instead of its 101, and end."""
        if self.response is None or self.ended:
            return
        self.response = None
        self._disarm()
        self.ws.data_to_send()  # answers to frames, held for a 101 that will not come: dropped
        self._answer_http(status, text)

    def _answer_http(self, status: int, text: str, header: tuple[str, str] | None = None) -> None:
        """An HTTP error answer in websockets' form (plain text, Connection: close), then EOF."""
        response = self.ws.reject(status, text)
        if header:
            response.headers[header[0]] = header[1]
        self.ws.send_response(response)
        self._write_protocol_data()

    # --- frames from the client --------------------------------------------------------------

    def _on_frame(self, frame: Frame) -> None:
        opcode, data = frame.opcode, bytes(frame.data)
        if opcode is Opcode.CONT:
            if self.fragments is None:
                return  # websockets has failed the connection for it already
            self.fragments.append(data)
            if not frame.fin:
                return
            data, self.fragments = b"".join(self.fragments), None
            opcode = self.fragmented_opcode
        elif opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            if not frame.fin:
                self.fragments, self.fragmented_opcode = [data], opcode
                return
        else:
            # Ping, pong, close: answered by websockets. Before the 101 a ping's pong is held for
            # it (_write_protocol_data), so pings count with the frames that wait for it.
            if opcode is Opcode.PING and self.response is not None:
                self._hold_early(None)
            return
        if opcode is Opcode.TEXT:
            try:
                message: dict[str, Any] = {"type": "websocket.receive", "text": data.decode()}
            except UnicodeDecodeError as exc:
                self.ws.fail(1007, f"invalid UTF-8 at position {exc.start}")
                return
        else:
            message = {"type": "websocket.receive", "bytes": data}
        if self.response is not None:
            self._hold_early(message)
        elif self.inbox is not None and self.ws.state is State.OPEN:
            self.inbox.put_nowait(message)

    def _hold_early(self, message: dict[str, Any] | None) -> None:
        """A frame before the 101 (None: a ping), delivered once the socket is accepted; a
        client that sends more than a few before it even has the answer is not speaking the
        protocol."""
        self.early = [*(self.early or ()), message]
        if len(self.early) > MAX_EARLY_FRAMES:
            self.early = None
            self.ws.fail(1008, "too many frames before the handshake's answer")

    # --- the application's messages ----------------------------------------------------------

    async def _send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "websocket.accept":
            if self.response is not None and not self.ended:
                self._accept(message.get("subprotocol"))
        elif kind == "websocket.close":
            if self.response is not None:
                self._reject()
            elif self.state is State.OPEN:
                fast_path.flush_socket(self)  # before the close, which ends the fan-out path's
                self.ws.send_close(message.get("code") or 1000, message.get("reason") or "")
                self._write_protocol_data()
        elif kind == "websocket.send":
            if self.response is not None and not self.ended:
                self._accept(None)  # as Daphne: a send before accept accepts
            if self.state is not State.OPEN:
                raise SocketClosed("the socket closed")
            text, data = message.get("text"), message.get("bytes")
            if text is not None:
                self.ws.send_text(text.encode())
            elif data is not None:
                self.ws.send_binary(data)
            self._write_protocol_data()
        else:
            raise ValueError(f"not a WebSocket message: {kind!r}")

    def _cancel_app(self) -> None:
        if self.app is not None:
            self.app.cancel()

    def _app_done(self, app: asyncio.Task[None]) -> None:
        """The application returned or failed: a socket it left open is closed (1011 after a
        failure, as Daphne; 500 before accept)."""
        failure = None if app.cancelled() else app.exception()
        if failure is not None:
            logger.error("socket application failed", exc_info=failure)
        if self.inbox is not None:
            self.inbox.release()
        if self.closed:
            self._disarm()
            return
        if self.ws.eof_sent:
            return  # ended from this side already: the linger timer runs on
        if self.response is not None:
            self._refuse_handshake(500, "Internal server error\n")
        elif self.ws.state is State.OPEN:
            fast_path.flush_socket(self)  # before the close, which ends the fan-out path's writes
            self.ws.send_close(1011 if failure is not None else 1000)
            self._write_protocol_data()

    # --- what the fan-out path calls (transport/daphne.py) -----------------------------------

    def write_frames(self, data: bytes) -> None:
        """Frames already framed for the wire; asyncio sends at once what the kernel takes."""
        assert self.transport is not None
        self.transport.write(data)
        if self.transport.get_write_buffer_size():
            self.behind = True

    def unsent(self) -> int:
        return 0 if self.transport is None else self.transport.get_write_buffer_size()

    # Autobahn's name and arguments: the fan-out path's close_with_code calls it.
    def sendCloseFrame(self, code: int, reasonUtf8: bytes = b"", isReply: bool = False) -> None:
        if self.state is State.OPEN:
            self.ws.send_close(code, reasonUtf8.decode(errors="replace"))
            self._write_protocol_data()

    # --- the wire ----------------------------------------------------------------------------

    def _write_protocol_data(self) -> None:
        """Write what websockets made (the 101, pongs, close frames, errors); its empty chunk
        means the server closes the TCP connection, after what is written."""
        transport = self.transport
        if transport is None or self.closed:
            return
        if self.response is not None and not self.ws.eof_sent:
            # Before the 101: websockets' answer to a frame sent with the handshake (a ping's
            # pong) waits for it (_accept), or the client would read a frame where HTTP belongs.
            return
        fast_path.flush_socket(self)  # what the fan-out path holds goes first (the 101, frames)
        unanswered = self.response is not None  # (ended before its 101: no frame may go out)
        for data in self.ws.data_to_send():
            if data:
                if not unanswered:
                    transport.write(data)
            elif transport.can_write_eof():
                # The server ends the connection: FIN after what is written, then what the
                # client still sends is read and dropped until it closes too (or LINGER_SECS).
                # Closed with its data unread, the kernel would reset the connection, and the
                # reset can destroy the close frame before HAProxy and the client read it.
                transport.write_eof()
                self._arm(LINGER_SECS, self._abort)
                return
            else:
                transport.close()
                return
        if self.ws.close_expected() and self.timer is None:
            self._arm(CLOSE_SECS, self._abort)  # the client's close frame, or its TCP close

    def _arm(self, secs: float, then: Callable[[], None]) -> None:
        self._disarm()
        self.timer = asyncio.get_running_loop().call_later(secs, then)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.abort()


class SocketPort:
    """The listener: its application, and the connections open on it."""

    def __init__(self, application: Any, *, proxy_headers: bool) -> None:
        self.application = application
        self.proxy_headers = proxy_headers
        self.connections: set[SocketPortConnection] = set()
        self.server: asyncio.Server | None = None

    def _connection(self) -> SocketPortConnection:
        connection = SocketPortConnection(self)
        self.connections.add(connection)
        return connection

    async def serve(self, bind: str) -> asyncio.Server:
        """Listen on `bind` ("host:port"); the server, already serving."""
        host, _, port = bind.rpartition(":")
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            self._connection, host.strip("[]") or None, int(port)
        )
        return self.server
