"""The wire protocol between browsers and replicas: frame types, the envelope, validation.

Clients speak only the types listed in CLIENT_FRAME_TYPES; the server maps them to its own
handlers and never lets a client choose a channel-layer message type.

Server -> client frames
  hello   {"type": "hello", "replica", "user", "connection", "streams"}   first frame on a socket
  echo    {"type": "echo", "replica", "payload", "id"?}                   answer to an echo
  pong    {"type": "pong", "replica", "id"?}                              answer to a ping
  error   {"type": "error", "code", "message", "ref"?}                    a frame was refused
  push / broadcast: the envelope, see `envelope()`
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

CLIENT_FRAME_TYPES = frozenset({"echo", "ping"})
# A client-made id refers back to a frame in errors and answers; bounded so it cannot be abused.
MAX_CLIENT_ID_CHARS = 64


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
    """Compact JSON, the one encoding every frame uses."""
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=False)


def parse_client_frame(text: str, *, max_bytes: int) -> ClientFrame:
    # len(text) <= bytes <= 4 * len(text): skip the encode for the common small frame.
    if len(text) > max_bytes or (4 * len(text) > max_bytes and len(text.encode()) > max_bytes):
        raise InvalidFrame(
            "frame_too_large", f"Frames may be at most {max_bytes} bytes; split the message."
        )
    try:
        data = json.loads(text)
    except ValueError:
        raise InvalidFrame(
            "bad_json", 'Frames must be JSON objects such as {"type": "ping"}.'
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
    return ClientFrame(type=frame_type, id=frame_id, data=data)


def error_frame(code: str, message: str, ref: str | None = None) -> str:
    frame: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if ref is not None:
        frame["ref"] = ref
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
