"""protocol.loads reads with orjson where orjson reads as the standard parser does, and leaves the
rest to the standard parser: every text, valid or hostile, gives the same value (same types:
an integer stays an integer) or the same refusal either way."""

from __future__ import annotations

import json
import random
from unittest import mock

import pytest

from realtime import protocol

pytestmark = pytest.mark.unit

DEEP = "[" * 33 + "]" * 33
AT_LIMIT = "[" * 32 + "]" * 32

TEXTS = [
    '{"user": "alice", "payload": {"n": 1, "text": "hi"}}',
    '{"type":"ack","stream":"user:17","seq":12345}',
    "[1, -1, 0, -0, 1.5, -0.0, 1e5, 1E-5, 0.1e1, 1.7976931348623157e308, 5e-324]",
    # Integers past 64 bits, and at its edges: orjson makes floats of some; we never do.
    "[9223372036854775807, 9223372036854775808, -9223372036854775808, -9223372036854775809]",
    "[18446744073709551615, 18446744073709551616, -9999999999999999999, 123456789012345678901]",
    '{"id": 1234567890123456789012345678901234567890}',
    '"1234567890123456789 in a string"',
    '{"a": 1, "a": 2}',
    '"\\u0000 \\t \\" \\\\ \\/ \\b \\f \\n \\r"',
    '"\\ud83d\\ude00 and 😀 and é"',
    '"\\ud800"',  # a lone surrogate escape
    '"\\udc00\\ud800"',
    '["\\ud800", 1]',
    '{"\\udfff": 1}',
    "NaN",
    "[Infinity]",
    "[-Infinity]",
    "[1e400]",
    "[1,]",
    "[01]",
    "[.5]",
    "[1.]",
    '"\\x41"',
    '"a\nb"',
    '"a\x01b"',
    '"a\x7fb"',
    " \t[1]\r\n ",
    "[1]\x0c",
    "{} {}",
    "",
    "   ",
    "null",
    "true",
    "[true, false, null]",
    '{"nested": ' * 10 + "1" + "}" * 10,
    AT_LIMIT,
    DEEP,
    "[" * 5000,
    "[" * 1100 + "]" * 1100,
    '{"messages": ['
    + ",".join(f'{{"user": "u{i}", "payload": {{"n": {i}}}}}' for i in range(40))
    + "]}",
]

BYTES = [
    b'{"a": [1, 2]}',
    b'{"a": "\xff"}',  # not UTF-8
    b'"\xed\xa0\x80"',  # an encoded surrogate
    b"\xef\xbb\xbf{}",  # a byte order mark
    '{"a": "é"}'.encode("utf-16"),
    '{"a": 1}'.encode("utf-32-le"),
    b"[1]\x00",
]


def outcome(read: object, text: str | bytes) -> str:
    try:
        value = read(text)  # type: ignore[operator]
    except protocol.InvalidJson:
        return "InvalidJson"
    return repr(value)


def test_orjson_is_there_to_read_with() -> None:
    # CI installs it (requirements.txt); without it every text goes the standard way.
    assert protocol.orjson is not None


@pytest.mark.parametrize("text", TEXTS + BYTES, ids=range(len(TEXTS) + len(BYTES)))
def test_a_text_reads_the_same_as_the_standard_parser_reads_it(text: str | bytes) -> None:
    assert outcome(protocol.loads, text) == outcome(protocol._standard_loads, text)


def test_the_same_texts_as_bytes_read_the_same_too() -> None:
    for text in TEXTS:
        raw = text.encode("utf-8", "surrogatepass")
        assert outcome(protocol.loads, raw) == outcome(protocol._standard_loads, raw), text


def test_long_integers_stay_exact_integers() -> None:
    for n in (2**63, 2**64, -(2**63) - 1, 10**30, -(10**19)):
        assert protocol.loads(json.dumps({"n": n})) == {"n": n}
        assert type(protocol.loads(json.dumps([n]))[0]) is int


def test_the_depth_limit_holds_on_the_orjson_path() -> None:
    assert protocol.loads(AT_LIMIT)
    with pytest.raises(protocol.InvalidJson, match="nest at most"):
        protocol.loads(DEEP)
    # Deep in one branch only, behind wide shallow ones.
    wide = '{"a": [' + ",".join(["[1]"] * 50) + "], " + '"b": ' + DEEP + "}"
    with pytest.raises(protocol.InvalidJson, match="nest at most"):
        protocol.loads(wide)


def test_a_plain_body_never_reaches_the_standard_parser() -> None:
    # Else the fast path would be dead code and the parity above would prove nothing.
    with mock.patch.object(protocol, "_standard_loads", side_effect=AssertionError):
        assert protocol.loads(TEXTS[0])["user"] == "alice"
        assert protocol.loads(TEXTS[0].encode())["payload"] == {"n": 1, "text": "hi"}


def _random_value(rng: random.Random, depth: int) -> object:
    kind = rng.randrange(9 if depth < 36 else 6)
    if kind == 0:
        return rng.randrange(-(10**25), 10**25) if rng.random() < 0.3 else rng.randrange(-999, 999)
    if kind == 1:
        return rng.choice([0.0, -0.0, 1e-7, 1e22, 3.141592653589793, rng.uniform(-1e6, 1e6)])
    if kind == 2:
        alphabet = 'ab"\\/\n\t\x00é😀\u2028 {}[],:0123456789'
        return "".join(rng.choice(alphabet) for _ in range(rng.randrange(12)))
    if kind in (3, 4, 5):
        return rng.choice([True, False, None])
    if kind in (6, 7):
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {f"k{i}{rng.random()}": _random_value(rng, depth + 1) for i in range(rng.randrange(4))}


def test_random_documents_read_the_same_either_way() -> None:
    rng = random.Random(15)
    for _ in range(2000):
        text = json.dumps(_random_value(rng, 1), ensure_ascii=rng.random() < 0.5)
        assert outcome(protocol.loads, text) == outcome(protocol._standard_loads, text), text
