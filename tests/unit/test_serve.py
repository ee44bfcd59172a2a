"""The replica entry point's changes to Daphne: the input queue, protocol options, lazy logs."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from realtime.transport.inbox import INBOX_MAX_BYTES, INBOX_MAX_MESSAGES
from realtime.transport.server import (
    ClosingWebSocketFactory,
    Inbox,
    LeanServer,
    LeanWebSocketProtocol,
    WhenLogged,
)

pytestmark = pytest.mark.unit


async def test_the_inbox_hands_over_items_in_order_whether_put_or_get_comes_first() -> None:
    inbox = Inbox()
    inbox.put_nowait(1)
    inbox.put_nowait(2)
    assert [await inbox.get(), await inbox.get()] == [1, 2]
    # The puts run once get() is waiting (it suspends at once: nothing is queued).
    loop = asyncio.get_running_loop()
    loop.call_soon(inbox.put_nowait, 3)
    loop.call_soon(inbox.put_nowait, 4)
    async with asyncio.timeout(1):  # in this task: get() is waiting before the puts run
        assert await inbox.get() == 3
    assert await inbox.get() == 4


async def test_an_item_put_after_the_reader_was_cancelled_is_kept() -> None:
    inbox = Inbox()
    with pytest.raises(TimeoutError):  # the reader waits, and is cancelled
        await asyncio.wait_for(inbox.get(), 0.01)
    inbox.put_nowait("disconnect")
    assert await asyncio.wait_for(inbox.get(), 1) == "disconnect"


class Reads:
    """A connection's reads, as Twisted's transports pause and resume them."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def pauseProducing(self) -> None:  # Twisted's name
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.calls.append("resume")


async def returns_at_once() -> None:
    """An application that ends as soon as it starts."""


class Protocol:
    """Daphne's protocol of one connection, as create_application sees it."""

    def __init__(self) -> None:
        self.transport = Reads()


async def test_a_websockets_inbox_stops_its_reads_at_its_limit_and_resumes_once_emptied() -> None:
    server = SimpleNamespace(
        connections={},
        application=lambda **_: returns_at_once(),
        fast_path=False,
        handle_reply=lambda *_: None,
    )
    protocol = Protocol()
    server.connections[protocol] = {}
    inbox = LeanServer.create_application(server, protocol, {"type": "websocket"})  # type: ignore[arg-type]
    assert inbox is not None
    frames = [{"type": "websocket.receive", "text": str(n)} for n in range(INBOX_MAX_MESSAGES)]
    for frame in frames[:-1]:
        inbox.put_nowait(frame)
    assert protocol.transport.calls == []
    inbox.put_nowait(frames[-1])
    assert protocol.transport.calls == ["pause"]
    inbox.put_nowait({"type": "websocket.disconnect", "code": 1006})  # still queued, not lost
    taken = [await inbox.get() for _ in range(INBOX_MAX_MESSAGES)]
    assert taken == frames and protocol.transport.calls == ["pause"]
    assert await inbox.get() == {"type": "websocket.disconnect", "code": 1006}
    assert protocol.transport.calls == ["pause", "resume"]
    # A megabyte in a few frames counts as much as many small ones.
    inbox.put_nowait({"type": "websocket.receive", "bytes": b"x" * INBOX_MAX_BYTES})
    assert protocol.transport.calls == ["pause", "resume", "pause"]
    inbox.put_nowait({"type": "websocket.receive", "text": "left unread"})
    await server.connections[protocol]["application_instance"]
    # The application ended with its queue full: the queue is dropped, the connection read again.
    assert protocol.transport.calls == ["pause", "resume", "pause", "resume"]
    assert inbox.items is None and inbox.held == 0


def test_protocol_options_live_on_the_protocol_class_not_on_each_connection() -> None:
    class Server:
        pass

    factory = ClosingWebSocketFactory(Server)
    factory.setProtocolOptions(maxFramePayloadSize=12345, autoPingTimeout=7)
    assert factory.protocol is LeanWebSocketProtocol
    assert LeanWebSocketProtocol.maxFramePayloadSize == 12345
    assert LeanWebSocketProtocol.failByDrop is False  # the close-frame change still applies
    protocol = LeanWebSocketProtocol()
    assert all(hasattr(protocol, name) for name in LeanWebSocketProtocol.CONFIG_ATTRS)
    assert "maxFramePayloadSize" not in vars(protocol)
    # Callable options are called as the factory's are, not as methods of the protocol.
    offers = [object()]
    accepted = factory.perMessageCompressionAccept(offers)
    assert protocol.perMessageCompressionAccept(offers) == accepted


def test_a_log_argument_is_rendered_only_when_formatted() -> None:
    calls: list[object] = []

    def render(value: object) -> str:
        calls.append(value)
        return f"<{value}>"

    argument = WhenLogged(render, "x")
    assert calls == []
    assert f"{argument}" == "<x>" and str(argument) == "<x>"
    assert calls == ["x", "x"]
