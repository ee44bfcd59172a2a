"""The WebSocket opening handshake (RFC 6455, 4.2.1), read and answered by the socket port.

websockets' sans-I/O `ServerProtocol` reads a request a line at a time through generators, keeps
its headers in a case-insensitive multidict and answers with a `Response` carrying Date and
Server headers: ~100 µs of CPU a handshake on this machine, about a thirteenth of what a replica
spent per connect (docs/performance.md, the ninth round). This reads the head with a few splits
and one regular expression and answers the 101 from bytes: ~30 µs with the construction of
websockets' frame parser, which still parses and writes every frame after it (socket_port.py).

It checks what websockets checks, with its limits and its answers (tests/unit/test_ws_handshake.py
runs the same requests through both):
- a request line over MAX_LINE_BYTES: 414; a header line over it, or more than MAX_HEADERS
  headers: 431;
- a method other than GET: 405 with `Allow: GET`; HTTP/1.0: 505;
- what is not an HTTP/1.x request without a body (another version, a line without CRLF, a
  header name that is not a token, a value with control characters, a Transfer-Encoding, a
  Content-Length other than 0): closed without an answer, as websockets does;
- no `Connection: upgrade` or no `Upgrade: websocket`: 426 with `Upgrade: websocket`;
- a missing, repeated or malformed Sec-WebSocket-Key or Sec-WebSocket-Version (only 13), a
  repeated Origin or a malformed Connection, Upgrade or Sec-WebSocket-Protocol list: 400.
No extension is negotiated (websockets' ServerProtocol was given none either). Origin and Host
are the application's to check (realtime/socket_auth.py), as before.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from websockets.exceptions import InvalidHeaderFormat
from websockets.headers import parse_connection, parse_subprotocol, parse_upgrade
from websockets.utils import accept_key

# websockets' MAX_LINE_LENGTH and MAX_NUM_HEADERS (websockets/http11.py).
MAX_LINE_BYTES = 8192
MAX_HEADERS = 128

# Every header line at once, as websockets checks each: a token, a colon, a value without
# control characters but tab, CRLF (so a bare CR or LF fails it).
_HEADER_LINES = re.compile(rb"(?:[-!#$%&'*+.^_`|~0-9a-zA-Z]+:[\x09\x20-\x7e\x80-\xff]*\r\n)*")
# The headers the handshake reads.
_ASKED = (
    b"connection",
    b"upgrade",
    b"sec-websocket-key",
    b"sec-websocket-version",
    b"sec-websocket-protocol",
    b"origin",
    b"transfer-encoding",
    b"content-length",
)
_UPGRADE_TEXT = (
    "\n\nYou cannot access a WebSocket server directly with a browser. "
    "You need a WebSocket client.\n"
)


@dataclass(slots=True)
class Opening:
    """A valid opening handshake: what the ASGI scope is made of, and the key's answer."""

    target: str  # the request-target, percent-encoded, as sent
    headers: list[tuple[bytes, bytes]]  # every header, names lower-cased, in order
    subprotocols: list[str]
    accept: bytes  # Sec-WebSocket-Accept


def switching(accept: bytes, subprotocol: str | None = None) -> bytes:
    """The 101. Neither Date (optional on a 1xx, RFC 9110 6.6.1) nor Server is sent."""
    chosen = b"Sec-WebSocket-Protocol: " + subprotocol.encode() + b"\r\n" if subprotocol else b""
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept + b"\r\n" + chosen + b"\r\n"
    )


@dataclass(slots=True, frozen=True)
class Refusal:
    """An HTTP error answer, after which the connection closes; status 0: none, just close."""

    status: int
    text: str = ""
    header: tuple[str, str] | None = None  # Upgrade on a 426, Allow on a 405

    @property
    def body(self) -> str:
        if not self.status:
            return ""
        return f"Failed to open a WebSocket connection: {self.text}.\n" + (
            _UPGRADE_TEXT if self.status == 426 else ""
        )


NOT_HTTP = Refusal(0)
UPGRADE_WEBSOCKET = ("Upgrade", "websocket")
TOO_MANY_HEADERS = Refusal(431, f"expected no more than {MAX_HEADERS} headers")
TARGET_TOO_LONG = Refusal(414, "line too long")
HEADER_TOO_LONG = Refusal(431, "line too long")


class HeadReader:
    """Collects a request's head as it arrives, within the limits, however it is split."""

    __slots__ = ("buffer", "newlines")

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.newlines = 0

    def feed(self, data: bytes) -> tuple[Opening | Refusal | None, bytes]:
        """The head's outcome once it is complete (None before), and the bytes after it."""
        buffer = self.buffer
        start = max(0, len(buffer) - 3)
        buffer += data
        end = buffer.find(b"\r\n\r\n", start)
        if end < 0:
            # Scans only what is new (and the last line), so a head sent a byte at a time
            # costs no more than one sent at once.
            self.newlines += data.count(b"\n")
            if self.newlines > MAX_HEADERS + 1:  # the request line, then the headers
                return TOO_MANY_HEADERS, b""
            if len(buffer) - buffer.rfind(b"\n") - 1 > MAX_LINE_BYTES:
                return (HEADER_TOO_LONG if self.newlines else TARGET_TOO_LONG), b""
            return None, b""
        rest = bytes(buffer[end + 4 :])
        outcome = parse(bytes(buffer[:end]))
        buffer.clear()
        return outcome, rest


