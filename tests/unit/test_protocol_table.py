"""protocol.py's table is the one list of the wire protocol; here the clients and the server's
code are held to it, both ways: a type or code in the table that a client (or the server) does
not handle or send fails, and so does one a client handles (or the server sends) that the table
does not list.

What "handles" means comes from the table's classes. Stream envelopes (Handling.STREAM) and the
frames that change a client's state (Handling.STATE) each need code of their own in both
clients: client.js's STREAM_FRAME_TYPES and the `case` labels of its `switch (frame.type)`,
client.py's STREAM_FRAME_TYPES / STATE_FRAME_TYPES and the branches of its `_on_frame`. The
other frames (Handling.EVENT) need none: client.js passes them to the page as events named by
their type, client.py ignores them. Close codes: CloseAction.STOP and TRY_LATER are each client's
CLOSE_UNAUTHORIZED and try-later set; everything else is an ordinary retry.
"""

from __future__ import annotations

import ast
import asyncio
import json
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.frames import Close

import switchboard_client as py_client
from realtime.protocol import (
    CLIENT_FRAMES,
    CLOSE_CODES,
    ERROR_CODES,
    RESUMED_REASONS,
    SERVER_FRAMES,
    CloseAction,
    ErrorAction,
    Handling,
    InvalidFrame,
    envelope,
    error_frame,
    loads,
    parse_client_frame,
)

ROOT = Path(__file__).resolve().parents[2]
CLIENT_JS = ROOT / "realtime" / "static" / "realtime" / "client.js"
CLIENT_PY = ROOT / "clients" / "python" / "switchboard_client" / "__init__.py"
# Server code is every Python file of the project but these: the clients, the tests, and the
# benchmark's stand-in servers (devtools/bench: stock Channels and a limit server, not ours).
NOT_SERVER = {".venv", ".git", "tests", "var", "test-artifacts", "node_modules", "migrations"}
# The publish and socket ports speak ASGI to the application: their {"type": "http"} and
# {"type": "websocket"} are scopes, not frames.
NOT_SERVER_FILES = {
    CLIENT_PY,
    ROOT / "realtime" / "transport" / "publish_port.py",
    ROOT / "realtime" / "transport" / "socket_port.py",
}
NOT_SERVER_DIRS = {ROOT / "devtools" / "bench"}


def server_types(*handling: Handling) -> set[str]:
    return {name for name, spec in SERVER_FRAMES.items() if spec.handling in handling}


def close_codes(action: CloseAction) -> set[int]:
    return {code for code, spec in CLOSE_CODES.items() if spec.client_should is action}


def client_sent_close_codes() -> set[int]:
    return {code for code, spec in CLOSE_CODES.items() if spec.sent_by == "client"}


def error_codes_clients_act_on() -> set[str]:
    acting = (ErrorAction.RESEND, ErrorAction.FORGET_STREAM)
    return {code for code, spec in ERROR_CODES.items() if spec.client_should in acting}


# --- the table itself ----------------------------------------------------------------------------


def test_every_table_entry_says_what_a_client_does() -> None:
    assert all(spec.handling is None for spec in CLIENT_FRAMES.values())
    assert all(spec.handling is not None for spec in SERVER_FRAMES.values())
    for code, spec in CLOSE_CODES.items():
        assert (spec.client_should is None) == (spec.sent_by == "client"), code
    for name, spec in {**CLIENT_FRAMES, **SERVER_FRAMES}.items():
        assert not set(spec.required) & set(spec.optional), name
        assert "type" not in spec.required + spec.optional, name


# --- client.js -----------------------------------------------------------------------------------


def js_block(source: str, opener: str) -> str:
    """The text between the `{` that ends `opener` and its matching `}`."""
    assert source.count(opener) == 1, f"expected one {opener!r} in client.js"
    start = source.index(opener) + len(opener)
    depth = 1
    for end in range(start, len(source)):
        depth += {"{": 1, "}": -1}.get(source[end], 0)
        if depth == 0:
            return source[start:end]
    raise AssertionError(f"no end to {opener!r}")


def js_strings(text: str) -> set[str]:
    return set(re.findall(r'"([^"]*)"', text))


def js_const(source: str, name: str) -> str:
    match = re.search(rf"^const {name} = (.+);$", source, re.MULTILINE)
    assert match, f"client.js has no `const {name} = …;`"
    return match.group(1)


def js_handled_types(source: str) -> tuple[set[str], set[str]]:
    """(stream types, types with code of their own) as client.js dispatches them."""
    stream = js_strings(js_const(source, "STREAM_FRAME_TYPES"))
    assert "STREAM_FRAME_TYPES.has(frame.type)" in source
    switch = js_block(source, "switch (frame.type) {")
    special = set(re.findall(r'\bcase\s+"([^"]+)"\s*:', switch))
    # A branch on a type outside the switch counts too.
    special |= set(re.findall(r'\.type\s*===?\s*"([^"]+)"', source))
    return stream, special


