"""Who reads and publishes to a stream of an app's kind is that kind's registered check
(realtime/streams.py): sync or async, True to allow, anything else refuses. What such a stream
keeps (history, retention) and whether it has presence is the kind's too, and policy_for()
answers it for every stream, the core's included."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from pytest_django.fixtures import Settings

from chat.access import room_can_read
from realtime import streams
from realtime.groups import InvalidStreamName, group_for_stream
from realtime.selectors import StreamDenied, stream_check_readable, stream_check_writable
from realtime.streams import KindPolicy

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
        "room",
        key=again.key.pattern,
        can_read=again.can_read,
        can_publish=again.can_publish,
        history=again.history,
        presence=again.presence,
        archive=again.archive,
    )
    with pytest.raises(ValueError, match="already registered"):
        streams.register("room", key=".*", can_read=lambda user, stream: True)
    for bad in ("user", "ops", "Order", "a-b", "x" * 21):
        with pytest.raises(ValueError):
            streams.register(bad, key=".*", can_read=lambda user, stream: True)


def allow(user: Any, stream: str) -> bool:
    return True


@pytest.fixture
def forget_kinds() -> Iterator[list[str]]:
    """Kinds a test registers, unregistered afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        streams.forget(name)


def test_the_core_kinds_keep_history_with_the_global_retention_and_no_presence(
    settings: Settings,
) -> None:
    settings.HISTORY_MAXLEN, settings.HISTORY_MAX_AGE_SECS = 1234, 56
    expected = KindPolicy(
        history=True, history_maxlen=1234, history_max_age_secs=56, presence=False
    )
    for stream in ("user:1", "broadcast", "ops"):
        assert streams.policy_for(stream) == expected, stream


def test_the_chats_rooms_keep_history_presence_and_an_archive(settings: Settings) -> None:
    policy = streams.policy_for("room:lobby")
    assert (policy.history, policy.history_maxlen, policy.presence, policy.archive) == (
        True,
        settings.HISTORY_MAXLEN,
        True,
        True,
    )
    assert "room" in streams.archived_kinds()
    for stream in ("user:1", "broadcast", "ops"):  # the core's kinds keep none
        assert streams.policy_for(stream).archive is False, stream


def test_a_kind_without_options_keeps_what_the_core_keeps(
    order_kind: list[str], settings: Settings
) -> None:
    assert streams.policy_for("order:42") == streams.policy_for("user:1")
    settings.HISTORY_MAXLEN = 77  # read when asked, not when registered
    assert streams.policy_for("order:42").history_maxlen == 77


def test_a_kinds_own_retention_and_presence_replace_the_global_ones(
    forget_kinds: list[str], settings: Settings
) -> None:
    forget_kinds += ["ticket", "ping"]
    streams.register(
        "ticket",
        key="[0-9]+",
        can_read=allow,
        history_maxlen=5,
        history_max_age_secs=3600,
        presence=True,
    )
    streams.register("ping", key="[0-9]+", can_read=allow, history=False)
    assert streams.policy_for("ticket:1") == KindPolicy(
        history=True, history_maxlen=5, history_max_age_secs=3600, presence=True
    )
    ping = streams.policy_for("ping:1")
    assert (ping.history, ping.presence) == (False, False)


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        ({"history_maxlen": 0}, "history_maxlen must be a positive whole number"),
        ({"history_maxlen": -5}, "history_maxlen must be a positive whole number"),
        ({"history_maxlen": 2.5}, "history_maxlen must be a positive whole number"),
        ({"history_maxlen": "100"}, "history_maxlen must be a positive whole number"),
        ({"history_maxlen": True}, "history_maxlen must be a positive whole number"),
        ({"history_max_age_secs": 0}, "history_max_age_secs must be a positive whole number"),
        ({"history": "no"}, "history must be True or False"),
        ({"presence": 1}, "presence must be True or False"),
        ({"history": False, "history_maxlen": 10}, "keeps no history"),
        ({"history": False, "history_max_age_secs": 10}, "keeps no history"),
        ({"archive": "yes"}, "archive must be True or False"),
        ({"history": False, "archive": True}, "cannot keep an archive"),
    ],
)
def test_a_kinds_options_are_checked_when_it_is_registered(
    options: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(ValueError, match=complaint):
        streams.register("ticket", key="[0-9]+", can_read=allow, **options)
    assert "ticket" not in streams.registered()


def test_the_same_kind_with_other_options_is_a_second_registration(
    forget_kinds: list[str],
) -> None:
    forget_kinds.append("ticket")
    streams.register("ticket", key="[0-9]+", can_read=allow, history_maxlen=5)
    streams.register("ticket", key="[0-9]+", can_read=allow, history_maxlen=5)
    with pytest.raises(ValueError, match="already registered"):
        streams.register("ticket", key="[0-9]+", can_read=allow, history_maxlen=6)


def test_settings_declare_history_retention_presence_and_an_archive(
    forget_kinds: list[str],
) -> None:
    forget_kinds += ["ticket", "ping"]
    streams.register_from_settings(
        {
            "ticket": {
                "key": "[0-9]+",
                "can_read": "chat.access.room_can_read",
                "history_maxlen": 100,
                "history_max_age_secs": 3600,
                "presence": True,
                "archive": True,
            },
            "ping": {"key": "[0-9]+", "can_read": "chat.access.room_can_read", "history": False},
        }
    )
    assert streams.policy_for("ticket:7") == KindPolicy(
        history=True, history_maxlen=100, history_max_age_secs=3600, presence=True, archive=True
    )
    assert streams.policy_for("ping:7").history is False


def test_settings_with_an_option_no_kind_takes_are_refused_by_name() -> None:
    spec = {"key": "[0-9]+", "can_read": "chat.access.room_can_read", "history_max_len": 5}
    with pytest.raises(ValueError, match=r"'history_max_len'.*history_maxlen"):
        streams.register_from_settings({"ticket": spec})
    assert "ticket" not in streams.registered()


def test_a_stream_of_no_registered_kind_has_no_policy() -> None:
    with pytest.raises(ValueError, match="no registered stream kind"):
        streams.policy_for("nope:1")


def test_the_publishs_policy_follows_settings_and_registrations(settings: Settings) -> None:
    """publish makes each kind's StreamPolicy once; a changed setting or a kind registered
    again is never answered with the old one."""
    from realtime import publish

    settings.HISTORY_MAXLEN = 100
    settings.IDEMPOTENCY_TTL_SECS = 60
    assert publish._policy("user:1").max_len == 100
    assert publish._policy("user:2") is publish._policy("user:1"), "made once per kind"
    settings.HISTORY_MAXLEN = 7
    settings.IDEMPOTENCY_TTL_SECS = 9
    policy = publish._policy("user:1")
    assert (policy.max_len, policy.idempotency_ttl_secs) == (7, 9)
    streams.register("ledger", key=r"[0-9]+", can_read=lambda user, stream: True)
    try:
        assert publish._policy("ledger:1").max_len == 7
        streams.forget("ledger")
        streams.register("ledger", key=r"[0-9]+", can_read=lambda user, stream: True, history=False)
        assert publish._policy("ledger:1").max_len == 0, "the kind registered again"
        streams.forget("ledger")
        with pytest.raises(ValueError, match="no registered stream kind"):
            publish._policy("ledger:1")
    finally:
        streams.forget("ledger")
