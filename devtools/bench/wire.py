"""Lean WebSocket and HTTP/1.1 clients for the benchmark.

The benchmark's clients share two cores with the servers they measure, so every microsecond a
client spends per frame is taken from the servers. A `websockets` connection costs several
times more per received frame than this protocol, which parses frames straight out of the
transport's buffer and hands each batch to a callback with one receipt timestamp. It is a
real RFC 6455 client (handshake with key check, masked client frames, ping/pong, close), but
only what a benchmark needs: no extensions, no TLS.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import time
from collections.abc import Callable
from urllib.parse import urlsplit

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA

# Called with every complete text message of one read, and the time (epoch ms) it was read.
OnMessages = Callable[[list[bytes], float], None]


class HandshakeError(Exception):
    """The server answered the upgrade with something other than 101 (status 0: no answer)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def mask_frame(opcode: int, payload: bytes) -> bytes:
    """A client frame: FIN set, masked with a random key as RFC 6455 requires."""
    length = len(payload)
    if length < 126:
        header = bytes((0x80 | opcode, 0x80 | length))
    elif length < 65536:
        header = bytes((0x80 | opcode, 0x80 | 126)) + length.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + length.to_bytes(8, "big")
    key = os.urandom(4)
    if not length:
        return header + key
    stream = (key * (length // 4 + 1))[:length]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(
        length, "big"
    )
    return header + key + masked


class WsProtocol(asyncio.Protocol):
    """One client WebSocket. `opened` resolves with the 101's headers; `closed` with the close
    code (1006 when the connection dropped without a close frame)."""

    def __init__(self, request: bytes, key: bytes, on_messages: OnMessages) -> None:
        loop = asyncio.get_running_loop()
        self.request = request
        self.accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
        self.on_messages = on_messages
        self.opened: asyncio.Future[dict[str, list[str]]] = loop.create_future()
        self.closed: asyncio.Future[int] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.upgraded = False
        self.fragments: list[bytes] = []
        self.close_code: int | None = None

    # --- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self.request)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.upgraded:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).decode("latin-1")
            del self.buffer[: end + 4]
            if not self._check_upgrade(head):
                return
        self._parse_frames()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(
                HandshakeError(0, f"connection lost before the upgrade: {exc!r}")
            )
            self.opened.exception()  # a caller that gave up waiting must not leave it unretrieved
        if not self.closed.done():
            self.closed.set_result(self.close_code or 1006)

    # --- the upgrade --------------------------------------------------------------------------

    def _check_upgrade(self, head: str) -> bool:
        lines = head.split("\r\n")
        parts = lines[0].split(" ", 2)
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        headers: dict[str, list[str]] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.setdefault(name.strip().lower(), []).append(value.strip())
        if status != 101:
            self._fail_open(HandshakeError(status, f"upgrade refused: {lines[0]}"))
            return False
        if headers.get("sec-websocket-accept", [""])[0].encode() != self.accept:
            self._fail_open(HandshakeError(status, "bad Sec-WebSocket-Accept"))
            return False
        self.upgraded = True
        self.opened.set_result(headers)
        return True

    def _fail_open(self, exc: HandshakeError) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc)
        assert self.transport is not None
        self.transport.close()

    # --- frames -------------------------------------------------------------------------------

    def _parse_frames(self) -> None:
        buf = self.buffer
        size = len(buf)
        pos = 0
        texts: list[bytes] = []
        while size - pos >= 2:
            first, second = buf[pos], buf[pos + 1]
            length = second & 0x7F
            start = pos + 2
            if length == 126:
                if size - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                start = pos + 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                start = pos + 10
            if second & 0x80:
                start += 4  # servers never mask; skip a key if one did (and do not unmask)
            end = start + length
            if end > size:
                break
            payload = bytes(buf[start:end])
            pos = end
            opcode = first & 0x0F
            if opcode == OP_TEXT or opcode == OP_BINARY or opcode == OP_CONT:
                if first & 0x80:
                    if self.fragments:
                        payload = b"".join([*self.fragments, payload])
                        self.fragments = []
                    if opcode != OP_BINARY:
                        texts.append(payload)
                else:
                    self.fragments.append(payload)
            elif opcode == OP_PING:
                self.send_frame(OP_PONG, payload)
            elif opcode == OP_CLOSE:
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                self.send_frame(OP_CLOSE, payload[:2])
                assert self.transport is not None
                self.transport.close()
                break
        if pos:
            del buf[:pos]
        if texts:
            self.on_messages(texts, time.time() * 1000)

    def send_frame(self, opcode: int, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(mask_frame(opcode, payload))

    def send_text(self, text: str) -> None:
        self.send_frame(OP_TEXT, text.encode())

    async def close(self, code: int = 1000, *, timeout: float = 5.0) -> None:
        """Send a close frame, wait for the server to close, then drop the connection."""
        if self.transport is None:
            return
        if not self.closed.done():
            self.send_frame(OP_CLOSE, code.to_bytes(2, "big"))
            try:
                await asyncio.wait_for(asyncio.shield(self.closed), timeout)
            except TimeoutError:
                pass
        self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


async def ws_connect(
    url: str,
    *,
    cookie: str = "",
    origin: str | None = None,
    on_messages: OnMessages,
    timeout: float = 10.0,
) -> tuple[WsProtocol, dict[str, list[str]]]:
    """Open `url` (ws://host:port/path?query) and return the protocol and the 101's headers."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    key = base64.b64encode(os.urandom(16))
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {parts.netloc}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key.decode()}",
        "Sec-WebSocket-Version: 13",
        f"Origin: {origin or f'http://{parts.netloc}'}",
    ]
    if cookie:
        lines.append(f"Cookie: {cookie}")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    loop = asyncio.get_running_loop()
    protocol = WsProtocol(request, key, on_messages)
    try:
        await asyncio.wait_for(loop.create_connection(lambda: protocol, host, port), timeout)
        headers = await asyncio.wait_for(asyncio.shield(protocol.opened), timeout)
    except BaseException:
        protocol.abort()
        raise
    return protocol, headers


def set_cookies(headers: dict[str, list[str]]) -> dict[str, str]:
    """name -> value of every Set-Cookie in a response."""
    cookies = {}
    for value in headers.get("set-cookie", []):
        name, _, rest = value.partition("=")
        cookies[name.strip()] = rest.split(";", 1)[0].strip()
    return cookies


class HttpConnection:
    """One keep-alive HTTP/1.1 connection, one request at a time (for publishing)."""

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.netloc = parts.netloc
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(
        self, method: str, path: str, *, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        lines = [
            f"{method} {path} HTTP/1.1",
            f"Host: {self.netloc}",
            f"Content-Length: {len(body)}",
        ]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        try:
            head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            status = int(head.split(" ", 2)[1])
            fields = {}
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                fields[name.strip().lower()] = value.strip()
            if "content-length" in fields:
                content = await self.reader.readexactly(int(fields["content-length"]))
            elif fields.get("transfer-encoding", "").lower() == "chunked":
                content = await self._read_chunked()
            else:
                content = await self.reader.read()
        except BaseException:
            await self.close()
            raise
        if fields.get("connection", "").lower() == "close":
            await self.close()
        return status, content

    async def _read_chunked(self) -> bytes:
        assert self.reader is not None
        chunks: list[bytes] = []
        while True:
            size = int((await self.reader.readline()).split(b";")[0], 16)
            chunk = await self.reader.readexactly(size + 2)
            if not size:
                return b"".join(chunks)
            chunks.append(chunk[:-2])

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except (ConnectionError, OSError):
                pass
            self.writer = self.reader = None
