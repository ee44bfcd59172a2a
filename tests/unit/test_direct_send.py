"""direct_send's write coalescing: one send() per socket per loop turn, and a busy socket's
frames held together for at most SOCKET_WRITE_HOLD_MS."""

from __future__ import annotations

import asyncio
import json

import pytest
from autobahn.exception import Disconnected
from autobahn.websocket.protocol import WebSocketProtocol

from realtime.transport import SocketClosed
from realtime.transport import daphne as direct_send

pytestmark = pytest.mark.unit


class FakeWire:
    """What direct_send uses of Daphne's protocol. Its transport is not Twisted's, so every
    write goes through sendData, which records it."""

    STATE_OPEN = WebSocketProtocol.STATE_OPEN
    write_frames = None  # as on our Daphne protocol: the frames go through Twisted

    def __init__(self) -> None:
        self.state = self.STATE_OPEN
        self.send_queue: list[bytes] = []
        self.transport = object()
        self.writes: list[list[str]] = []
        self.written = asyncio.Event()

    def sendData(self, data: bytes) -> None:  # Autobahn's name
        self.writes.append(texts_of(data))
        self.written.set()


def texts_of(data: bytes) -> list[str]:
    """The payloads of the unmasked text frames in `data` (all shorter than 126 bytes here)."""
    texts = []
    while data:
        assert data[0] == 0x81 and data[1] < 126
        texts.append(data[2 : 2 + data[1]].decode())
        data = data[2 + data[1] :]
    return texts


def frame(n: int) -> str:
    return json.dumps({"type": "message", "seq": n})


@pytest.fixture(autouse=True)
def nothing_left_queued(monkeypatch):
    monkeypatch.setattr(direct_send, "FAN_OUT_SOCKETS", 1)  # one socket counts as a fan-out here
    yield
    # The module's queues outlive a test's event loop: frames still held are let go.
    assert not direct_send._on_turn
    direct_send._held.clear()
    direct_send._pending.clear()
    direct_send._turn_scheduled = False


async def next_turn() -> None:
    """Return once the callbacks already scheduled (a flush) have run: one turn of the loop."""
    turned = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_soon(turned.set_result, None)
    await turned


async def test_frames_queued_in_one_turn_go_out_in_one_write_in_order(settings) -> None:
    settings.SOCKET_WRITE_HOLD_MS = 0
    wire, other = FakeWire(), FakeWire()
    for n in (1, 2, 3):
        direct_send.write_frame(wire, frame(n))
    direct_send.write_frame(other, frame(9))
    assert wire.writes == []  # nothing is written before the turn ends
    await next_turn()
    assert wire.writes == [[frame(1), frame(2), frame(3)]]
    assert other.writes == [[frame(9)]]


async def test_a_busy_sockets_frames_are_held_together_for_at_most_the_hold(settings) -> None:
    settings.SOCKET_WRITE_HOLD_MS = 40
    wire = FakeWire()
    loop = asyncio.get_running_loop()
    direct_send.write_frame(wire, frame(1))
    await next_turn()
    assert wire.writes == [[frame(1)]]  # an idle socket's frame is not held
    wire.written.clear()
    queued_at = loop.time()
    direct_send.write_frame(wire, frame(2))  # written to just now: busy
    await next_turn()
    direct_send.write_frame(wire, frame(3))
    await next_turn()
    assert wire.writes == [[frame(1)]]
    async with asyncio.timeout(1):
        await wire.written.wait()
    assert wire.writes == [[frame(1)], [frame(2), frame(3)]]
    assert 0.03 <= loop.time() - queued_at < 0.5


async def test_a_frame_waits_only_until_a_hold_after_the_sockets_last_write(settings) -> None:
    settings.SOCKET_WRITE_HOLD_MS = 1000
    wire, fresh = FakeWire(), FakeWire()
    loop = asyncio.get_running_loop()
    wire.fanned_out_at = loop.time() - 0.95  # written to 950 ms ago: 50 ms of hold left
    fresh.fanned_out_at = loop.time()
    queued_at = loop.time()
    direct_send.write_frame(wire, frame(1))
    direct_send.write_frame(fresh, frame(2))
    async with asyncio.timeout(0.5):
        await wire.written.wait()
    assert wire.writes == [[frame(1)]]
    assert loop.time() - queued_at >= 0.04
    assert fresh.writes == []  # its hold has most of a second to go
    assert len(direct_send._held) == 1


async def test_only_a_fan_out_makes_a_socket_busy(settings, monkeypatch) -> None:
    settings.SOCKET_WRITE_HOLD_MS = 1000
    monkeypatch.setattr(direct_send, "FAN_OUT_SOCKETS", 3)
    fan_out = [FakeWire() for _ in range(3)]
    for wire in fan_out:
        direct_send.write_frame(wire, frame(1))
    await next_turn()
    pushed = FakeWire()
    direct_send.write_frame(pushed, frame(1))  # a write to one socket: no fan-out
    await next_turn()
    for wire in [*fan_out, pushed]:
        direct_send.write_frame(wire, frame(2))
    await next_turn()
    assert pushed.writes == [[frame(1)], [frame(2)]]
    assert all(wire.writes == [[frame(1)]] for wire in fan_out)  # frame 2 is held


