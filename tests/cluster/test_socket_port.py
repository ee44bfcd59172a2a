"""The socket port (realtime/transport/socket_port.py) against frames no well-behaved client
sends, written byte by byte through HAProxy: each breach of RFC 6455 closes only its own socket,
with the RFC's code, and a witness socket on the same replica keeps receiving."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
from typing import Any

from devtools.cluster import Cluster
from tests.cluster.helpers import sessions_for
from tests.cluster.test_hostile_clients import Witness, health, wait_health
from tests.support.clients import origin_of

REPLICA = "d1"


def frame(
    opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True, rsv: int = 0
) -> bytes:
    """One client frame, as RFC 6455 lays it out (masked, as clients must, unless told not)."""
    head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode])
    length = len(payload)
    bit = 0x80 if mask else 0
    if length < 126:
        head += bytes([bit | length])
    elif length < 1 << 16:
        head += bytes([bit | 126]) + struct.pack("!H", length)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", length)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def big_frame(opcode: int, size: int, *, fin: bool) -> bytes:
    """A masked frame of `size` zero bytes (a zero key: the payload stays as it is)."""
    head = bytes([(0x80 if fin else 0) | opcode, 0x80 | 127]) + struct.pack("!Q", size)
    return head + b"\x00\x00\x00\x00" + b"a" * size


class RawSocket:
    """A WebSocket spoken by hand: the handshake, then frames read and written as bytes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(
        cls, host: str, port: int, *, cookie: str, origin: str, then: bytes = b""
    ) -> tuple[RawSocket, bytes]:
        """Connect and send the handshake (and `then` in the same write); the answer's head."""
        reader, writer = await asyncio.open_connection(host, port)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET /ws/ HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Origin: {origin}\r\nCookie: {cookie}\r\n\r\n"
        ).encode()
        writer.write(request + then)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        return cls(reader, writer), head

    async def read_frame(self) -> tuple[int, bytes]:
        first, second = await asyncio.wait_for(self.reader.readexactly(2), 10)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
        return first & 0x0F, await asyncio.wait_for(self.reader.readexactly(length), 10)

    async def read_json(self) -> dict[str, Any]:
        opcode, payload = await self.read_frame()
        assert opcode == 1, (opcode, payload[:80])
        return json.loads(payload)  # type: ignore[no-any-return]

    async def close_code(self) -> int:
        """Read until the server's close frame: its code."""
        while True:
            opcode, payload = await self.read_frame()
            if opcode == 8:
                return int(struct.unpack("!H", payload[:2])[0])

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def end(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass


def proxy(cluster: Cluster) -> tuple[str, int]:
    host, _, port = cluster.url.removeprefix("http://").rpartition(":")
    return host, int(port)


async def test_protocol_breaches_close_with_the_rfcs_code_and_the_witness_hears(
    cluster: Cluster,
) -> None:
    assert cluster.socket_binds, "the runner starts replicas with their socket ports"
    witness = await Witness.on(cluster, "rawport")
    before = wait_health(cluster, lambda h: True, "a first look")["connections"]
    key = sessions_for(cluster, 1, "rawport-rogue")["rawport-rogue0"]
    cookie, origin = f"sessionid={key}; SERVERID={REPLICA}", origin_of(cluster.url)
    text = json.dumps({"type": "echo", "payload": 1}).encode()
    breaches = [
        ("an unmasked frame", frame(1, text, mask=False), 1002),
        ("text that is not UTF-8", frame(1, b'{"type": "echo", "payload": "\xff\xfe"}'), 1007),
        ("a reserved bit", frame(1, text, rsv=2), 1002),
        ("an unknown opcode", frame(3, text), 1002),
        ("a fragmented ping", frame(9, b"p", fin=False), 1002),
        ("a continuation of nothing", frame(0, text), 1002),
        ("a control frame of 126 bytes", frame(9, b"p" * 126), 1002),
        ("a bad close code", frame(8, struct.pack("!H", 1005)), 1002),
        (
            "1.5 MiB in three fragments",
            big_frame(1, 512 * 1024, fin=False)
            + big_frame(0, 512 * 1024, fin=False)
            + big_frame(0, 512 * 1024, fin=True),
            1009,
        ),
    ]
    for what, data, code in breaches:
        rogue, head = await RawSocket.open(*proxy(cluster), cookie=cookie, origin=origin)
        assert head.startswith(b"HTTP/1.1 101"), head
        hello = await rogue.read_json()
        assert hello["type"] == "hello" and hello["replica"] == REPLICA, hello
        rogue.send(data)
        assert await rogue.close_code() == code, what
        await rogue.end()
        await witness.still_hears()
    wait_health(cluster, lambda h: h["connections"] == before, f"{before} connections again")
    assert health(cluster)["stats"]["internal_errors"] == 0
    await witness.socket.close()


async def test_a_ping_is_answered_and_frames_sent_with_the_handshake_are_served_after_it(
    cluster: Cluster,
) -> None:
    key = sessions_for(cluster, 1, "rawport-eager")["rawport-eager0"]
    echo = json.dumps({"type": "echo", "id": "early", "payload": "before the 101"}).encode()
    eager, head = await RawSocket.open(
        *proxy(cluster),
        cookie=f"sessionid={key}; SERVERID={REPLICA}",
        origin=origin_of(cluster.url),
        then=frame(1, echo[:20], fin=False) + frame(0, echo[20:]),  # fragmented, too
    )
    assert head.startswith(b"HTTP/1.1 101"), head
    assert (await eager.read_json())["type"] == "hello"
    answer = await eager.read_json()
    assert answer == {
        "type": "echo",
        "replica": REPLICA,
        "payload": "before the 101",
        "id": "early",
    }
    eager.send(frame(9, b"are you there"))
    assert await eager.read_frame() == (10, b"are you there")
    eager.send(frame(8, struct.pack("!H", 1000) + b"bye"))
    assert await eager.close_code() == 1000
    assert await asyncio.wait_for(eager.reader.read(), 10) == b""  # and the server hangs up
    await eager.end()


async def test_requests_that_are_not_websocket_handshakes_are_answered_and_closed_by_the_port(
    cluster: Cluster,
) -> None:
    host, _, port = cluster.socket_binds[REPLICA].rpartition(":")
    key = base64.b64encode(os.urandom(16)).decode()
    attempts = [
        (b"GET /ws/ HTTP/1.1\r\nHost: x\r\n\r\n", b"HTTP/1.1 426 "),  # no upgrade asked
        (  # an upgrade without its key
            b"GET /ws/ HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n",
            b"HTTP/1.1 400 ",
        ),
        (  # a header line over websockets' 8 KiB limit
            f"GET /ws/ HTTP/1.1\r\nHost: x\r\nSec-WebSocket-Key: {key}\r\n".encode()
            + b"X-Big: "
            + b"b" * 9000
            + b"\r\n\r\n",
            b"HTTP/1.1 431 ",
        ),
        (b"\x16\x03\x01 not HTTP at all\r\n\r\n", b""),  # closed without an answer
    ]
    for request, answer in attempts:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(request)
        got = await asyncio.wait_for(reader.read(), 10)  # read to the end: the port closes
        assert got.startswith(answer) and (answer or got == b""), (request[:40], got[:80])
        writer.close()
