"""The wire protocol between browsers and replicas: frame types, the envelope, validation.

Clients speak only the types listed in CLIENT_FRAME_TYPES; the server maps them to its own
handlers and never lets a client choose a channel-layer message type.

Client -> server frames
  echo         {"type": "echo", "payload", "id"?}
  ping         {"type": "ping", "id"?}
  subscribe    {"type": "subscribe", "stream", "from"?: {"epoch", "seq"}}
  unsubscribe  {"type": "unsubscribe", "stream"}
  resume       {"type": "resume", "streams": {stream: {"epoch", "seq"}, ...}}
  publish      {"type": "publish", "id", "stream", "payload"}   id: client-made, for idempotency
  ack          {"type": "ack", "stream", "seq"}                 "I have everything up to seq"
A client may also put its positions in the URL, `/ws/?resume=<JSON {stream: {epoch, seq}}>`,
so that replay starts before any live message (the way the bundled clients reconnect).

Server -> client frames
  hello        {"type": "hello", "replica", "user", "user_id", "connection",
                "streams": {stream: {epoch, seq}}}     connection: this socket's id on its replica
  subscribed   {"type": "subscribed", "stream", "epoch", "seq"}
  unsubscribed {"type": "unsubscribed", "stream"}
  resumed      {"type": "resumed", "stream", "recovered", "reason", "epoch", "seq", "replayed"}
               recovered false: messages were lost to this client (older than the history, or
               the stream's epoch changed because Redis lost its data): reload your state.
  ack          {"type": "ack", "id", "stream", "seq", "epoch", "duplicate"}
  echo         {"type": "echo", "replica", "payload", "id"?}
  pong         {"type": "pong", "replica", "id"?}
  error        {"type": "error", "code", "message", "ref"?, "stream"?, "retry_after_ms"?}
               a frame was refused; rate_limited carries retry_after_ms
  lab          {"type": "lab", "way": 3, "replica", "text", "id"}  written straight to the socket
               by the replica holding it (the transport lab; no stream, no seq, no replay)
  push / message / broadcast / ops: the envelope, see `envelope()`, plus "seq" and "epoch"
               (ops: the replicas' stats, on the staff-only `ops` stream)
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any

CLIENT_FRAME_TYPES = frozenset({"echo", "ping", "subscribe", "unsubscribe", "resume", "publish", "ack"})
# A resume or URL may name at most this many streams: a bound on the work one frame causes.
MAX_STREAMS_PER_FRAME = 50
# A client-made id refers back to a frame in errors and answers; bounded so it cannot be abused.
MAX_CLIENT_ID_CHARS = 64


# JSON nesting deeper than this is refused: no message needs it, and Python's parser and encoder
# recurse (5000 levels raised RecursionError and crashed the socket).
MAX_JSON_DEPTH = 32


class InvalidJson(ValueError):
    """Text that is not strict, standard JSON (RFC 8259) within MAX_JSON_DEPTH levels."""


class InvalidFrame(Exception):
    """A client frame the server will not act on. `code` is stable; `message` says what to do."""

    def __init__(self, code: str, message: str, ref: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.ref = ref


@dataclass(frozen=True)
class ClientFrame:
    type: str
    id: str | None
    data: dict[str, Any]


def encode(frame: dict[str, Any]) -> str:
    """Compact JSON, the one encoding every frame uses. Standard JSON only: NaN and Infinity
    raise ValueError, since browsers' JSON.parse (and Go's, and Node's) refuse them."""
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _refuse_constant(name: str) -> Any:
    raise InvalidJson(f"{name} is not JSON: send numbers, or null.")


# A \u escape of a UTF-16 surrogate: a valid pair is two of them; one alone is no character,
# and Python would decode it into a string that cannot be encoded again (the socket crashed).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def loads(text: str | bytes) -> Any:
    """Parse strict JSON from a client (frames, `?resume=`, API bodies, command arguments).

    Refused with InvalidJson: malformed text, NaN/Infinity, nesting deeper than MAX_JSON_DEPTH,
    lone surrogates. Each check costs nothing for the usual small frame: the depth is walked
    only when the text has more brackets than the limit, the strings only when it escapes a
    surrogate.
    """
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise InvalidJson(f"JSON may nest at most {MAX_JSON_DEPTH} levels.") from None
    except InvalidJson:
        raise
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise InvalidJson(f"Not valid JSON ({exc}).") from None
    opener_count = text.count("[") + text.count("{") if isinstance(text, str) else (
        text.count(b"[") + text.count(b"{")
    )
    surrogates = _SURROGATE_ESCAPE.search(text if isinstance(text, str) else text.decode("latin-1"))
    if opener_count > MAX_JSON_DEPTH or surrogates:
        _check_value(value, check_strings=surrogates is not None)
    return value


def _check_value(value: Any, *, check_strings: bool) -> None:
    """Walk a parsed value without recursion: its depth, and (if asked) its strings."""
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            if depth > MAX_JSON_DEPTH:
                raise InvalidJson(f"JSON may nest at most {MAX_JSON_DEPTH} levels.")
            if check_strings:
                pending.extend((key, depth) for key in item)
            pending.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            if depth > MAX_JSON_DEPTH:
                raise InvalidJson(f"JSON may nest at most {MAX_JSON_DEPTH} levels.")
            pending.extend((child, depth + 1) for child in item)
        elif check_strings and isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidJson(
                    "Strings must be valid Unicode: a \\u escape of a lone surrogate "
                    "(\\ud800-\\udfff without its pair) is not a character."
                ) from None


