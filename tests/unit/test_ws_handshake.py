"""The socket port's handshake reader answers every request as websockets' ServerProtocol does.

The same bytes go through both: websockets' status (101, or its 400, 414, 426, 431, or no answer
at all) and Sec-WebSocket-Accept must be ours, whole or split into one-byte reads."""

from __future__ import annotations

import base64
import os

import pytest
from websockets.datastructures import Headers
from websockets.headers import parse_subprotocol
from websockets.http11 import Request
from websockets.server import ServerProtocol

from realtime.transport.ws_handshake import (
    MAX_HEADERS,
    HeadReader,
    Opening,
    Refusal,
    switching,
)

pytestmark = pytest.mark.unit

KEY = base64.b64encode(os.urandom(16)).decode()
BASE = {
    "Host": "127.0.0.1:8000",
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Key": KEY,
    "Sec-WebSocket-Version": "13",
    "Origin": "http://127.0.0.1:8000",
    "Cookie": "sessionid=abcdefghijklmnopqrstuvwxyz012345; SERVERID=d1",
}


def request(
    *,
    line: str = "GET /ws/?resume=%7B%7D HTTP/1.1",
    drop: tuple[str, ...] = (),
    replace: dict[str, str] | None = None,
    extra: list[tuple[str, str]] | None = None,
) -> bytes:
    fields = {**BASE, **(replace or {})}
    lines = [line] + [f"{k}: {v}" for k, v in fields.items() if k not in drop]
    lines += [f"{k}: {v}" for k, v in extra or []]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


CASES: dict[str, bytes] = {
    "plain": request(),
    "firefox's connection": request(replace={"Connection": "keep-alive, Upgrade"}),
    "lower case": request(replace={"Connection": "upgrade", "Upgrade": "WebSocket"}),
    "subprotocols": request(extra=[("Sec-WebSocket-Protocol", "chat, superchat")]),
    "subprotocols over two lines": request(
        extra=[("Sec-WebSocket-Protocol", "chat"), ("Sec-WebSocket-Protocol", "v2")]
    ),
    "an empty subprotocol list": request(extra=[("Sec-WebSocket-Protocol", "")]),
    "a subprotocol that is not a token": request(extra=[("Sec-WebSocket-Protocol", "a b")]),
    "extensions offered": request(
        extra=[("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits")]
    ),
    "no connection": request(drop=("Connection",)),
    "connection keep-alive": request(replace={"Connection": "keep-alive"}),
    "an empty connection": request(replace={"Connection": ""}),
    "no upgrade": request(drop=("Upgrade",)),
    "upgrade to h2c": request(replace={"Upgrade": "h2c"}),
    "two protocols": request(replace={"Upgrade": "websocket, h2c"}),
    "an empty upgrade": request(replace={"Upgrade": ""}),
    "no key": request(drop=("Sec-WebSocket-Key",)),
    "two keys": request(extra=[("Sec-WebSocket-Key", KEY)]),
    "a key that is not base64": request(replace={"Sec-WebSocket-Key": "not*base64!"}),
    "a key of 15 bytes": request(
        replace={"Sec-WebSocket-Key": base64.b64encode(b"x" * 15).decode()}
    ),
    "the key's name with an underscore": request(
        drop=("Sec-WebSocket-Key",), extra=[("Sec_WebSocket_Key", KEY)]
    ),
    "no version": request(drop=("Sec-WebSocket-Version",)),
    "version 8": request(replace={"Sec-WebSocket-Version": "8"}),
    "two versions": request(extra=[("Sec-WebSocket-Version", "13")]),
    "two origins": request(extra=[("Origin", "http://evil.example")]),
    "no origin": request(drop=("Origin",)),
    "POST": request(line="POST /ws/ HTTP/1.1"),
    "HTTP/1.0": request(line="GET /ws/ HTTP/1.0"),
    "a request line with four parts": request(line="GET /ws/ HTTP/1.1 more"),
    "a target that is not ASCII": request(line="GET /ws/\xe9 HTTP/1.1"),
    "a header name with a space": request(extra=[("Bad Name", "x")]),
    "a control character in a value": request(extra=[("X-Odd", "a\x01b")]),
    "a value above ASCII": request(extra=[("X-Name", "Zo\xeb")]),
    "a line ended by LF alone": request().replace(b"Version: 13\r\n", b"Version: 13\n"),
    "a body, chunked": request(extra=[("Transfer-Encoding", "chunked")]),
    "a body of five bytes": request(extra=[("Content-Length", "5")]),
    "an empty body": request(extra=[("Content-Length", "0")]),
    "two content lengths": request(extra=[("Content-Length", "0"), ("Content-Length", "0")]),
    "a header line of 9000 bytes": request(extra=[("X-Big", "b" * 9000)]),
    "a request line of 9000 bytes": request(line="GET /" + "a" * 9000 + " HTTP/1.1"),
    "as many headers as allowed": request(
        extra=[(f"X-{n}", "v") for n in range(MAX_HEADERS - len(BASE))]
    ),
    "one header too many": request(
        extra=[(f"X-{n}", "v") for n in range(MAX_HEADERS - len(BASE) + 1)]
    ),
    "TLS": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not HTTP at all\r\n\r\n",
}