def test_client_js_handles_exactly_the_tables_stream_and_state_frames() -> None:
    stream, special = js_handled_types(CLIENT_JS.read_text())
    assert stream == server_types(Handling.STREAM)
    assert special == server_types(Handling.STATE)


def test_client_js_close_code_classes_are_the_tables() -> None:
    source = CLIENT_JS.read_text()
    assert {int(js_const(source, "CLOSE_UNAUTHORIZED"))} == close_codes(CloseAction.STOP)
    try_later = {int(code) for code in re.findall(r"\d+", js_const(source, "TRY_LATER_CODES"))}
    assert try_later == close_codes(CloseAction.TRY_LATER)
    assert "code === CLOSE_UNAUTHORIZED" in source and "TRY_LATER_CODES.has(code)" in source


def test_client_js_sends_only_the_tables_client_frames_and_close_codes() -> None:
    source = CLIENT_JS.read_text()
    sent = set(re.findall(r'\btype:\s*"([^"]+)"', source))
    assert sent and sent <= set(CLIENT_FRAMES)
    closes = {int(code) for code in re.findall(r"\.close\((\d+)", source)}
    assert closes == client_sent_close_codes()


def test_client_js_acts_on_exactly_the_error_codes_the_table_gives_an_action() -> None:
    codes = set(re.findall(r'\.code\s*===?\s*"([^"]+)"', CLIENT_JS.read_text()))
    assert codes == error_codes_clients_act_on()


# --- client.py -----------------------------------------------------------------------------------


def py_function(tree: ast.Module, name: str) -> ast.AsyncFunctionDef | ast.FunctionDef:
    found = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == name
    ]
    assert len(found) == 1, f"expected one {name}() in client.py"
    return found[0]


def compared_strings(function: ast.AST, is_subject: Any) -> set[str]:
    """String constants compared (==, !=, in, not in) with an expression `is_subject` accepts."""
    found: set[str] = set()
    for node in ast.walk(function):
        if not isinstance(node, ast.Compare) or not is_subject(node.left):
            continue
        for right in node.comparators:
            items = right.elts if isinstance(right, ast.Tuple | ast.Set | ast.List) else [right]
            for item in items:
                if isinstance(item, ast.Constant) and isinstance(item.value, str):
                    found.add(item.value)
    return found


def names_in(function: ast.AST) -> set[str]:
    return {node.id for node in ast.walk(function) if isinstance(node, ast.Name)}


def test_client_py_handles_exactly_the_tables_stream_and_state_frames() -> None:
    assert py_client.STREAM_FRAME_TYPES == server_types(Handling.STREAM)
    assert py_client.STATE_FRAME_TYPES == server_types(Handling.STATE)
    # The sets are what the dispatch really does: the stream set is its test for an envelope,
    # and its other branches are on exactly the state types.
    on_frame = py_function(ast.parse(CLIENT_PY.read_text()), "_on_frame")
    assert "STREAM_FRAME_TYPES" in names_in(on_frame)
    branches = compared_strings(on_frame, lambda e: isinstance(e, ast.Name) and e.id == "kind")
    assert branches == py_client.STATE_FRAME_TYPES


def test_client_py_acts_on_exactly_the_error_codes_the_table_gives_an_action() -> None:
    on_error = py_function(ast.parse(CLIENT_PY.read_text()), "_on_error")

    def is_code(expr: ast.expr) -> bool:  # frame.get("code") or frame["code"]
        key = None
        if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute) and expr.args:
            key = expr.args[0] if expr.func.attr == "get" else None
        elif isinstance(expr, ast.Subscript):
            key = expr.slice
        return isinstance(key, ast.Constant) and key.value == "code"

    assert compared_strings(on_error, is_code) == error_codes_clients_act_on()


def test_client_py_sends_only_the_tables_client_frames_and_close_codes() -> None:
    tree = ast.parse(CLIENT_PY.read_text())
    sent = {
        value.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Dict)
        for key, value in zip(node.keys, node.values, strict=True)
        if isinstance(key, ast.Constant) and key.value == "type" and isinstance(value, ast.Constant)
    }
    assert sent and sent <= set(CLIENT_FRAMES)
    closes = {
        keyword.value.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        for keyword in node.keywords
        if keyword.arg == "code" and isinstance(keyword.value, ast.Constant)
    }
    assert closes and closes <= client_sent_close_codes()


class _Widest(random.Random):
    """An rng whose every draw is the top of the range: each delay is the backoff's bound."""

    def uniform(self, low: float, high: float) -> float:
        return high


# Every code a server may close with, and two it never does (1001: going away; None: the
# connection dropped without a close frame, which a browser reports as 1006).
SERVER_CLOSES = sorted(code for code, spec in CLOSE_CODES.items() if spec.client_should)