def parse(head: bytes) -> Opening | Refusal:
    """A complete head (without its final empty line) as an opening handshake, or why not."""
    request_line, _, block = head.partition(b"\r\n")
    if len(request_line) > MAX_LINE_BYTES:
        return TARGET_TOO_LONG
    if block:
        block += b"\r\n"
    if block.count(b"\n") > MAX_HEADERS:
        return TOO_MANY_HEADERS
    lines = block.split(b"\r\n")
    del lines[-1]  # what follows the last CRLF: nothing
    if len(block) > MAX_LINE_BYTES and any(len(line) > MAX_LINE_BYTES for line in lines):
        return HEADER_TOO_LONG
    parts = request_line.split(b" ", 2)
    if len(parts) != 3 or parts[2] not in (b"HTTP/1.1", b"HTTP/1.0"):
        return NOT_HTTP
    try:
        method, target = parts[0].decode("ascii"), parts[1].decode("ascii")
    except UnicodeDecodeError:
        return NOT_HTTP
    if not _HEADER_LINES.fullmatch(block):
        return NOT_HTTP
    headers = [
        (name.lower(), value.strip(b" \t"))
        for name, _, value in [line.partition(b":") for line in lines]
    ]
    asked: dict[bytes, list[bytes]] = {name: [] for name in _ASKED}
    for name, value in headers:
        values = asked.get(name)
        if values is not None:
            values.append(value)
    if asked[b"transfer-encoding"] or any(value != b"0" for value in asked[b"content-length"]):
        return NOT_HTTP  # websockets reads no request body
    if method != "GET":
        return Refusal(
            405, f"unsupported HTTP method; expected GET; got {method}", ("Allow", "GET")
        )
    if parts[2] != b"HTTP/1.1":
        return Refusal(505, "unsupported protocol; expected HTTP/1.1: HTTP/1.0")
    return _opening(target, headers, asked)


def _opening(
    target: str, headers: list[tuple[bytes, bytes]], asked: dict[bytes, list[bytes]]
) -> Opening | Refusal:
    connection, upgrade = asked[b"connection"], asked[b"upgrade"]
    keys, versions = asked[b"sec-websocket-key"], asked[b"sec-websocket-version"]
    try:
        options = _listed(parse_connection, connection, b"upgrade")
        if not any(option.lower() == "upgrade" for option in options):
            return Refusal(426, _invalid("Connection", options), UPGRADE_WEBSOCKET)
        protocols_asked = _listed(parse_upgrade, upgrade, b"websocket")
        if not (len(protocols_asked) == 1 and protocols_asked[0].lower() == "websocket"):
            return Refusal(426, _invalid("Upgrade", protocols_asked), UPGRADE_WEBSOCKET)
        subprotocols = _listed(parse_subprotocol, asked[b"sec-websocket-protocol"], None)
    except InvalidHeaderFormat as exc:
        return Refusal(400, str(exc))
    if len(keys) != 1:
        return Refusal(400, _count_problem("Sec-WebSocket-Key", keys))
    try:
        raw_key = base64.b64decode(keys[0], validate=True)
    except binascii.Error:
        raw_key = b""
    if len(raw_key) != 16:
        return Refusal(400, f"invalid Sec-WebSocket-Key header: {keys[0].decode('latin-1')}")
    if len(versions) != 1:
        return Refusal(400, _count_problem("Sec-WebSocket-Version", versions))
    if versions[0] != b"13":
        return Refusal(
            400, f"invalid Sec-WebSocket-Version header: {versions[0].decode('latin-1')}"
        )
    if len(asked[b"origin"]) > 1:
        return Refusal(400, "invalid Origin header: multiple values")
    accept = accept_key(keys[0].decode("ascii")).encode()  # (base64, so ASCII)
    return Opening(target, headers, subprotocols, accept)


def _listed(
    parser: Callable[[str], Sequence[str]], values: list[bytes], usual: bytes | None
) -> list[str]:
    """A comma-separated header's items over all its lines, parsed as websockets parses them;
    the usual single value (any case) without the parser's regular expressions."""
    if len(values) == 1 and usual is not None and values[0].lower() == usual:
        return [values[0].decode("ascii")]
    items: list[str] = []
    for value in values:
        items += parser(value.decode("latin-1"))
    return items


def _invalid(name: str, items: list[str]) -> str:
    return f"invalid {name} header: {', '.join(items)}" if items else f"missing {name} header"


def _count_problem(name: str, values: list[bytes]) -> str:
    return f"invalid {name} header: multiple values" if values else f"missing {name} header"
