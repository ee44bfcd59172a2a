"""The replica entry point's changes to Daphne: the input queue, protocol options, lazy logs."""

from __future__ import annotations

import asyncio

import pytest

from realtime.transport.server import (
    ClosingWebSocketFactory,
    Inbox,
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
