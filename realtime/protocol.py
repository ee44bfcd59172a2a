"""The wire protocol between browsers and replicas: frame types, the envelope, validation.

The protocol is one table, as data, below: CLIENT_FRAMES and SERVER_FRAMES (each frame type with
its required and optional fields), CLOSE_CODES and ERROR_CODES (each with what a client should do).
The parser accepts only CLIENT_FRAME_TYPES, which is read from it; the server maps those to its
own handlers and never lets a client choose a channel-layer message type. A unit test
(tests/unit/test_protocol_table.py) holds realtime/static/realtime/client.js, the Python client
(clients/python/switchboard_client) and the server's code to the table; docs/architecture.md
explains it.

A client may also put its positions in the URL, `/ws/?resume=<JSON {stream: {epoch, seq}}>`,
so that replay starts before any live message (the way the bundled clients reconnect).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Any, Literal
from uuid import UUID

try:
    import orjson
except ImportError:  # optional: the standard library's encoder then
    orjson = None  # type: ignore[assignment]

# --- The table ---------------------------------------------------------------------------------
# Every frame's "type" is implied; the fields listed are the others. Adding a frame type, a close
# code or an error code starts here, and the table test says which client or code must follow.


class Handling(StrEnum):
    """What a client does with a server frame."""

    # An envelope with a seq: dropped if its (epoch, seq) was seen, else delivered once, its
    # position kept (and sent back as ?resume=) and acknowledged.
    STREAM = "stream"
    # Changes the client's own state (positions, outbox, connection): every client handles it.
    STATE = "state"
    # Passed to the application as it is (client.js: an event named by its type).
    EVENT = "event"


class CloseAction(StrEnum):
    """What a client does when its socket closes with a code."""

    STOP = "stop"  # do not reconnect: the user has to log in first
    TRY_LATER = "try_later"  # reconnect, backing off from a longer base
    RETRY = "retry"  # reconnect with the ordinary backoff (also any code not in CLOSE_CODES)


class ErrorAction(StrEnum):
    """What a client does with an error frame (`ref` names the frame it refused, if any)."""

    RESEND = "resend"  # not acted on, for a passing reason: the same frame (same id) again later
    FORGET_STREAM = "forget_stream"  # stop asking for the stream named in the frame's `stream`
    REFUSED = "refused"  # the frame was refused; sending it again would not help
    NOTICE = "notice"  # about the socket or a stream, not a frame: show it (a close may follow)


@dataclass(frozen=True)
class FrameSpec:
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()
    handling: Handling | None = None  # server frames only
    about: str = ""


@dataclass(frozen=True)
class CloseCode:
    name: str
    # "consumer": realtime's consumer; "daphne": Daphne or Autobahn itself; "client": a client
    # closing; "nobody": no part of Switchboard sends it, clients honour it as RFC 6455 says.
    sent_by: Literal["consumer", "daphne", "client", "nobody"]
    client_should: CloseAction | None  # None: a code the client sends
    meaning: str


@dataclass(frozen=True)
class ErrorCode:
    client_should: ErrorAction
    meaning: str


CLIENT_FRAMES: Mapping[str, FrameSpec] = {
    "echo": FrameSpec((), ("payload", "id"), about="answered with echo, naming the replica"),
    "ping": FrameSpec((), ("id",), about="answered with pong"),
    "subscribe": FrameSpec(
        ("stream",),
        ("from", "id"),
        about="from: {epoch, seq} the client has; without it the stream starts at its head "
        "(answered with subscribed), with it what was missed is replayed, then resumed",
    ),
    "unsubscribe": FrameSpec(("stream",), ("id",), about="answered with unsubscribed"),
    "resume": FrameSpec(
        ("streams",),
        ("id",),
        about="streams: {stream: {epoch, seq}} (at most MAX_STREAMS_PER_FRAME): replay, then "
        "resumed per stream",
    ),
    "publish": FrameSpec(
        ("id", "stream", "payload"),
        about="id: client-made, for idempotency (a repeated id is published once and acked "
        "again); answered with ack",
    ),
    "ack": FrameSpec(
        ("stream", "seq"),
        ("id",),
        about="'I have everything up to seq' (a user stream's mark, a room's counts); no answer",
    ),
}


def _envelope_spec(about: str) -> FrameSpec:
    # envelope() makes all but seq and epoch, which the publish script adds; a publish from a
    # socket (and a chat line) adds the sender's username.
    return FrameSpec(
        ("stream", "id", "payload", "sent_at", "origin", "seq", "epoch"),
        ("sender",),
        Handling.STREAM,
        about,
    )


SERVER_FRAMES: Mapping[str, FrameSpec] = {
    "hello": FrameSpec(
        ("replica", "user", "user_id", "connection", "streams"),
        (),
        Handling.STATE,
        "first on every socket; streams: {stream: {epoch, seq}} where each starts; connection: "
        "this socket's id on its replica (the transport lab's way 3)",
    ),
    "subscribed": FrameSpec(
        ("stream", "epoch", "seq"), (), Handling.STATE, "a subscribe without from: the head"
    ),
    # by: "server" when the server API took the stream away (realtime/control.py).
    "unsubscribed": FrameSpec(("stream",), ("id", "by"), Handling.EVENT),
    "resumed": FrameSpec(
        ("stream", "recovered", "reason", "epoch", "seq", "replayed"),
        (),
        Handling.STATE,
        "after a replay; reason: one of RESUMED_REASONS, which also fixes `recovered`; "
        "recovered false: messages were lost to this client, reload your state",
    ),
    "ack": FrameSpec(
        ("id", "stream", "seq", "epoch", "duplicate"),
        ("message_id",),
        Handling.STATE,
        "a publish, done; duplicate: its id was published before (this is that seq); typing: "
        "seq and epoch null; a chat line adds message_id (its row)",
    ),
    "echo": FrameSpec(("replica", "payload"), ("id",), Handling.EVENT),
    "pong": FrameSpec(("replica",), ("id",), Handling.EVENT),
    "error": FrameSpec(
        ("code", "message"),
        ("ref", "stream", "retry_after_ms"),
        Handling.STATE,
        "code: one of ERROR_CODES; ref: the refused frame's id; stream: the stream it is about; "
        "retry_after_ms: when sending again may succeed (rate_limited)",
    ),
    "reconnect": FrameSpec(
        ("after_ms", "reason", "replica"),
        (),
        Handling.STATE,
        "the replica is draining (realtime/drain.py): leave after after_ms, the slot it gave "
        "this socket, and reconnect at once (HAProxy sends the new connection elsewhere), "
        "resuming from the positions held; reason: draining",
    ),
    "lab": FrameSpec(
        ("way", "replica", "id", "text"),
        (),
        Handling.EVENT,
        "the transport lab's way 3, written straight to the socket by the replica holding it "
        "(no stream, no seq, no replay)",
    ),
    "presence": FrameSpec(
        ("event", "user", "user_id", "stream", "origin"),
        (),
        Handling.EVENT,
        "ephemeral (no seq, no history; only with ?ephemeral=1): event is join or leave",
    ),
    "typing": FrameSpec(
        ("user", "user_id", "stream", "origin"),
        (),
        Handling.EVENT,
        "ephemeral (no seq, no history; only with ?ephemeral=1)",
    ),
    "push": _envelope_spec("on a user stream, user:<id>"),
    "message": _envelope_spec("on a room stream, room:<slug>, or an app's own kind (streams.py)"),
    "broadcast": _envelope_spec("on the broadcast stream, to every socket"),
    "ops": _envelope_spec("the replicas' stats, on the staff-only ops stream"),
}

# A `resumed` frame's reasons, each with its `recovered` (a client acts on `recovered` alone; the
# reason says why, for logs and pages).
RESUMED_REASONS: Mapping[str, tuple[bool, str]] = {
    "resume": (True, "everything missed was replayed from the Redis history"),
    "archive": (
        True,
        "everything missed was replayed, the older part from the history archive in the "
        "database (a stream whose kind keeps one, past the Redis window)",
    ),
    "gap": (False, "some messages are older than the history kept (or were never kept)"),
    "epoch": (False, "Redis lost the stream, or a failover began a new epoch"),
    "ahead": (False, "the position is past anything the stream reached"),
}

CLOSE_CODES: Mapping[int, CloseCode] = {
    4401: CloseCode(
        "unauthorized",
        "consumer",
        CloseAction.STOP,
        "not logged in, or the login ended (logout, session deleted or expired, password "
        "changed, deactivated), a bad connection token or a kick; an error frame (unauthorized, "
        "bad_token, kicked, session_ended or access_revoked) comes first",
    ),
    4429: CloseCode(
        "too_many_sockets",
        "consumer",
        CloseAction.TRY_LATER,
        "the user has MAX_SOCKETS_PER_USER sockets open on the cluster already",
    ),
    4503: CloseCode(
        "try_again_later",
        "consumer",
        CloseAction.TRY_LATER,
        "Redis unreachable at connect (error unavailable first); RFC 6455's 1013, which "
        "Autobahn does not let an application send",
    ),
    1013: CloseCode(
        "try_again_later",
        "consumer",
        CloseAction.TRY_LATER,
        "the replica is overloaded: MAX_SOCKETS_PER_REPLICA sockets open, or new sockets past "
        "MAX_CONNECTS_PER_SEC (error overloaded first); written on Daphne's protocol directly",
    ),
    1012: CloseCode(
        "service_restart",
        "consumer",
        CloseAction.RETRY,
        "the replica is draining (error draining first, at connect) or its drain window ended "
        "before this socket left; reconnect, and HAProxy sends it to another replica",
    ),
    1008: CloseCode(
        "policy_violation",
        "consumer",
        CloseAction.RETRY,
        "the socket kept sending past its frame rate (error rate_limited first); written on "
        "Daphne's protocol directly, since Autobahn refuses 1008 to applications",
    ),
    1009: CloseCode(
        "message_too_big",
        "daphne",
        CloseAction.RETRY,
        "a frame above Daphne's 1 MiB limit (realtime/serve.py turns failByDrop off so a client "
        "sees this code, not 1006)",
    ),
    1011: CloseCode(
        "internal_error",
        "daphne",
        CloseAction.RETRY,
        "the consumer raised outside the handling of one frame (a bug of ours; a frame that "
        "fails is answered with error internal_error and the socket stays open)",
    ),
    1000: CloseCode("normal", "client", None, "client.js's close(): final, no reconnect"),
    4000: CloseCode(
        "client_gave_up",
        "client",
        None,
        "the client dropped this socket (no answer to a ping, drop(), or a reconnect frame's "
        "slot) and reconnects",
    ),
}

ERROR_CODES: Mapping[str, ErrorCode] = {
    # The frame itself
    "bad_json": ErrorCode(
        ErrorAction.REFUSED,
        "not strict JSON (NaN, Infinity, lone surrogates and nesting past MAX_JSON_DEPTH count)",
    ),
    "bad_frame": ErrorCode(ErrorAction.REFUSED, "not a JSON object"),
    "frame_too_large": ErrorCode(
        ErrorAction.REFUSED, "above MAX_CLIENT_FRAME_BYTES (Daphne closes with 1009 above 1 MiB)"
    ),
    "binary_not_supported": ErrorCode(ErrorAction.REFUSED, "a binary frame: send JSON text"),
    "bad_id": ErrorCode(
        ErrorAction.REFUSED, "'id' is not a string of 1 to MAX_CLIENT_ID_CHARS characters"
    ),
    "missing_type": ErrorCode(ErrorAction.REFUSED, "no string 'type'"),
    "unknown_type": ErrorCode(ErrorAction.REFUSED, "a type that is not in CLIENT_FRAMES"),
    "missing_id": ErrorCode(ErrorAction.REFUSED, "a publish without a client-made 'id'"),
    "missing_payload": ErrorCode(ErrorAction.REFUSED, "a publish without a 'payload'"),
    "bad_stream": ErrorCode(
        ErrorAction.REFUSED, "not a stream name (user:<id>, room:<slug>, broadcast, ops)"
    ),
    "bad_position": ErrorCode(
        ErrorAction.REFUSED, "a position that is not {epoch: short string or null, seq: int >= 0}"
    ),
    "bad_resume": ErrorCode(
        ErrorAction.REFUSED,
        "'streams' or ?resume= is not a map of at most MAX_STREAMS_PER_FRAME streams to positions",
    ),
    "bad_ack": ErrorCode(
        ErrorAction.REFUSED, "an ack without a whole seq >= 1, or of a seq not delivered here"
    ),
    "bad_payload": ErrorCode(
        ErrorAction.REFUSED,
        "a payload that cannot be published (not JSON, too large, a chat line without text)",
    ),
    # What it asks for
    "not_subscribed": ErrorCode(ErrorAction.REFUSED, "an unsubscribe from a stream not held"),
    "forbidden_stream": ErrorCode(
        ErrorAction.REFUSED, "the user may not read, or not publish to, that stream"
    ),
    "unknown_room": ErrorCode(
        ErrorAction.REFUSED,
        "no room by that name that the user may join (a private one looks the same to others)",
    ),
    "too_many_streams": ErrorCode(
        ErrorAction.REFUSED, "the socket holds MAX_STREAMS_PER_SOCKET streams already"
    ),
    "seq_ahead": ErrorCode(
        ErrorAction.NOTICE, "a resume from a seq the stream never reached: it goes on from the head"
    ),
    # Limits and failures
    "rate_limited": ErrorCode(
        ErrorAction.RESEND,
        "over a socket budget (frames, publishes, typing): send it again after retry_after_ms; "
        "without retry_after_ms (chat lines a minute) it was not posted, tell the user; a socket "
        "that keeps on is closed with 1008",
    ),
    "replay_limited": ErrorCode(
        ErrorAction.NOTICE,
        "said once: the socket asked for more history than SOCKET_REPLAY_BYTES_PER_MIN; the "
        "replay goes on at that pace, nothing is lost",
    ),
    "unavailable": ErrorCode(
        ErrorAction.RESEND,
        "Redis unreachable, nothing done: send the same frame again shortly (at connect, "
        "close 4503 follows)",
    ),
    "internal_error": ErrorCode(
        ErrorAction.REFUSED,
        "the server failed on this frame (a bug of ours); not acted on, the socket stays open",
    ),
    # The login and the socket
    "unauthorized": ErrorCode(ErrorAction.NOTICE, "not logged in; close 4401 follows"),
    "kicked": ErrorCode(
        ErrorAction.NOTICE,
        "a service ended this user's sockets (the message is its reason); close 4401 follows",
    ),
    "bad_token": ErrorCode(
        ErrorAction.NOTICE,
        "the connection token is expired, tampered with or not ours (the message says which); "
        "close 4401 follows: get a new token",
    ),
    "session_ended": ErrorCode(
        ErrorAction.NOTICE, "the login session ended (logout, expiry); close 4401 follows"
    ),
    "access_revoked": ErrorCode(
        ErrorAction.FORGET_STREAM,
        "the stream named in 'stream' was taken away: stop asking for it; without 'stream' the "
        "login is no longer valid and close 4401 follows",
    ),
    "draining": ErrorCode(
        ErrorAction.NOTICE, "the replica is draining and takes no new sockets; close 1012 follows"
    ),
    "overloaded": ErrorCode(
        ErrorAction.NOTICE,
        "the replica is at MAX_SOCKETS_PER_REPLICA or MAX_CONNECTS_PER_SEC; close 1013 follows",
    ),
    "too_many_sockets": ErrorCode(
        ErrorAction.NOTICE, "the user has MAX_SOCKETS_PER_USER sockets open; close 4429 follows"
    ),
}

CLIENT_FRAME_TYPES = frozenset(CLIENT_FRAMES)
# The close codes the server sends, by name (each is in CLOSE_CODES above).
CLOSE_UNAUTHORIZED = 4401
CLOSE_TOO_MANY_SOCKETS = 4429
CLOSE_TRY_AGAIN_LATER = 4503
CLOSE_POLICY_VIOLATION = 1008
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


# One encoder for every frame: json.dumps with options makes a JSONEncoder per call, which cost
# a push as much as the encoding itself.
def _as_orjson_writes(value: Any) -> Any:
    """What orjson writes for the two types it takes that the standard encoder does not, so
    that a frame is accepted (and written) the same whichever encoder writes it."""
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, Enum):
        return value.value
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


_ENCODER = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_as_orjson_writes
)

# orjson (C, optional as hiredis is) writes the same compact JSON at a tenth of the standard
# encoder's CPU (0.3 against 3 µs for an envelope; a push encodes its payload twice, a batch
# each message's): docs/performance.md, the eighth round. Only for the builtin types (and UUIDs
# and Enum members, which both write alike): subclasses, datetimes and dataclasses pass through
# to it, so they fail there and go to the standard encoder, which converts or refuses them as
# it always did. Floats may differ in form only (1e-7 against 1e-07): the same number.
_ORJSON_OPTIONS = (
    orjson.OPT_PASSTHROUGH_SUBCLASS
    | orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
    if orjson is not None
    else 0
)


def encode(frame: dict[str, Any]) -> str:
    """Compact JSON, the one encoding every frame uses. Standard JSON only: NaN and Infinity
    raise ValueError, since browsers' JSON.parse (and Go's, and Node's) refuse them."""
    text = _orjson_dumps(frame)
    return text.decode() if text is not None else _ENCODER.encode(frame)


