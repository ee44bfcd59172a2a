"""Who may read a stream of a kind an app owns, without the core importing the app.

The core knows its own kinds (user, broadcast, ops: realtime/selectors.py). A kind whose keys are
an app's rows (room:<slug>, the chat's rooms) is checked by that app: it registers a
`can_read(user, key)` for the kind in its `ready()`, which returns None when the user may read
the stream and raises StreamDenied when not. It runs in sync code and may use the ORM. A kind no
app registered is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class StreamDenied(Exception):
    """The user may not read (or write) that stream. `code` is stable, `message` explains."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# can_read(user, key): None, or raises StreamDenied.
ReadCheck = Callable[[Any, str], None]

_readers: dict[str, ReadCheck] = {}


def register(kind: str, can_read: ReadCheck) -> None:
    """Let `can_read` decide who reads `<kind>:<key>` streams (one app per kind)."""
    current = _readers.get(kind)
    if current is not None and current is not can_read:
        raise ValueError(f"Stream kind {kind!r} is already checked by {current!r}.")
    _readers[kind] = can_read


def reader(kind: str) -> ReadCheck | None:
    """The registered check for `kind`, or None when no app registered one."""
    return _readers.get(kind)