def websockets_outcome(data: bytes) -> tuple[int, str | None]:
    ws = ServerProtocol()
    ws.receive_data(data)
    events = ws.events_received()
    if events and isinstance(events[0], Request):
        response = ws.accept(events[0])
        return response.status_code, response.headers.get("Sec-WebSocket-Accept")
    sent = b"".join(ws.data_to_send())
    return (int(sent[9:12]) if sent else 0), None


def our_outcome(data: bytes, *, piece: int | None = None) -> Opening | Refusal:
    reader = HeadReader()
    pieces = [data] if piece is None else [data[i : i + piece] for i in range(0, len(data), piece)]
    for chunk in pieces:
        outcome, _ = reader.feed(chunk)
        if outcome is not None:
            return outcome
    raise AssertionError("the head never completed")


def status(outcome: Opening | Refusal) -> tuple[int, str | None]:
    if isinstance(outcome, Opening):
        return 101, outcome.accept.decode()
    return outcome.status, None


@pytest.mark.parametrize("name", list(CASES))
def test_every_request_is_answered_as_websockets_answers_it(name: str) -> None:
    data = CASES[name]
    expected = websockets_outcome(data)
    assert status(our_outcome(data)) == expected
    assert status(our_outcome(data, piece=1)) == expected


def test_the_cases_cover_every_answer() -> None:
    # Otherwise the comparison above could pass with a parser that accepts everything.
    answers = {websockets_outcome(data)[0] for data in CASES.values()}
    assert answers == {0, 101, 400, 405, 414, 426, 431, 505}


def test_an_opening_keeps_every_header_as_sent_and_the_subprotocols_offered() -> None:
    data = CASES["subprotocols over two lines"].replace(b"\r\n\r\n", b"\r\nX-Name: Zo\xeb\r\n\r\n")
    opening = our_outcome(data)
    assert isinstance(opening, Opening)
    assert opening.target == "/ws/?resume=%7B%7D"
    assert (b"x-name", b"Zo\xeb") in opening.headers  # bytes as sent, no decoding on the way
    assert (b"sec-websocket-key", KEY.encode()) in opening.headers
    assert all(name == name.lower() for name, _ in opening.headers)
    sent = Headers([(k.decode(), v.decode("latin-1")) for k, v in opening.headers])
    offered = [
        item for v in sent.get_all("Sec-WebSocket-Protocol") for item in parse_subprotocol(v)
    ]
    assert opening.subprotocols == offered == ["chat", "v2"]


def test_what_follows_the_head_is_handed_back_for_the_frame_parser() -> None:
    reader = HeadReader()
    outcome, rest = reader.feed(CASES["plain"][:-10])
    assert (outcome, rest) == (None, b"")
    outcome, rest = reader.feed(CASES["plain"][-10:] + b"\x81\x85early")
    assert isinstance(outcome, Opening) and rest == b"\x81\x85early"


def test_the_answer_is_websockets_101_without_its_date_and_server() -> None:
    ws = ServerProtocol()
    ws.receive_data(CASES["plain"])
    (event,) = ws.events_received()
    theirs = ws.accept(event)
    opening = our_outcome(CASES["plain"])
    assert isinstance(opening, Opening)
    ours = switching(opening.accept, "chat")
    head, _, tail = ours.partition(b"\r\n\r\n")
    assert tail == b"" and head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    fields = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
    assert fields == {
        b"Upgrade": theirs.headers["Upgrade"].encode(),
        b"Connection": theirs.headers["Connection"].encode(),
        b"Sec-WebSocket-Accept": theirs.headers["Sec-WebSocket-Accept"].encode(),
        b"Sec-WebSocket-Protocol": b"chat",
    }


def test_a_head_that_grows_past_the_limits_is_refused_before_it_ends() -> None:
    long_line = HeadReader()
    outcome, _ = long_line.feed(b"GET /ws/ HTTP/1.1\r\nX-Big: " + b"b" * 9000)
    assert isinstance(outcome, Refusal) and outcome.status == 431
    long_target = HeadReader()
    outcome, _ = long_target.feed(b"GET /" + b"a" * 9000)
    assert isinstance(outcome, Refusal) and outcome.status == 414
    many = HeadReader()
    outcome, _ = many.feed(b"GET /ws/ HTTP/1.1\r\n" + b"X: v\r\n" * (MAX_HEADERS + 1))
    assert isinstance(outcome, Refusal) and outcome.status == 431
