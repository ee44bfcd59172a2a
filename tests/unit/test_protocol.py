import pytest

from realtime import groups
from realtime.protocol import InvalidFrame, parse_client_frame

LIMIT = 1024


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("nope", "bad_json"),
        ("[1]", "bad_frame"),
        ('"ping"', "bad_frame"),
        ("{}", "missing_type"),
        ('{"type": 5}', "missing_type"),
        ('{"type": "subscribe_all"}', "unknown_type"),
        ('{"type": "rt.deliver", "frame": "x"}', "unknown_type"),  # server types stay server-side
        ('{"type": "ping", "id": 7}', "bad_id"),
        ('{"type": "ping", "id": ""}', "bad_id"),
        ('{"type": "ping", "id": "' + "i" * 65 + '"}', "bad_id"),
        ('{"type": "echo", "payload": "' + "x" * LIMIT + '"}', "frame_too_large"),
        ('{"type": "echo", "payload": "' + "é" * (LIMIT // 2) + '"}', "frame_too_large"),
    ],
)
def test_bad_frames_are_refused_with_a_stable_code(text: str, code: str) -> None:
    with pytest.raises(InvalidFrame) as caught:
        parse_client_frame(text, max_bytes=LIMIT)
    assert caught.value.code == code
    assert caught.value.message


def test_unknown_type_error_names_the_known_types() -> None:
    with pytest.raises(InvalidFrame) as caught:
        parse_client_frame('{"type": "x", "id": "a1"}', max_bytes=LIMIT)
    assert "echo" in caught.value.message and "ping" in caught.value.message
    assert caught.value.ref == "a1"


def test_good_frame_is_parsed() -> None:
    frame = parse_client_frame('{"type": "echo", "id": "m1", "payload": [1]}', max_bytes=LIMIT)
    assert (frame.type, frame.id, frame.data["payload"]) == ("echo", "m1", [1])


@pytest.mark.parametrize(
    ("stream", "group"),
    [("user:42", "user.42"), ("room:lobby-2", "room.lobby-2"), ("broadcast", "broadcast")],
)
def test_streams_map_to_groups(stream: str, group: str) -> None:
    assert groups.group_for_stream(stream) == group


@pytest.mark.parametrize(
    "stream",
    [
        "user:",
        "user:0",
        "user:01",
        "user:-1",
        "user:1x",
        "user:²",
        "room:",
        "room:Lobby",
        "room:a b",
        "room:" + "a" * 51,
        "rooms:x",
        "broadcast:1",
        "",
        "user.1",
    ],
)
def test_malformed_streams_are_refused(stream: str) -> None:
    with pytest.raises(groups.InvalidStreamName):
        groups.group_for_stream(stream)
