"""Who reads and publishes to a stream of an app's kind is that kind's registered check
(realtime/streams.py): sync or async, True to allow, anything else refuses."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from chat.access import room_can_read
from realtime import streams
from realtime.groups import InvalidStreamName, group_for_stream
from realtime.selectors import StreamDenied, stream_check_readable, stream_check_writable

USER: Any = SimpleNamespace(pk=1, is_staff=False)


@pytest.fixture
def order_kind() -> Iterator[list[str]]:
    """order:<digits>: readable when the number is even; publishable when it ends in 0."""
    seen: list[str] = []

    def can_read(user: Any, stream: str) -> bool:
        seen.append(stream)
        return int(stream.partition(":")[2]) % 2 == 0

    async def can_publish(user: Any, stream: str) -> bool:
        return stream.endswith("0")

    streams.register("order", key=r"[0-9]{1,18}", can_read=can_read, can_publish=can_publish)
    yield seen
    streams.forget("order")


def test_the_chat_app_registers_room_streams() -> None:
    kind = streams.kind_of("room:lobby")
    assert kind is not None and kind[0].can_read is room_can_read and kind[1] == "lobby"


def test_a_kind_nobody_registered_is_no_stream(monkeypatch: Any) -> None:
    monkeypatch.setattr(streams, "_kinds", {})
    with pytest.raises(StreamDenied) as denied:
        stream_check_readable(user=USER, stream="room:lobby")
    assert denied.value.code == "bad_stream"
    stream_check_readable(user=USER, stream="user:1")  # the core's own kinds need no app


def test_a_registered_kind_names_streams_and_groups(order_kind: list[str]) -> None:
    assert group_for_stream("order:42") == "order.42"
    for bad in ("order:", "order:x1", "order:1\n", "order:" + "9" * 19, "orders:1"):
        with pytest.raises(InvalidStreamName):
            group_for_stream(bad)


def test_the_check_gets_the_stream_and_decides(order_kind: list[str]) -> None:
    stream_check_readable(user=USER, stream="order:42")
    with pytest.raises(StreamDenied) as denied:
        stream_check_readable(user=USER, stream="order:43")
    assert denied.value.code == "forbidden_stream"
    assert order_kind == ["order:42", "order:43"]


def test_an_async_publish_check_runs_and_needs_read_access_too(order_kind: list[str]) -> None:
    stream_check_writable(user=USER, stream="order:40")
    for refused in ("order:42", "order:41"):  # may read but not publish; may not even read
        with pytest.raises(StreamDenied):
            stream_check_writable(user=USER, stream=refused)


def test_only_true_allows(order_kind: list[str]) -> None:
    streams.register("doc", key=r"[0-9]+", can_read=lambda user, stream: None)  # forgot return
    try:
        with pytest.raises(StreamDenied):
            stream_check_readable(user=USER, stream="doc:1")
    finally:
        streams.forget("doc")


def test_a_kind_has_one_registration_and_a_proper_name() -> None:
    kind = streams.kind_of("room:x")
    assert kind is not None
    again = kind[0]
    streams.register(  # the same again (ready() twice): fine
        "room", key=again.key.pattern, can_read=again.can_read, can_publish=again.can_publish
    )
    with pytest.raises(ValueError, match="already registered"):
        streams.register("room", key=".*", can_read=lambda user, stream: True)
    for bad in ("user", "ops", "Order", "a-b", "x" * 21):
        with pytest.raises(ValueError):
            streams.register(bad, key=".*", can_read=lambda user, stream: True)