@pytest.mark.parametrize("code", [*SERVER_CLOSES, 1001, None])
async def test_client_py_reconnects_after_each_close_code_as_the_table_says(
    code: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = py_client.ClientOptions(
        backoff_base_secs=0.001, try_later_base_secs=1.0, backoff_cap_secs=100.0
    )
    client = py_client.RealtimeClient(
        "ws://switchboard.invalid/ws/", options=options, rng=_Widest()
    )
    connects: list[str] = []
    delays: list[float] = []

    def closing_connect(url: str, **_: Any) -> Any:
        connects.append(url)
        raise ConnectionClosed(Close(code, "") if code else None, None)

    async def no_sleep(delay: float) -> None:
        delays.append(delay)
        if len(delays) == 2:
            client._closing = True

    monkeypatch.setattr(py_client, "connect", closing_connect)
    monkeypatch.setattr(asyncio, "sleep", no_sleep)
    await asyncio.wait_for(client._run(), timeout=5)

    action = CLOSE_CODES[code].client_should if code in CLOSE_CODES else CloseAction.RETRY
    if action is CloseAction.STOP:
        assert (len(connects), delays, client.refused) == (1, [], "not logged in (4401)")
        return
    base = {CloseAction.TRY_LATER: 1.0, CloseAction.RETRY: 0.001}[action]
    assert delays == [base, base * 2]  # the attempt count doubles the bound each time


# --- the server's code ---------------------------------------------------------------------------


def server_sources() -> Iterator[tuple[Path, ast.Module]]:
    for path in sorted(ROOT.rglob("*.py")):
        parts = set(path.relative_to(ROOT).parts)
        if parts & NOT_SERVER or path in NOT_SERVER_FILES:
            continue
        if any(folder in path.parents for folder in NOT_SERVER_DIRS):
            continue
        yield path, ast.parse(path.read_text(), filename=str(path))


# The calls whose first argument is an error frame's code. RateLimited takes a message: its
# code is in its __init__'s super().__init__("rate_limited", …), found below.
CODE_TAKERS = {"send_error", "_refuse", "error_frame", "InvalidFrame", "StreamDenied"}
ERROR_BASES = {"InvalidFrame", "StreamDenied"}


def _callee(call: ast.Call) -> str | None:
    func = call.func
    return func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)


def _code_argument(call: ast.Call) -> ast.expr | None:
    for keyword in call.keywords:
        if keyword.arg == "code":
            return keyword.value
    return call.args[0] if call.args else None


def _error_calls(tree: ast.Module) -> Iterator[ast.Call]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _callee(node) in CODE_TAKERS:
            yield node
        if isinstance(node, ast.ClassDef) and {getattr(b, "id", None) for b in node.bases} & (
            ERROR_BASES
        ):
            for call in ast.walk(node):
                if (
                    isinstance(call, ast.Call)
                    and _callee(call) == "__init__"
                    and isinstance(call.func, ast.Attribute)
                    and isinstance(call.func.value, ast.Call)
                    and _callee(call.func.value) == "super"
                ):
                    yield call


def _passes_a_code_on(code: ast.expr | None) -> bool:
    """exc.code, or a function's own `code` parameter: fine. Any other expression would hide a
    code from this test."""
    if isinstance(code, ast.Attribute):
        return code.attr == "code"
    return isinstance(code, ast.Name) and code.id == "code"


def test_the_server_sends_exactly_the_error_codes_in_the_table() -> None:
    sent: dict[str, set[str]] = {}
    unreadable: list[str] = []
    for path, tree in server_sources():
        for call in _error_calls(tree):
            code = _code_argument(call)
            where = f"{path.relative_to(ROOT)}:{call.lineno}"
            if isinstance(code, ast.Constant) and isinstance(code.value, str):
                sent.setdefault(code.value, set()).add(where)
            elif not _passes_a_code_on(code):
                unreadable.append(where)
    assert not unreadable, f"error codes this test cannot read: {unreadable}"
    # The scan found the senders (the parser, the consumer, the access checks, chat).
    assert {"bad_json", "unauthorized", "forbidden_stream", "rate_limited"} <= set(sent)
    unlisted = {code: sorted(where) for code, where in sent.items() if code not in ERROR_CODES}
    assert not unlisted, f"sent but not in protocol.ERROR_CODES: {unlisted}"
    assert set(ERROR_CODES) - set(sent) == set(), "in ERROR_CODES but sent nowhere"


