"""Stream frames written straight to replicas' WebSockets: framed once per message, not per socket.

Profiling a replica under broadcast fan-out (docs/performance.md) showed most of its time in
the path one `self.send()` takes per socket: Channels' consumer send, the session middleware's
send wrapper (a lazy-object lookup each time), Daphne's reply handler, then Autobahn framing
the same text again for every socket. A stream frame is the same bytes for every recipient, and
server frames are unmasked, so Autobahn's PreparedMessage frames it once and each socket only
writes those bytes.

Frames are also coalesced: what is queued for one socket during a turn of the event loop, or
while a busy socket's frames are held, goes out in one send() (see `write_frame`).

Daphne does not expose its protocol object to the application: our server entry point
(server.py) offers it as the scope extension `transport.FAST_PATH`, after `check_fast_path()`
found the Daphne, Twisted and Autobahn it was written against. `DaphneWriter` is the
SocketWriter over it. The socket port's connections (socket_port.py) are offered the same way
and take the same path; they write the framed bytes themselves (`write_frames`).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import inspect
import logging
from typing import Any

from autobahn.exception import Disconnected
from autobahn.websocket.protocol import PreparedMessage
from django.conf import settings

from realtime.lifetimes import counted
from realtime.stats import replica_stats
from realtime.transport import SocketClosed

logger = logging.getLogger(__name__)


def is_open(protocol: Any) -> bool:
    return bool(protocol.state == protocol.STATE_OPEN)


def write_frame(protocol: Any, frame: str) -> None:
    """Queue `frame` (a text message) for the socket of `protocol`, framed once per replica.

    The bytes are written when the event loop next comes round (`flush_turn`), together with any
    other frames queued for the same socket meanwhile: when several messages arrive in one read
    from Redis, each socket gets them in one send(), one TCP segment, and HAProxy and the
    client wake once for all of them.

    A socket sent frames by a fan-out (`FAN_OUT_SOCKETS` written together) less than
    `SOCKET_WRITE_HOLD_MS` ago is busy: what comes for it now waits until that long after its
    last write, so a busy socket gets at most one write per hold, with several frames in it.
    Like Nagle's algorithm, it trades a bounded delay for fewer writes only where frames
    already come fast: under broadcast fan-out to 1000 sockets it made 4-6 frames per send()
    instead of 1.15 and halved the CPU per delivery of replicas, HAProxy and clients
    (docs/performance.md). A frame for a socket that is not busy goes on the next loop turn.

    Any other write to the socket must call `flush_socket` first, so frames never overtake
    each other.
    """
    write_bytes(protocol, prepared(frame).payloadHybi)


def write_bytes(protocol: Any, data: bytes) -> None:
    """Queue bytes already framed for the wire as `write_frame` queues a frame (the socket
    port's handshake answer, which then goes out in one send() with the hello after it)."""
    chunks = _pending.get(protocol)
    if chunks is not None:
        chunks.append(data)
        return
    _pending[protocol] = [data]
    loop = asyncio.get_running_loop()
    hold = settings.SOCKET_WRITE_HOLD_MS / 1000
    fanned_out_at = getattr(protocol, "fanned_out_at", None)
    if hold and fanned_out_at is not None and loop.time() - fanned_out_at < hold:
        # Sockets written in one flush share its time, so under fan-out a replica's sockets
        # share one deadline, and one timer.
        deadline = fanned_out_at + hold
        held = _held.get(deadline)
        if held is None:
            _held[deadline] = held = []
            loop.call_at(deadline, flush_held, deadline)
        held.append(protocol)
        return
    global _turn_scheduled
    _on_turn.append(protocol)
    if not _turn_scheduled:
        _turn_scheduled = True
        loop.call_soon(flush_turn)


def flush_turn() -> None:
    """Write the frames queued this loop turn for idle sockets, one send() per socket."""
    global _on_turn, _turn_scheduled
    protocols, _on_turn, _turn_scheduled = _on_turn, [], False
    _flush(protocols)


def flush_held(deadline: float) -> None:
    """Write the frames held until `deadline` for busy sockets, one send() per socket."""
    _flush(_held.pop(deadline, []))


def _flush(protocols: list[Any]) -> None:
    # Only a fan-out makes its sockets busy: a write to a few sockets (a push, a small room)
    # costs a few send()s, not worth delaying what comes next for them.
    written_at = asyncio.get_running_loop().time() if len(protocols) >= FAN_OUT_SOCKETS else None
    for protocol in protocols:
        chunks = _pending.pop(protocol, None)
        if chunks:  # None when flush_socket wrote them meanwhile
            protocol.fanned_out_at = written_at
            try:
                _write(protocol, chunks)
            except Exception:
                # One socket's failure must not cost the sockets after it their frames.
                logger.exception("writing to a socket failed; it will be closed by its errors")


def flush_socket(protocol: Any) -> None:
    """Write what is queued for this one socket now (before a write by another path)."""
    chunks = _pending.pop(protocol, None)
    if chunks:
        _write(protocol, chunks)


def close_with_code(protocol: Any, code: int, reason: str) -> None:
    """Close with any RFC 6455 code, after what is queued. Daphne's `websocket.close` goes through
    Autobahn's sendClose, which allows an application only 1000 and 3000-4999 (1008, "policy
    violation", raised and crashed the socket with 1011); the close frame itself takes any."""
    flush_socket(protocol)
    if is_open(protocol):
        protocol.sendCloseFrame(code=code, reasonUtf8=reason.encode()[:123], isReply=False)


def _write(protocol: Any, chunks: list[bytes]) -> None:
    """When Twisted has nothing buffered for the socket, the bytes go straight to send():
    Twisted would otherwise buffer them, register the socket for writability with epoll, and
    write and unregister it on the next loop turn, which profiled at half a replica's time
    under fan-out. Whatever send() does not take (a full socket buffer) goes to Twisted, which
    keeps order; so does everything while Autobahn or Twisted have bytes queued."""
    if not is_open(protocol):
        return  # closed since the frame was queued: there is no one to write to
    replica_stats.socket_writes += 1
    replica_stats.frames_coalesced += len(chunks) - 1
    data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    if protocol.write_frames is not None:  # a socket port connection (socket_port.py)
        protocol.write_frames(data)
        return
    transport = protocol.transport
    if protocol.send_queue or not _idle(transport):
        protocol.sendData(data)
        protocol.behind = True
        return
    try:
        sent = transport.socket.send(data)
    except (BlockingIOError, InterruptedError):
        sent = 0
    except OSError:
        sent = 0  # a dead socket: Twisted's own write meets the error and closes the connection
    if sent < len(data):
        transport.write(data[sent:])
        protocol.behind = True


def backlogged(protocol: Any) -> bool:
    """More than `SOCKET_BACKLOG_MAX_BYTES` wait for this socket beyond what the kernel took: its
    client reads slower than frames come (or not at all). Twisted and Autobahn would buffer
    without limit; the consumer stops writing instead and fetches the frames from history
    once the socket drained (`drained`), so a stuck client costs a bounded buffer."""
    if not getattr(protocol, "behind", True):
        return False  # nothing went to Twisted's buffer since it was last seen empty
    unsent = unsent_bytes(protocol)
    if not unsent:
        protocol.behind = False
    return unsent > settings.SOCKET_BACKLOG_MAX_BYTES


async def drained(protocol: Any) -> None:
    """Return once this socket's backlog is down to half the limit, or it closed. Polled: the
    transport's one producer slot, which Twisted would tell when its buffer empties, belongs to
    Daphne's HTTP channel, and this only runs for a socket that is behind."""
    limit = settings.SOCKET_BACKLOG_MAX_BYTES // 2
    while unsent_bytes(protocol) > limit and is_open(protocol):  # noqa: ASYNC110 (no event)
        await asyncio.sleep(DRAIN_POLL_SECS)


def unsent_bytes(protocol: Any) -> int:
    """Bytes Autobahn and Twisted (or asyncio, for the socket port) hold for the socket that the
    kernel has not taken yet."""
    if protocol.write_frames is not None:
        return int(protocol.unsent())
    try:
        transport = protocol.transport
        unsent = transport._tempDataLen + len(transport.dataBuffer) - transport.offset
        if protocol.send_queue:
            unsent += sum(len(item[0]) for item in protocol.send_queue)
        return int(unsent)
    except (AttributeError, TypeError):  # not the Twisted transport this was written against
        return 0


def _idle(transport: Any) -> bool:
    """A plain TCP transport of Twisted's, connected, with nothing waiting in its buffers."""
    try:
        return bool(
            transport._tempDataLen == 0
            and transport.offset == len(transport.dataBuffer)
            and transport.connected
            and not transport.disconnecting
            and not transport._writeDisconnected
            and not transport.TLS
            and transport.socket is not None
        )
    except AttributeError:  # not the Twisted transport this was written against
        return False


_last: tuple[str, PreparedMessage] | None = None
# Frames queued per socket (Daphne's protocol object) until the next flush, in queue order.
_pending: dict[Any, list[bytes]] = {}
# Sockets to write at the end of this loop turn; busy ones by the loop time to write them at.
_on_turn: list[Any] = []
_turn_scheduled = False
_held: dict[float, list[Any]] = {}
# Sockets written in one flush for it to count as a fan-out, after which they are busy.
FAN_OUT_SOCKETS = 50
# How often a writer waiting for a backlogged socket looks again.
DRAIN_POLL_SECS = 0.01


def prepared(frame: str) -> PreparedMessage:
    """The frame, framed for the wire. The layer hands one message's text (the same object) to
    every local socket in turn, so one cached entry frames it once per replica."""
    global _last
    if _last is not None and _last[0] is frame:
        return _last[1]
    # doNotCompress: also keeps a socket that negotiated compression on the prepared bytes.
    message = PreparedMessage(frame.encode(), isBinary=False, applyMask=False, doNotCompress=True)
    _last = (frame, message)
    return message


# --- the writer, and the start-up check -------------------------------------------------------

# Autobahn lets an application close only with 1000 or 3000-4999 (its sendClose raises for the
# rest); other codes go out as a close frame on the protocol (close_with_code).
_APP_CLOSE_CODES = range(3000, 5000)


@counted
class DaphneWriter:
    """SocketWriter over Daphne's protocol (see the module docstring)."""

    __slots__ = ("protocol", "send")
    name = "daphne-fast-path"

    def __init__(self, protocol: Any, send: Any) -> None:
        self.protocol = protocol
        self.send = send

    def is_open(self) -> bool:
        return is_open(self.protocol)

    async def accept(self) -> None:
        await self.send({"type": "websocket.accept"})

    def write_now(self, frame: str) -> bool:
        if not is_open(self.protocol) or backlogged(self.protocol):
            return False
        write_frame(self.protocol, frame)
        return True

    async def write(self, text: str) -> None:
        # A hello, an error, a replayed frame: framed and written as the fast path writes, when
        # the socket can take it. Daphne's send would dispatch it as an ASGI message and frame
        # it in Autobahn for this one socket (~5% of a replica's CPU when each user's first
        # push went this way). In line with what write_now queued either way.
        if self.write_now(text):
            return
        # Frames queued by write_now go out at the end of the loop turn: anything written
        # another way goes after them, never ahead.
        flush_socket(self.protocol)
        try:
            await self.send({"type": "websocket.send", "text": text})
        except Disconnected:
            raise SocketClosed("the socket closed") from None

    def backlog_bytes(self) -> int:
        return unsent_bytes(self.protocol)

    def backlogged(self) -> bool:
        return backlogged(self.protocol)

    async def drained(self) -> None:
        await drained(self.protocol)

    async def close(self, code: int, reason: str = "") -> None:
        if code == 1000 or code in _APP_CLOSE_CODES:
            flush_socket(self.protocol)
            await self.send({"type": "websocket.close", "code": code})
        else:
            close_with_code(self.protocol, code, reason)


# Versions the fast path was written and measured against (docs/performance.md). Others may
# work; they are not assumed to.
KNOWN_GOOD = {
    "daphne": ("4.2",),
    "twisted": ("24.", "25.", "26."),
    "autobahn": ("24.", "25.", "26."),
}


def check_fast_path() -> list[str]:
    """What keeps the fast path from running here: [] when Daphne, Twisted and Autobahn are
    versions it knows and have every attribute it reads."""
    problems = []
    for package, prefixes in KNOWN_GOOD.items():
        version = importlib.metadata.version(package)
        if not version.startswith(prefixes):
            problems.append(f"{package} {version} is not one of {', '.join(prefixes)}x")
    from autobahn.websocket.protocol import WebSocketProtocol
    from twisted.internet import abstract, tcp

    needed = [
        (WebSocketProtocol, ("sendPreparedMessage", "sendCloseFrame", "sendData", "STATE_OPEN")),
        (abstract.FileDescriptor, ("dataBuffer", "offset", "_writeDisconnected")),
        (tcp.Connection, ("TLS",)),
    ]
    for owner, names in needed:
        for name in names:
            if not hasattr(owner, name):
                problems.append(f"{owner.__module__}.{owner.__name__} has no {name}")
    # Set per instance in __init__ (making one here would import, and so install, a reactor).
    if "self._tempDataLen" not in inspect.getsource(abstract.FileDescriptor.__init__):
        problems.append("twisted.internet.abstract.FileDescriptor keeps no _tempDataLen")
    return problems