async def test_no_hold_when_it_is_zero(settings) -> None:
    settings.SOCKET_WRITE_HOLD_MS = 0
    wire = FakeWire()
    for n in (1, 2):
        direct_send.write_frame(wire, frame(n))
        await next_turn()
    assert wire.writes == [[frame(1)], [frame(2)]]


async def test_another_write_first_flushes_the_held_frames(settings) -> None:
    settings.SOCKET_WRITE_HOLD_MS = 1000
    wire = FakeWire()
    direct_send.write_frame(wire, frame(1))
    await next_turn()
    direct_send.write_frame(wire, frame(2))  # held for up to a second
    direct_send.flush_socket(wire)  # what the consumer does before any other send
    assert wire.writes == [[frame(1)], [frame(2)]]
    for deadline in list(direct_send._held):
        direct_send.flush_held(deadline)  # the timer finds nothing left to write
    assert wire.writes == [[frame(1)], [frame(2)]]


async def test_frames_for_a_socket_closed_meanwhile_are_dropped(settings) -> None:
    settings.SOCKET_WRITE_HOLD_MS = 0
    wire = FakeWire()
    direct_send.write_frame(wire, frame(1))
    wire.state = WebSocketProtocol.STATE_CLOSED
    await next_turn()
    assert wire.writes == []


class FullSocket:
    """A kernel socket whose send buffer is full: it takes nothing."""

    def send(self, data: bytes) -> int:
        raise BlockingIOError


class TwistedLikeTransport:
    """The parts of Twisted's TCP transport that direct_send reads, with an unbounded buffer."""

    def __init__(self) -> None:
        self.socket = FullSocket()
        self.dataBuffer = b""
        self._tempDataLen = 0
        self.offset = 0
        self.connected, self.disconnecting, self._writeDisconnected, self.TLS = 1, 0, 0, False

    def write(self, data: bytes) -> None:
        self.dataBuffer += data


async def test_a_socket_is_backlogged_past_the_limit_and_drained_once_its_buffer_empties(
    settings,
) -> None:
    settings.SOCKET_WRITE_HOLD_MS = 0
    settings.SOCKET_BACKLOG_MAX_BYTES = 64 * 1024
    wire = FakeWire()
    wire.transport = TwistedLikeTransport()
    wire.sendData = wire.transport.write  # Autobahn's sendData writes to the transport
    big = "y" * 20_000
    for _ in range(3):
        direct_send.write_frame(wire, big)
        await next_turn()
    assert not direct_send.backlogged(wire)  # 60 KB waiting: under the limit
    direct_send.write_frame(wire, big)
    await next_turn()
    assert direct_send.unsent_bytes(wire) > 64 * 1024
    assert direct_send.backlogged(wire)

    waiter = asyncio.ensure_future(direct_send.drained(wire))
    await next_turn()
    assert not waiter.done()
    wire.transport.offset = len(wire.transport.dataBuffer) - 10_000  # the kernel took most
    async with asyncio.timeout(1):
        await waiter
    assert not direct_send.backlogged(wire)


async def test_a_socket_whose_write_fails_does_not_cost_the_others_their_frames(settings) -> None:
    settings.SOCKET_WRITE_HOLD_MS = 0
    broken, after = FakeWire(), FakeWire()

    def fail(data: bytes) -> None:
        raise RuntimeError("transport gone wrong")

    broken.sendData = fail
    direct_send.write_frame(broken, frame(1))
    direct_send.write_frame(after, frame(1))
    await next_turn()
    assert after.writes == [[frame(1)]]
    del broken.sendData  # the transport works again
    direct_send.write_frame(broken, frame(2))
    await next_turn()
    assert broken.writes == [[frame(2)]]  # nothing of the failed write was left queued


async def test_the_writers_other_frames_go_out_in_line_with_the_fast_ones(settings) -> None:
    settings.SOCKET_WRITE_HOLD_MS = 0
    wire, through_daphne = FakeWire(), []

    async def send(message: dict) -> None:  # type: ignore[type-arg]
        through_daphne.append(message)

    writer = direct_send.DaphneWriter(wire, send)
    assert writer.write_now(frame(1))
    await writer.write(frame(2))  # a hello, an error, a replayed frame
    assert writer.write_now(frame(3))
    await next_turn()
    assert wire.writes == [[frame(1), frame(2), frame(3)]]  # one write, in order
    assert through_daphne == []


async def test_a_write_to_a_socket_that_cannot_take_it_now_goes_through_daphne(
    settings, monkeypatch
) -> None:
    settings.SOCKET_WRITE_HOLD_MS = 0
    wire, through_daphne = FakeWire(), []

    async def send(message: dict) -> None:  # type: ignore[type-arg]
        if wire.state != wire.STATE_OPEN:
            raise Disconnected()
        through_daphne.append(message)

    writer = direct_send.DaphneWriter(wire, send)
    # Twisted holds more for the socket than the limit: backlogged, no fast write.
    wire.behind = True
    backlog = settings.SOCKET_BACKLOG_MAX_BYTES + 1
    monkeypatch.setattr(direct_send, "unsent_bytes", lambda protocol: backlog)
    await writer.write(frame(1))
    assert through_daphne == [{"type": "websocket.send", "text": frame(1)}]
    assert wire.writes == []
    wire.state = WebSocketProtocol.STATE_CLOSED  # closed: Daphne says so, as SocketClosed
    with pytest.raises(SocketClosed):
        await writer.write(frame(2))