def test_the_server_sends_exactly_the_frame_types_in_the_table() -> None:
    sent: set[str] = set()
    kinds: set[str] = set()
    for _, tree in server_sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values, strict=True):
                    if (
                        isinstance(key, ast.Constant)
                        and key.value == "type"
                        and isinstance(value, ast.Constant)
                        and "." not in value.value  # rt.deliver, websocket.close: not frames
                    ):
                        sent.add(value.value)
            # The envelopes' types by stream kind (publish.py): {"user": "push", …}.
            if (
                isinstance(node, ast.Assign)
                and any(getattr(t, "id", None) == "_KINDS" for t in node.targets)
                and isinstance(node.value, ast.Dict)
            ):
                kinds |= {v.value for v in node.value.values if isinstance(v, ast.Constant)}
    assert kinds == server_types(Handling.STREAM), "publish.py's _KINDS: the envelope types"
    assert sent | kinds == set(SERVER_FRAMES)


def _strings_assigned_to(name: str, tree: ast.AST) -> set[str]:
    """String constants assigned to `name`, alone or in a tuple (`recovered, reason = …`)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Assign):
            continue
        for target in node.targets:
            pairs: list[tuple[ast.expr, ast.expr]] = [(target, node.value)]
            if isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple):
                pairs = list(zip(target.elts, node.value.elts, strict=True))
            for left, right in pairs:
                if (
                    isinstance(left, ast.Name)
                    and left.id == name
                    and isinstance(right, ast.Constant)
                    and isinstance(right.value, str)
                ):
                    found.add(right.value)
    return found


def test_the_server_gives_exactly_the_resumed_reasons_in_the_table() -> None:
    """Every `resumed` goes through send_resumed, whose `recovered` comes from RESUMED_REASONS:
    a reason is a constant there, or the caller's own `reason`, assigned constants."""
    given: set[str] = set()
    for path, tree in server_sources():
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and _callee(node) == "send_resumed"):
                continue
            reason = next((k.value for k in node.keywords if k.arg == "reason"), None)
            assert not any(k.arg == "recovered" for k in node.keywords), "the table decides"
            if isinstance(reason, ast.Constant) and isinstance(reason.value, str):
                given.add(reason.value)
            else:
                assert isinstance(reason, ast.Name) and reason.id == "reason", (
                    f"{path.relative_to(ROOT)}:{node.lineno}: a reason this test cannot read"
                )
                given |= _strings_assigned_to("reason", tree)
    assert given == set(RESUMED_REASONS)
    assert {reason for reason, (recovered, _) in RESUMED_REASONS.items() if recovered} == {
        "resume",
        "archive",
    }


def test_both_clients_act_on_recovered_never_on_the_reason() -> None:
    """So a new reason (archive) needs no client change: recovered: true is the normal case."""
    js = CLIENT_JS.read_text()
    assert "frame.recovered" in js_block(js, "_onResumed(frame) {")
    assert not re.search(r"\.reason\s*(===?|!==?)", js)
    on_frame = py_function(ast.parse(CLIENT_PY.read_text()), "_on_frame")
    read_keys = {
        node.args[0].value
        for node in ast.walk(on_frame)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "get"
        and node.args
        and isinstance(node.args[0], ast.Constant)
    }
    assert "recovered" in read_keys and "reason" not in read_keys


def test_error_frames_and_envelopes_carry_the_tables_fields() -> None:
    error = loads(error_frame("unavailable", "m", "r1", stream="room:a", retry_after_ms=5))
    spec = SERVER_FRAMES["error"]
    assert set(error) - {"type"} == set(spec.required + spec.optional)
    assert set(loads(error_frame("unavailable", "m"))) - {"type"} == set(spec.required)
    made = envelope(kind="push", stream="user:1", message_id="m", payload=1, origin="d1")
    spec = SERVER_FRAMES["push"]
    # The publish script adds seq and epoch; publish() adds the sender when there is one.
    assert set(made) - {"type"} | {"seq", "epoch", "sender"} == set(spec.required + spec.optional)


# Values for the client frames' fields, to build frames from the table.
SAMPLES: dict[str, Any] = {
    "id": "f1",
    "stream": "room:lobby",
    "payload": {"text": "hi"},
    "from": {"epoch": "e1", "seq": 3},
    "streams": {"room:lobby": {"epoch": "e1", "seq": 3}},
    "seq": 3,
}


@pytest.mark.parametrize("frame_type", sorted(CLIENT_FRAMES))
def test_the_parser_requires_exactly_the_tables_required_fields(frame_type: str) -> None:
    spec = CLIENT_FRAMES[frame_type]
    frame = {"type": frame_type, **{field: SAMPLES[field] for field in spec.required}}
    assert parse_client_frame(json.dumps(frame), max_bytes=4096).type == frame_type
    full = {**frame, **{field: SAMPLES[field] for field in spec.optional}}
    assert parse_client_frame(json.dumps(full), max_bytes=4096).type == frame_type
    for field in spec.required:
        without = {key: value for key, value in frame.items() if key != field}
        with pytest.raises(InvalidFrame):
            parse_client_frame(json.dumps(without), max_bytes=4096)