def encode_bytes(frame: dict[str, Any]) -> bytes:
    """`encode(frame)` as UTF-8, for what goes out as bytes (an HTTP answer, a size check):
    orjson's bytes as they are, not decoded and encoded again. A lone surrogate raises
    UnicodeEncodeError (a ValueError), as encoding `encode`'s text would."""
    text = _orjson_dumps(frame)
    return text if text is not None else _ENCODER.encode(frame).encode()


def _orjson_dumps(frame: dict[str, Any]) -> bytes | None:
    """orjson's encoding of `frame`, or None where the standard encoder's is needed."""
    if orjson is None:
        return None
    try:
        text = orjson.dumps(frame, option=_ORJSON_OPTIONS)
    except TypeError:  # (orjson.JSONEncodeError) ints past 64 bits, keys that are not
        return None  # strings, lone surrogates, other types, deep nesting: the standard encoder's
    # orjson writes NaN and Infinity as null, where the standard encoder raises: a text with a
    # null in it is the standard encoder's to make.
    return text if b"null" not in text else None


def _refuse_constant(name: str) -> Any:
    raise InvalidJson(f"{name} is not JSON: send numbers, or null.")


# A \u escape of a UTF-16 surrogate: a valid pair is two of them; one alone is no character,
# and Python would decode it into a string that cannot be encoded again (the socket crashed).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


