"""Writing stream frames straight to a replica's WebSockets: framed once per message, not per socket.

Profiling a replica under broadcast fan-out (docs/performance.md) showed most of its time in
the path one `self.send()` takes per socket: Channels' consumer send, the session middleware's
send wrapper (a lazy-object lookup each time), Daphne's reply handler, then Autobahn framing
the same text again for every socket. A stream frame is the same bytes for every recipient, and
server frames are unmasked, so Autobahn's PreparedMessage frames it once and each socket only
writes those bytes.

Frames are also coalesced: what is queued for one socket during a turn of the event loop goes
out in one send() (see `write_frame`).

Daphne does not expose its protocol object to the application; it hands the application
`partial(server.handle_reply, protocol)` as `send`. Our socket middleware passes it through;
Channels' session middleware would wrap it (keeping the original as `real_send`).
`ws_protocol_of` follows that chain and returns None when it looks different (another server,
another Daphne version): the consumer then keeps using the ordinary send path, which stays
correct, only slower.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from autobahn.websocket.protocol import PreparedMessage

from realtime.stats import replica_stats

# Wrappers between the consumer and Daphne's partial: few; a longer chain is not Daphne's.
_MAX_WRAPPERS = 8


def ws_protocol_of(send: Any) -> Any | None:
    """Daphne's Autobahn protocol behind an ASGI `send` callable, or None."""
    for _ in range(_MAX_WRAPPERS):
        if isinstance(send, functools.partial):
            target = send.args[0] if send.args else None
            return target if hasattr(target, "sendPreparedMessage") else None
        send = getattr(getattr(send, "__self__", None), "real_send", None)
        if send is None:
            return None
    return None


def is_open(protocol: Any) -> bool:
    return bool(protocol.state == protocol.STATE_OPEN)


def write_frame(protocol: Any, frame: str) -> None:
    """Queue `frame` (a text message) for the socket of `protocol`, framed once per replica.

    The bytes are written when the event loop next comes round (`flush`), together with any
    other frames queued for the same socket meanwhile: when several messages arrive in one read
    from Redis, each socket gets them in one send(), one TCP segment, and HAProxy and the
    client wake once for all of them. Nothing waits for more: an idle replica writes each
    frame on the next loop turn. Any other write to the socket must call `flush_socket` first,
    so frames never overtake each other.
    """
    data = prepared(frame).payloadHybi
    chunks = _pending.get(protocol)
    if chunks is not None:
        chunks.append(data)
        return
    _pending[protocol] = [data]
    global _flush_scheduled
    if not _flush_scheduled:
        _flush_scheduled = True
        asyncio.get_running_loop().call_soon(flush)


def flush() -> None:
    """Write every socket's queued frames, one send() per socket."""
    global _pending, _flush_scheduled
    pending, _pending, _flush_scheduled = _pending, {}, False
    for protocol, chunks in pending.items():
        _write(protocol, chunks)


def flush_socket(protocol: Any) -> None:
    """Write what is queued for this one socket now (before a write by another path)."""
    chunks = _pending.pop(protocol, None)
    if chunks:
        _write(protocol, chunks)


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
    transport = protocol.transport
    if protocol.send_queue or not _idle(transport):
        protocol.sendData(data)
        return
    try:
        sent = transport.socket.send(data)
    except (BlockingIOError, InterruptedError):
        sent = 0
    except OSError:
        sent = 0  # a dead socket: Twisted's own write meets the error and closes the connection
    if sent < len(data):
        transport.write(data[sent:])


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
_flush_scheduled = False


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
