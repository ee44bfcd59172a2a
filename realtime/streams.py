"""Stream kinds: who may read and publish to `<kind>:<key>` streams, decided by the app that owns
the kind, without the core importing the app.

The core's own kinds (`user:<id>`, `broadcast`, `ops`) are checked in realtime/selectors.py. Any
other kind is registered by a project or an app, in its `AppConfig.ready()`:

    streams.register(
        "order",
        key=r"[0-9]{1,18}",                   # what may follow "order:" (fullmatch)
        can_read=can_watch_order,             # (user, stream) -> bool, sync or async
        can_publish=can_comment_on_order,     # optional: sockets may not publish without it
    )

or in settings, with dotted paths (loaded when the realtime app is ready):

    SWITCHBOARD_STREAM_KINDS = {
        "order": {"key": r"[0-9]{1,18}", "can_read": "shop.realtime.can_watch_order"},
    }

A check gets the user and the whole stream name; it allows by returning True (exactly: any
other value refuses, so a check that forgets to return does not open a stream to everyone), and
may raise StreamDenied to refuse with its own code and message. A sync check runs in a thread
and may use the ORM; an async one runs on the event loop. Every way a socket reaches a stream
goes through the one check: subscribe, resume, `?resume=` on connect, and the recheck that
`access.recheck(streams=[...])` asks for when permissions change.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from django.utils.module_loading import import_string

# A kind's name: it also names the channel-layer group (`<kind>.<key>`) and Redis keys.
KIND_RE = re.compile(r"[a-z][a-z0-9_]{0,19}")
# What every key must be, whatever the kind's own pattern says: channel-layer group names
# allow only these characters (and the whole name must stay short).
SAFE_KEY_RE = re.compile(r"[A-Za-z0-9_-]{1,50}")
# The core's kinds: not for an app to register.
CORE_KINDS = frozenset({"user", "broadcast", "ops"})

# (user, stream) -> True to allow; anything else (or StreamDenied) refuses.
Check = Callable[[Any, str], "bool | Awaitable[bool]"]


class StreamDenied(Exception):
    """The user may not read (or write) that stream. `code` is stable, `message` explains."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class StreamKind:
    name: str
    key: re.Pattern[str]
    can_read: Check
    can_publish: Check | None = None


_kinds: dict[str, StreamKind] = {}


def register(
    kind: str, *, key: str, can_read: Check, can_publish: Check | None = None
) -> StreamKind:
    """Let `can_read` (and `can_publish`) decide who reads (and publishes to) `<kind>:<key>`
    streams whose key fullmatches `key`. One registration per kind; the same again is fine."""
    if not KIND_RE.fullmatch(kind) or kind in CORE_KINDS:
        raise ValueError(
            f"{kind!r} cannot be a stream kind: lower-case letters, digits and underscores, "
            f"starting with a letter, at most 20; not one of {sorted(CORE_KINDS)}."
        )
    registered = StreamKind(kind, re.compile(key), can_read, can_publish)
    current = _kinds.get(kind)
    if current is not None and current != registered:
        raise ValueError(f"Stream kind {kind!r} is already registered (by {current.can_read!r}).")
    _kinds[kind] = registered
    return registered


def register_from_settings(kinds: dict[str, dict[str, str]]) -> None:
    """SWITCHBOARD_STREAM_KINDS: {kind: {"key": regex, "can_read": path, "can_publish": path}}."""
    for kind, spec in kinds.items():
        publish_path = spec.get("can_publish")
        register(
            kind,
            key=spec["key"],
            can_read=import_string(spec["can_read"]),
            can_publish=import_string(publish_path) if publish_path else None,
        )


def kind_of(stream: str) -> tuple[StreamKind, str] | None:
    """The registered kind of `stream` and its key, when the name is one of that kind's."""
    name, sep, key = stream.partition(":")
    kind = _kinds.get(name)
    if not sep or kind is None or not SAFE_KEY_RE.fullmatch(key) or not kind.key.fullmatch(key):
        return None
    return kind, key


def registered() -> list[str]:
    return sorted(_kinds)


def forget(kind: str) -> None:
    """Unregister (tests)."""
    _kinds.pop(kind, None)