def parse_client_frame(text: str, *, max_bytes: int) -> ClientFrame:
    # len(text) <= bytes <= 4 * len(text): skip the encode for the common small frame.
    if len(text) > max_bytes or (4 * len(text) > max_bytes and len(text.encode()) > max_bytes):
        raise InvalidFrame(
            "frame_too_large", f"Frames may be at most {max_bytes} bytes; split the message."
        )
    try:
        data = loads(text)
    except InvalidJson as exc:
        raise InvalidFrame(
            "bad_json", f'Frames must be JSON objects such as {{"type": "ping"}}: {exc}'
        ) from None
    if not isinstance(data, dict):
        raise InvalidFrame("bad_frame", 'Frames must be JSON objects such as {"type": "ping"}.')
    frame_id = data.get("id")
    if frame_id is not None and (
        not isinstance(frame_id, str) or not 0 < len(frame_id) <= MAX_CLIENT_ID_CHARS
    ):
        raise InvalidFrame(
            "bad_id", f"'id' must be a string of 1 to {MAX_CLIENT_ID_CHARS} characters."
        )
    frame_type = data.get("type")
    if not isinstance(frame_type, str):
        raise InvalidFrame("missing_type", "Every frame needs a string 'type'.", frame_id)
    if frame_type not in CLIENT_FRAME_TYPES:
        known = ", ".join(sorted(CLIENT_FRAME_TYPES))
        raise InvalidFrame(
            "unknown_type", f"Unknown frame type {frame_type[:40]!r}; known: {known}.", frame_id
        )
    _VALIDATORS.get(frame_type, _no_check)(data, frame_id)
    return ClientFrame(type=frame_type, id=frame_id, data=data)


@dataclass(frozen=True)
class Position:
    """A client's place in a stream: the epoch it saw and the last seq it has."""

    epoch: str | None
    seq: int


def parse_position(value: Any, *, where: str, ref: str | None = None) -> Position:
    if not isinstance(value, dict):
        raise InvalidFrame("bad_position", f"{where} must be {{\"epoch\": str, \"seq\": int}}.", ref)
    epoch, seq = value.get("epoch"), value.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise InvalidFrame("bad_position", f"{where}: 'seq' must be a whole number >= 0.", ref)
    if epoch is not None and (not isinstance(epoch, str) or not 0 < len(epoch) <= 64):
        raise InvalidFrame("bad_position", f"{where}: 'epoch' must be a short string or null.", ref)
    return Position(epoch, seq)


def parse_positions(value: Any, *, where: str, ref: str | None = None) -> dict[str, Position]:
    if not isinstance(value, dict):
        raise InvalidFrame("bad_resume", f"{where} must map streams to positions.", ref)
    if len(value) > MAX_STREAMS_PER_FRAME:
        raise InvalidFrame(
            "bad_resume", f"{where} may name at most {MAX_STREAMS_PER_FRAME} streams.", ref
        )
    return {
        str(stream)[:120]: parse_position(position, where=f"{where}[{str(stream)[:60]!r}]", ref=ref)
        for stream, position in value.items()
    }


def parse_resume_query(query_string: bytes) -> dict[str, Position]:
    """The positions in `?resume=<JSON>`, or {} when the URL names none."""
    from urllib.parse import parse_qs

    values = parse_qs(query_string.decode("latin-1")).get("resume")
    if not values:
        return {}
    try:
        data = loads(values[0])
    except InvalidJson as exc:
        raise InvalidFrame("bad_resume", f"?resume= must be URL-encoded JSON: {exc}") from None
    return parse_positions(data, where="?resume=")


def _require_stream(data: dict[str, Any], ref: str | None) -> None:
    if not isinstance(data.get("stream"), str) or not data["stream"]:
        raise InvalidFrame("bad_stream", "'stream' must be a stream name such as 'room:lobby'.", ref)


def _check_subscribe(data: dict[str, Any], ref: str | None) -> None:
    _require_stream(data, ref)
    if data.get("from") is not None:
        data["from"] = parse_position(data["from"], where="'from'", ref=ref)


def _check_resume(data: dict[str, Any], ref: str | None) -> None:
    data["streams"] = parse_positions(data.get("streams"), where="'streams'", ref=ref)


def _check_publish(data: dict[str, Any], ref: str | None) -> None:
    if ref is None:
        raise InvalidFrame(
            "missing_id", "A publish needs a client-made 'id' so it can be retried safely."
        )
    _require_stream(data, ref)
    if "payload" not in data:
        raise InvalidFrame("missing_payload", "A publish needs a 'payload' (any JSON value).", ref)


def _check_ack(data: dict[str, Any], ref: str | None) -> None:
    _require_stream(data, ref)
    seq = data.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise InvalidFrame("bad_ack", "An ack needs 'stream' and a whole number 'seq' >= 1.", ref)


def _no_check(data: dict[str, Any], ref: str | None) -> None:
    return None


_VALIDATORS = {
    "subscribe": _check_subscribe,
    "unsubscribe": _require_stream,
    "resume": _check_resume,
    "publish": _check_publish,
    "ack": _check_ack,
}


def error_frame(
    code: str, message: str, ref: str | None = None, *, stream: str | None = None,
    retry_after_ms: int | None = None,
) -> str:  # fmt: skip
    frame: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if ref is not None:
        frame["ref"] = ref
    if stream is not None:
        frame["stream"] = stream  # the stream it is about: access_revoked names the one taken away
    if retry_after_ms is not None:
        frame["retry_after_ms"] = retry_after_ms  # rate_limited: when sending again may succeed
    return encode(frame)


def now_ms() -> int:
    return int(time.time() * 1000)


def envelope(
    *, kind: str, stream: str, message_id: str, payload: Any, origin: str
) -> dict[str, Any]:
    """What every published message looks like on the wire, whichever way it was sent."""
    return {
        "type": kind,
        "stream": stream,
        "id": message_id,
        "payload": payload,
        "sent_at": now_ms(),
        "origin": origin,
    }