# One decoder for every parse: json.loads() with an option builds a decoder and its scanner per
# call (and some of those outlived the call, scattered in the heap; docs/memory.md).
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)


# orjson reads JSON at about half the standard parser's CPU, checks included (2.1 against 4.3 µs
# for a push's body, 1.6 against 2.2 for a frame), and reads every text it accepts as the
# standard parser does, but for integers past 64 bits, which it makes floats: a text with a run
# of 19 digits anywhere (strings too: the check is a byte scan) is the standard parser's.
# Whatever orjson refuses (NaN, Infinity, 1e400, lone surrogates, a BOM, UTF-16, malformed text)
# goes to the standard parser as well, which reads or refuses it as it always did
# (tests/unit/test_json_reading.py).
_DIGITS_TO_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_INTEGER = b"0" * 19


def loads(text: str | bytes) -> Any:
    """Parse strict JSON from a client (frames, `?resume=`, API bodies, command arguments).

    Refused with InvalidJson: malformed text, NaN/Infinity, nesting deeper than MAX_JSON_DEPTH,
    lone surrogates. Each check costs nothing for the usual small frame: the depth is walked
    only when the text has more brackets than the limit, the strings only when it escapes a
    surrogate.
    """
    if orjson is not None:
        raw = text if isinstance(text, bytes) else text.encode(errors="surrogatepass")
        if _LONG_INTEGER not in raw.translate(_DIGITS_TO_ZERO):
            try:
                value = orjson.loads(raw)
            except orjson.JSONDecodeError:
                pass  # the standard parser's to read or refuse, with its own message
            else:
                # orjson refuses lone surrogates: only the depth is left to check.
                if _opener_count(raw) > MAX_JSON_DEPTH:
                    _check_depth(value)
                return value
    return _standard_loads(text)


