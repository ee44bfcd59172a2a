"""realtime/protocol.py's encode: orjson writes a frame when it can, the standard encoder
otherwise, and which one did never shows. Every value is accepted or refused as the standard
encoder alone decides, and an accepted one reads back as the same JSON."""

from __future__ import annotations

import datetime
import json
import math
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import Any

import pytest

from realtime import protocol

pytestmark = pytest.mark.unit


class Colour(Enum):
    RED = "red"


class Level(IntEnum):
    HIGH = 3


class Name(str):
    pass


@dataclass
class Point:
    x: int


def _nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


ACCEPTED = [
    {"type": "push", "payload": {"n": 1, "text": "héllo\n\u2028", "list": [1, 2.5, True]}},
    {"a": None, "b": "null", "c": ""},  # a null (or the word) sends it to the standard encoder
    {"big": 2**70, "small": -(2**63)},  # past 64 bits: orjson refuses, the standard one writes
    {1: "int key", 2.5: "float key", None: "null key"},  # keys made strings, as json does
    {"tuple": (1, 2), "ordered": OrderedDict(b=1, a=2)},
    {"uuid": uuid.UUID(int=7), "enum": Colour.RED, "int_enum": Level.HIGH},
    {"subclass": Name("x")},
    {"floats": [0.1, 1e20, 1e-7, -0.0, 5e-324, 1.7976931348623157e308]},
    {"deep": _nested(300)},  # past orjson's 254 levels: the standard encoder writes it
]

REFUSED = [
    ({"nan": math.nan}, ValueError),
    ({"inf": [math.inf]}, ValueError),
    ({"when": datetime.datetime(2026, 12, 1)}, TypeError),
    ({"point": Point(1)}, TypeError),
    ({"set": {1, 2}}, TypeError),
    ({"bytes": b"x"}, TypeError),
]


@pytest.mark.parametrize("frame", ACCEPTED)
def test_accepted_frames_read_back_as_the_standard_encoders(frame: dict[str, Any]) -> None:
    text = protocol.encode(frame)
    assert json.loads(text) == json.loads(protocol._ENCODER.encode(frame))
    assert ", " not in text and '": ' not in text  # compact, as every frame
    assert protocol.encode_bytes(frame) == text.encode()


@pytest.mark.parametrize(("frame", "error"), REFUSED)
def test_refused_frames_raise_what_the_standard_encoder_raises(
    frame: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        protocol._ENCODER.encode(frame)
    with pytest.raises(error):
        protocol.encode(frame)
    with pytest.raises(error):
        protocol.encode_bytes(frame)


def test_a_lone_surrogate_is_written_as_the_standard_encoder_writes_it() -> None:
    # Refused later, where the text becomes UTF-8 (check_payload): the same text either way.
    frame = {"text": "\ud800"}
    assert protocol.encode(frame) == protocol._ENCODER.encode(frame)
    with pytest.raises(UnicodeEncodeError):
        protocol.encode_bytes(frame)  # where it becomes UTF-8 at once


def test_plain_frames_are_written_by_orjson(monkeypatch: pytest.MonkeyPatch) -> None:
    assert protocol.orjson is not None, "orjson is in requirements.txt"
    frame = {"type": "push", "stream": "user:1", "seq": 3, "payload": {"n": [1, "é"]}}
    expected = protocol._ENCODER.encode(frame)

    class Unused:
        def encode(self, value: Any) -> str:
            raise AssertionError("the standard encoder wrote a plain frame")

    monkeypatch.setattr(protocol, "_ENCODER", Unused())
    assert protocol.encode(frame) == expected
    assert protocol.encode_bytes(frame) == expected.encode()
