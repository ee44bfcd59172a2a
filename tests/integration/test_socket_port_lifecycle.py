"""The socket port's timers and its application's ends (realtime/transport/socket_port.py), with
small ASGI applications on a loopback port of this process: a handshake that stalls, an
application that never accepts, fails or never returns, a client that never closes back."""

from __future__ import annotations

import asyncio
import base64
import gc
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from devtools.cluster import free_port
from realtime.lifetimes import LIVE
from realtime.transport import inbox, socket_port
from realtime.transport.socket_port import SocketPort
from tests.integration.conftest import eventually


@pytest.fixture(autouse=True)
def short_timers(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HANDSHAKE_SECS", "CONNECT_SECS", "CLOSE_SECS", "APP_CLOSE_SECS", "LINGER_SECS"):
        monkeypatch.setattr(socket_port, name, 0.3)


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Any], Any]]:
    """Start a socket port for an application; its URL and the port object."""
    servers: list[asyncio.Server] = []

    async def start(application: Any) -> tuple[str, SocketPort]:
        port = SocketPort(application, proxy_headers=False)
        bind = f"127.0.0.1:{free_port()}"
        servers.append(await port.serve(bind))
        return f"ws://{bind}/ws/", port

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


async def test_an_application_that_never_accepts_is_answered_403(serve: Any) -> None:
    told: list[dict[str, Any]] = []

    async def silent(scope: dict[str, Any], receive: Any, send: Any) -> None:
        told.append(await receive())
        told.append(await receive())  # what comes once the port gave up on it

    url, _ = await serve(silent)
    with pytest.raises(InvalidStatus) as refused:
        await websockets.connect(url, open_timeout=5)
    assert refused.value.response.status_code == 403
    await _until(lambda: len(told) == 2)
    assert told == [{"type": "websocket.connect"}, {"type": "websocket.disconnect", "code": 1006}]


