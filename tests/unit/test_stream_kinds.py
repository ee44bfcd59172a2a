"""Who reads a stream of an app's kind is that app's check (realtime/streams.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from chat.access import room_can_read
from realtime import streams
from realtime.selectors import StreamDenied, stream_check_readable


def test_the_chat_app_checks_who_reads_room_streams() -> None:
    assert streams.reader("room") is room_can_read


def test_a_room_stream_is_refused_when_no_app_checks_rooms(monkeypatch: Any) -> None:
    monkeypatch.setattr(streams, "_readers", {})
    user: Any = SimpleNamespace(pk=1, is_staff=True)
    with pytest.raises(StreamDenied) as denied:
        stream_check_readable(user=user, stream="room:lobby")
    assert denied.value.code == "bad_stream"
    stream_check_readable(user=user, stream="user:1")  # the core's own kinds need no app


def test_the_registered_check_decides_and_gets_the_key(monkeypatch: Any) -> None:
    seen = []

    def can_read(user: Any, key: str) -> None:
        seen.append(key)
        if key != "open":
            raise StreamDenied("unknown_room", "no")

    monkeypatch.setattr(streams, "_readers", {"room": can_read})
    user: Any = SimpleNamespace(pk=1, is_staff=False)
    stream_check_readable(user=user, stream="room:open")
    with pytest.raises(StreamDenied):
        stream_check_readable(user=user, stream="room:shut")
    assert seen == ["open", "shut"]


def test_a_kind_has_one_check(monkeypatch: Any) -> None:
    monkeypatch.setattr(streams, "_readers", {"room": room_can_read})
    streams.register("room", room_can_read)  # the same one again (ready() twice): fine
    with pytest.raises(ValueError, match="already checked"):
        streams.register("room", lambda user, key: None)
