"""Hostile input at the parsing layer: every frame, URL, body and name a client can send is
either parsed or refused with a stable code and a message, never an exception that escapes."""

from __future__ import annotations

import json

import pytest

from realtime import groups, protocol, publish
from realtime.limits import TokenBucket
from realtime.protocol import InvalidFrame, InvalidJson

MAX = 64 * 1024


def refused_code(text: str) -> str:
    with pytest.raises(InvalidFrame) as refused:
        protocol.parse_client_frame(text, max_bytes=MAX)
    assert refused.value.message  # says what to do
    return refused.value.code


@pytest.mark.parametrize(
    "text",
    [
        "[" * 5000,  # deep enough for Python's parser to raise RecursionError
        "[" * 5000 + "]" * 5000,
        '{"type": "echo", "payload": ' + "[" * 40 + "]" * 40 + "}",  # valid JSON, too deep
        '{"type": "echo", "payload": ' + '{"a":' * 40 + "1" + "}" * 40 + "}",
        '{"type": "echo", "id": "\\ud800", "payload": 1}',  # a lone surrogate in the id
        '{"type": "echo", "payload": "\\udfff"}',  # ... and in a payload
        '{"type": "echo", "payload": {"\\ud800": 1}}',  # ... and in a key
        '{"type": "echo", "payload": "\\ude00\\ud83d"}',  # a pair the wrong way round
        '{"type": "echo", "payload": NaN}',
        '{"type": "echo", "payload": Infinity}',
        '{"type": "echo", "payload": [-Infinity]}',
        "not json {",
    ],
)
def test_malformed_deep_or_non_standard_json_is_bad_json(text: str) -> None:
    assert refused_code(text) == "bad_json"


def test_json_up_to_the_depth_limit_and_real_surrogate_pairs_are_accepted() -> None:
    depth = protocol.MAX_JSON_DEPTH - 1  # the frame object itself is the first level
    text = '{"type": "echo", "payload": ' + "[" * depth + "]" * depth + "}"
    assert protocol.parse_client_frame(text, max_bytes=MAX).type == "echo"
    emoji = protocol.parse_client_frame(
        '{"type": "echo", "payload": "\\ud83d\\ude00"}', max_bytes=MAX
    )
    assert emoji.data["payload"] == "😀"
    # A backslash escaped, then "ud800": text, not a surrogate.
    literal = protocol.parse_client_frame('{"type": "echo", "payload": "\\\\ud800"}', max_bytes=MAX)
    assert literal.data["payload"] == "\\ud800"
    # Brackets inside strings are not nesting.
    brackets = protocol.parse_client_frame(
        json.dumps({"type": "echo", "payload": "[" * 500}), max_bytes=MAX
    )
    assert brackets.data["payload"] == "[" * 500


def test_loads_accepts_bytes_and_refuses_invalid_utf8() -> None:
    assert protocol.loads(b'{"a": [1, 2]}') == {"a": [1, 2]}
    with pytest.raises(InvalidJson):
        protocol.loads(b'{"a": "\xff"}')
    with pytest.raises(InvalidJson):
        protocol.loads(b"[" * 5000)


def test_a_deep_or_non_standard_resume_url_is_bad_resume() -> None:
    for value in ("[" * 5000, '{"user:1": {"epoch": null, "seq": NaN}}', '{"\\ud800": 1}'):
        query = "resume=" + value.replace("[", "%5B")
        with pytest.raises(InvalidFrame) as refused:
            protocol.parse_resume_query(query.encode())
        assert refused.value.code == "bad_resume"


def test_the_server_never_encodes_non_standard_json() -> None:
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ValueError):
            protocol.encode({"payload": bad})
        with pytest.raises(publish.InvalidPayload, match="standard JSON"):
            publish.check_payload({"x": [bad]})


def test_payloads_python_code_builds_are_checked_too() -> None:
    deep: list = []  # type: ignore[type-arg]
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(publish.InvalidPayload):
        publish.check_payload(deep)
    with pytest.raises(publish.InvalidPayload):
        publish.check_payload({"text": "\ud800"})  # a lone surrogate cannot become UTF-8


@pytest.mark.parametrize(
    "stream",
    [
        "room:lobby\n",  # `$` matched before a final newline
        "room:lobby\r\n",
        "room:Lobby",
        "room:lobby ",
        " room:lobby",
        "room:-lobby",
        "room:" + "a" * 51,
        "room:lob\x00by",
        "room:../lobby",
        "room:\uff4cobby",  # a full-width l
        "user:" + "9" * 5000,  # int() refuses more than 4300 digits: was HTTP 500
        "user:" + "1" * 19,  # above a bigint
        "user:0",
        "user:01",
        "user:-1",
        "user:\uff11",  # a full-width 1: isdigit() is true for it
        "user:1\n",
        "USER:1",
        "broadcast\n",
        "ops ",
        "",
        ":",
    ],
)
def test_stream_names_must_match_whole(stream: str) -> None:
    with pytest.raises(groups.InvalidStreamName) as refused:
        groups.group_for_stream(stream)
    assert len(str(refused.value)) < 300  # the name is cut short in the message


def test_the_longest_valid_names_are_accepted() -> None:
    assert groups.group_for_stream("user:" + "9" * 18) == "user." + "9" * 18
    assert groups.group_for_stream("room:" + "a" * 50) == "room." + "a" * 50
    assert not groups.is_room_slug("lobby\n")


def test_a_subscribe_to_a_five_thousand_digit_user_stream_is_bad_stream_not_a_crash() -> None:
    frame = protocol.parse_client_frame(
        json.dumps({"type": "subscribe", "stream": "user:" + "1" * 5000}), max_bytes=MAX
    )
    with pytest.raises(groups.InvalidStreamName):
        groups.group_for_stream(frame.data["stream"])


def test_a_token_bucket_allows_its_burst_then_its_rate() -> None:
    bucket = TokenBucket(rate=10, burst=3)
    start = bucket.stamp
    assert [bucket.take(now=start) for _ in range(4)] == [True, True, True, False]
    assert not bucket.take(now=start + 0.05)  # half a token so far
    assert bucket.take(now=start + 0.11)
    assert not bucket.take(now=start + 0.11)
    # Never more than the burst, however long it was idle.
    assert [bucket.take(now=start + 100) for _ in range(4)] == [True, True, True, False]


def test_spending_into_debt_says_how_long_to_wait() -> None:
    bucket = TokenBucket(rate=100, burst=100)
    start = bucket.stamp
    assert bucket.spend(60, now=start) == 0
    assert bucket.spend(90, now=start) == pytest.approx(0.5)  # 50 in debt at 100 a second
    assert not bucket.take(now=start + 0.4)
    assert bucket.take(now=start + 0.52)
