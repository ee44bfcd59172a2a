"""Session.send_now, the write a frame takes when it is the one the socket waits for: no queue,
no writer task. What it takes and what it leaves to the ordered slow path."""

from __future__ import annotations

from typing import Any

import pytest

from realtime.delivery.cursor import Cursor
from realtime.delivery.session import Session
from realtime.transport import WithoutBacklog


class RecordingWriter(WithoutBacklog):
    """Writes at once, into a list (the Daphne writer's write_now, without a socket)."""

    name = "recording"

    def __init__(self) -> None:
        self.frames: list[str] = []

    def is_open(self) -> bool:
        return True

    async def accept(self) -> None:
        return None

    def write_now(self, frame: str) -> bool:  # type: ignore[override]
        self.frames.append(frame)
        return True

    async def write(self, text: str) -> None:
        self.frames.append(text)

    async def close(self, code: int, reason: str = "") -> None:
        return None


def a_session(**cursors: Cursor) -> tuple[Session, RecordingWriter]:
    writer = RecordingWriter()
    session = Session(user=object(), writer=writer, layer=None, channel_name="c1")
    session.cursors.update({name.replace("_", ":"): c for name, c in cursors.items()})
    session.ready = True
    return session, writer


@pytest.mark.parametrize(
    ("cursor", "seq", "epoch", "taken"),
    [
        (Cursor("e1", 4), 5, "e1", True),  # the next frame
        (Cursor(None, 0), 1, "e1", True),  # the stream's first frame since the socket opened
        (Cursor(None, 0), 2, "e1", False),  # its first frame went missing: a gap to repair
        (Cursor(None, 3), 1, "e1", False),  # a position to give up: the slow path tells the client
        (Cursor("e0", 9), 1, "e1", False),  # the stream started over: the slow path tells it
        (Cursor("e1", 4), 4, "e1", False),  # a duplicate
    ],
)
def test_only_the_frame_the_socket_waits_for_is_written_at_once(
    cursor: Cursor, seq: int, epoch: str, taken: bool
) -> None:
    before = (cursor.epoch, cursor.last)
    session, writer = a_session(room_1=cursor)
    assert session.send_now("room:1", seq, epoch, "frame") is taken
    assert writer.frames == (["frame"] if taken else [])
    # Taken, the cursor stands on the frame; left, it is the slow path's to move.
    assert (cursor.epoch, cursor.last) == ((epoch, seq) if taken else before)


def test_a_streams_first_frames_go_out_at_once_and_in_order() -> None:
    session, writer = a_session(room_1=Cursor(None, 0))
    sent: list[Any] = [session.send_now("room:1", seq, "e1", f"f{seq}") for seq in (1, 2, 3)]
    assert sent == [True, True, True] and writer.frames == ["f1", "f2", "f3"]
    assert session.task is None and not session.queue  # no writer task, nothing queued