async def test_a_request_head_that_never_ends_is_dropped(serve: Any) -> None:
    async def unused(scope: dict[str, Any], receive: Any, send: Any) -> None:
        raise AssertionError("no application for a handshake that never came")

    url, _ = await serve(unused)
    host, port = url.removeprefix("ws://").removesuffix("/ws/").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /ws/ HTTP/1.1\r\nHost: x\r\n")  # and nothing more
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_an_application_that_fails_is_500_before_accept_and_1011_after(serve: Any) -> None:
    async def fails_at_once(scope: dict[str, Any], receive: Any, send: Any) -> None:
        raise RuntimeError("broken before accept")

    url, _ = await serve(fails_at_once)
    with pytest.raises(InvalidStatus) as failed:
        await websockets.connect(url, open_timeout=5)
    assert failed.value.response.status_code == 500

    async def fails_later(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": "hello"})
        raise RuntimeError("broken after accept")

    url, _ = await serve(fails_later)
    async with websockets.connect(url, open_timeout=5) as client:
        assert await client.recv() == "hello"
        with pytest.raises(ConnectionClosed) as closed:
            await client.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011


async def test_an_application_that_ignores_its_disconnect_is_cancelled(serve: Any) -> None:
    cancelled = asyncio.Event()

    async def stubborn(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        try:
            await asyncio.Event().wait()  # never set: it never reads its disconnect
        except asyncio.CancelledError:
            cancelled.set()
            raise

    url, port = await serve(stubborn)
    async with websockets.connect(url, open_timeout=5):
        pass
    await asyncio.wait_for(cancelled.wait(), 5)
    await _until(lambda: not port.connections)


async def test_a_client_that_never_answers_our_close_is_cut_off(serve: Any) -> None:
    async def closes(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 4000})
        await receive()

    url, port = await serve(closes)
    host, number = url.removeprefix("ws://").removesuffix("/ws/").split(":")
    reader, writer = await asyncio.open_connection(host, int(number))
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET /ws/ HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    data = await asyncio.wait_for(reader.read(), 5)  # never answers the close frame
    assert data.startswith(b"HTTP/1.1 101") and data.endswith(b"\x88\x02\x0f\xa0")  # 4000
    await _until(lambda: not port.connections)
    writer.close()


@pytest.mark.parametrize("opcode", [0x81, 0x89], ids=["text", "ping"])
async def test_too_many_frames_before_the_accept_end_the_connection(
    serve: Any, opcode: int
) -> None:
    release = asyncio.Event()

    async def slow_to_accept(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await release.wait()

    url, port = await serve(slow_to_accept)
    host, number = url.removeprefix("ws://").removesuffix("/ws/").split(":")
    reader, writer = await asyncio.open_connection(host, int(number))
    key = base64.b64encode(os.urandom(16)).decode()
    frame = bytes([opcode, 0x80 | 2]) + b"\x00\x00\x00\x00" + b"hi"
    writer.write(
        f"GET /ws/ HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        + frame * (socket_port.MAX_EARLY_FRAMES + 1)
    )
    assert await asyncio.wait_for(reader.read(), 5) == b""  # dropped, never answered
    release.set()
    await _until(lambda: not port.connections)
    writer.close()


async def test_every_connection_object_is_released_however_it_ended(serve: Any) -> None:
    async def echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        while (message := await receive())["type"] == "websocket.receive":
            await send({"type": "websocket.send", "text": message["text"]})

    url, port = await serve(echo)
    gc.collect()  # what earlier tests left in cycles
    before = LIVE["SocketPortConnection"]
    for n in range(10):
        client = await websockets.connect(url, open_timeout=5)
        await client.send(f"m{n}")
        assert await client.recv() == f"m{n}"
        if n % 2:
            await client.close()
        else:
            client.transport.abort()
    await _until(lambda: not port.connections)

    def released() -> bool:
        gc.collect()  # once each application has returned after its disconnect
        return LIVE["SocketPortConnection"] == before

    await _until(released)


async def _until(condition: Callable[[], bool]) -> None:
    async def holds() -> bool:
        return condition()

    await eventually(holds, timeout=5)


async def test_a_flood_the_application_has_not_read_waits_in_tcp_and_arrives_whole(
    serve: Any,
) -> None:
    """A client sends far more than its application takes: the port stops reading it (the
    inbox holds at most its limit), another socket is served meanwhile, and once the
    application reads, every frame arrives, in order."""
    reading = asyncio.Event()
    got: dict[str, list[str]] = {}

    async def slow(scope: dict[str, Any], receive: Any, send: Any) -> None:
        name = scope["query_string"].decode()
        got[name] = []
        await receive()
        await send({"type": "websocket.accept"})
        if name == "flooder":
            await reading.wait()
        while (message := await receive())["type"] == "websocket.receive":
            got[name].append(message["text"])
            if name == "witness":
                await send({"type": "websocket.send", "text": "echo " + message["text"]})

    url, port = await serve(slow)
    frame = "x" * 10_000
    count = 2_000  # 20 MB
    async with websockets.connect(url + "?flooder", open_timeout=5, max_queue=None) as flooder:
        sending = asyncio.ensure_future(
            _send_all(flooder, [f"{n:05d}{frame}" for n in range(count)])
        )
        [conn] = port.connections
        await _until(lambda: conn.inbox is not None and conn.inbox.paused)
        async with websockets.connect(url + "?witness", open_timeout=5) as witness:
            for n in range(5):
                await witness.send(f"ping {n}")
                assert await asyncio.wait_for(witness.recv(), 2) == f"echo ping {n}"
        assert not sending.done(), "the flooder's writes wait: its frames are not read"
        # Held: the limit, and at most what the read that crossed it brought (asyncio reads
        # 256 KiB at a time), of the 20 MB sent.
        assert conn.inbox is not None and conn.inbox.items is not None
        assert len(conn.inbox.items) < inbox.INBOX_MAX_MESSAGES + 30
        assert conn.inbox.held < inbox.INBOX_MAX_BYTES + 256 * 1024
        reading.set()
        await asyncio.wait_for(sending, 30)

        async def all_read() -> bool:
            return len(got["flooder"]) == count

        await eventually(all_read, timeout=30)
    assert [int(text[:5]) for text in got["flooder"]] == list(range(count))
    assert all(text[5:] == frame for text in got["flooder"])


async def _send_all(client: Any, texts: list[str]) -> None:
    for text in texts:
        await client.send(text)


async def test_an_application_that_fails_with_frames_unread_still_closes_cleanly(
    serve: Any,
) -> None:
    fail = asyncio.Event()

    async def gives_up(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await fail.wait()  # never reads its frames
        raise RuntimeError("broken with frames unread")

    url, port = await serve(gives_up)
    async with websockets.connect(url, open_timeout=5, max_queue=None) as client:
        sending = asyncio.ensure_future(_send_all(client, ["y" * 10_000] * 500))
        [conn] = port.connections
        await _until(lambda: conn.inbox is not None and conn.inbox.paused)
        fail.set()
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(client.recv(), 5)
        sending.cancel()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
    await _until(lambda: not port.connections)
    # The port read the client again once the application was gone: it got the client's
    # answer to its close (not a connection cut off after CLOSE_SECS).
    assert conn.ws.close_rcvd is not None and conn.ws.close_rcvd.code == 1011


async def test_a_ping_sent_with_the_handshake_is_answered_after_the_101(serve: Any) -> None:
    """A client that does not wait for the answer (RFC 6455 4.1 says it must) still reads HTTP
    first: websockets answers the ping at once, and the port holds that pong for the 101."""
    release = asyncio.Event()

    async def slow_to_accept(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await release.wait()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": "hello"})
        await receive()

    url, port = await serve(slow_to_accept)
    host, number = url.removeprefix("ws://").removesuffix("/ws/").split(":")
    reader, writer = await asyncio.open_connection(host, int(number))
    key = base64.b64encode(os.urandom(16)).decode()
    ping = bytes([0x89, 0x80 | 4]) + b"\x00\x00\x00\x00" + b"ping"
    writer.write(
        f"GET /ws/ HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        + ping
    )
    await _until(lambda: any(c.ws.writes for c in port.connections))  # the pong, held
    release.set()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101 ")
    frames = await asyncio.wait_for(reader.readexactly(2 + 4 + 2 + 5), 5)
    assert frames == b"\x8a\x04ping" + b"\x81\x05hello"
    writer.close()
    await _until(lambda: not port.connections)