def _opener_count(text: str | bytes) -> int:
    if isinstance(text, str):
        return text.count("[") + text.count("{")
    return text.count(b"[") + text.count(b"{")


def _standard_loads(text: str | bytes) -> Any:
    try:
        if isinstance(text, bytes):  # as json.loads takes bytes
            text = text.decode(json.detect_encoding(text), "surrogatepass")
        value = _DECODER.decode(text)
    except RecursionError:
        raise InvalidJson(f"JSON may nest at most {MAX_JSON_DEPTH} levels.") from None
    except InvalidJson:
        raise
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise InvalidJson(f"Not valid JSON ({exc}).") from None
    surrogates = _SURROGATE_ESCAPE.search(text if isinstance(text, str) else text.decode("latin-1"))
    if _opener_count(text) > MAX_JSON_DEPTH:
        _check_depth(value)
    if surrogates:
        _check_strings(value)
    return value


_CONTAINERS = (dict, list)


def _check_depth(value: Any) -> None:
    """Refuse a parsed value nested deeper than MAX_JSON_DEPTH, walked without recursion.

    A level at a time, containers only: a batch of pushes has more brackets than
    MAX_JSON_DEPTH, so its body is walked on every request (14 µs for 20 messages, where a
    stack of (value, depth) pairs over every value took 25)."""
    level = [value] if isinstance(value, _CONTAINERS) else []
    depth = 1
    while level:
        if depth > MAX_JSON_DEPTH:
            raise InvalidJson(f"JSON may nest at most {MAX_JSON_DEPTH} levels.")
        below = []
        for item in level:
            for child in item.values() if isinstance(item, dict) else item:
                if isinstance(child, _CONTAINERS):
                    below.append(child)
        level = below
        depth += 1


def _check_strings(value: Any) -> None:
    """Refuse a parsed value holding a string that is not valid Unicode (a lone surrogate)."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            pending.extend(item)
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, str):
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
        raise InvalidFrame("bad_position", f'{where} must be {{"epoch": str, "seq": int}}.', ref)
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
        raise InvalidFrame(
            "bad_stream", "'stream' must be a stream name such as 'room:lobby'.", ref
        )


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
    code: str,
    message: str,
    ref: str | None = None,
    *,
    stream: str | None = None,
    retry_after_ms: int | None = None,
) -> str:
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
