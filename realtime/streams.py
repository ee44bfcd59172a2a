"""Stream kinds: who may read and publish to `<kind>:<key>` streams, what such a stream keeps
(history, and how much) and whether it tracks presence, decided by the app that owns the kind,
without the core importing the app.

The core's own kinds (`user:<id>`, `broadcast`, `ops`) are checked in realtime/selectors.py and
keep history with the global retention (HISTORY_MAXLEN, HISTORY_MAX_AGE_SECS), without presence.
Any other kind is registered by a project or an app, in its `AppConfig.ready()`:

    streams.register(
        "order",
        key=r"[0-9]{1,18}",                   # what may follow "order:" (fullmatch)
        can_read=can_watch_order,             # (user, stream) -> bool, sync or async
        can_publish=can_comment_on_order,     # optional: sockets may not publish without it
        history_maxlen=100,                   # optional: keep the last 100 (None: HISTORY_MAXLEN)
        history_max_age_secs=3600,            # optional: for an hour (None: HISTORY_MAX_AGE_SECS)
        presence=True,                        # optional: who is watching (default False)
        archive=True,                         # optional: kept in the database too (default False)
    )

or in settings, with dotted paths (loaded when the realtime app is ready):

    SWITCHBOARD_STREAM_KINDS = {
        "order": {
            "key": r"[0-9]{1,18}",
            "can_read": "shop.realtime.can_watch_order",
            "history_maxlen": 100,
            "presence": True,
            "archive": True,
        },
    }

A check gets the user and the whole stream name; it allows by returning True (exactly: any
other value refuses, so a check that forgets to return does not open a stream to everyone), and
may raise StreamDenied to refuse with its own code and message. A sync check runs in a thread
and may use the ORM; an async one runs on the event loop. Every way a socket reaches a stream
goes through the one check: subscribe, resume, `?resume=` on connect, and the recheck that
`access.recheck(streams=[...])` asks for when permissions change.

What a stream keeps, `policy_for(stream)` answers, for the core's kinds and the registered ones
alike (publish.py, presence.py and the API ask it):

- `history=False`: messages still get a seq and an epoch (order, duplicates, acks and
  idempotency keys work as everywhere), but nothing is kept to replay: a client that missed
  some (a resume from an older position, a full queue) is told `recovered: false`, and
  `GET /api/history` answers 400 `no_history`. For what is only worth having live.
- `history_maxlen` / `history_max_age_secs`: how many messages, and for how long, are kept to
  replay (a stream is trimmed exactly below 1000 entries, approximately above: broker).
- `presence=True`: a socket on such a stream has an entry in its presence set, and its sockets
  that asked for ephemeral frames hear joins and leaves (realtime/presence.py,
  `GET /api/presence?stream=`). The chat registers `room` with it.
- `archive=True`: every message is also written to the database (realtime/archive.py), after
  the publish and off its path, so a client that comes back after the Redis window moved past
  it is replayed from the archive (`resumed`, `recovered: true`, reason `archive`) and
  `GET /api/history` pages past the window. Only with history: the archive is the tier behind
  the Redis window, not a replacement for it. The chat registers `room` with it.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.utils.module_loading import import_string

# A kind's name: it also names the channel-layer group (`<kind>.<key>`) and Redis keys.
KIND_RE = re.compile(r"[a-z][a-z0-9_]{0,19}")
# What every key must be, whatever the kind's own pattern says: channel-layer group names
# allow only these characters (and the whole name must stay short).
SAFE_KEY_RE = re.compile(r"[A-Za-z0-9_-]{1,50}")
# The core's kinds: not for an app to register. They keep history with the global retention and
# have no presence (policy_for).
CORE_KINDS = frozenset({"user", "broadcast", "ops"})
# What a SWITCHBOARD_STREAM_KINDS entry may say: anything else is a typo, refused by name.
SETTINGS_FIELDS = frozenset(
    {
        "key",
        "can_read",
        "can_publish",
        "history",
        "history_maxlen",
        "history_max_age_secs",
        "presence",
        "archive",
    }
)

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
    history: bool = True  # False: seq and epoch, nothing kept to replay
    history_maxlen: int | None = None  # None: settings.HISTORY_MAXLEN
    history_max_age_secs: int | None = None  # None: settings.HISTORY_MAX_AGE_SECS
    presence: bool = False
    archive: bool = False  # True: also written to the database, replayed past the Redis window


@dataclass(frozen=True)
class KindPolicy:
    """What one stream keeps and tracks, with the global settings filled in (policy_for)."""

    history: bool
    history_maxlen: int  # messages kept to replay (when `history`)
    history_max_age_secs: float  # and for how long
    presence: bool
    archive: bool = False  # and in the database, behind the Redis window (realtime/archive.py)


_kinds: dict[str, StreamKind] = {}


def register(
    kind: str,
    *,
    key: str,
    can_read: Check,
    can_publish: Check | None = None,
    history: bool = True,
    history_maxlen: int | None = None,
    history_max_age_secs: int | None = None,
    presence: bool = False,
    archive: bool = False,
) -> StreamKind:
    """Let `can_read` (and `can_publish`) decide who reads (and publishes to) `<kind>:<key>`
    streams whose key fullmatches `key`; keep their history as said (None: the global
    HISTORY_MAXLEN / HISTORY_MAX_AGE_SECS), their presence if `presence`, and an archive of
    their messages in the database if `archive`. One registration per kind; the same again is
    fine."""
    if not KIND_RE.fullmatch(kind) or kind in CORE_KINDS:
        raise ValueError(
            f"{kind!r} cannot be a stream kind: lower-case letters, digits and underscores, "
            f"starting with a letter, at most 20; not one of {sorted(CORE_KINDS)}."
        )
    for name, flag in (("history", history), ("presence", presence), ("archive", archive)):
        if not isinstance(flag, bool):
            raise ValueError(f"Stream kind {kind!r}: {name} must be True or False, not {flag!r}.")
    for name, amount in (
        ("history_maxlen", history_maxlen),
        ("history_max_age_secs", history_max_age_secs),
    ):
        # bool is an int too: `history_maxlen=True` is a mistake, not one entry.
        if amount is not None and (
            not isinstance(amount, int) or isinstance(amount, bool) or amount < 1
        ):
            raise ValueError(
                f"Stream kind {kind!r}: {name} must be a positive whole number, or None for the "
                f"global {name.upper()}, not {amount!r}."
            )
        if amount is not None and not history:
            raise ValueError(
                f"Stream kind {kind!r} keeps no history (history=False), so {name} means "
                "nothing: leave it out, or keep history."
            )
    if archive and not history:
        raise ValueError(
            f"Stream kind {kind!r} keeps no history (history=False), so it cannot keep an "
            "archive: the archive is the tier behind the Redis history, replayed past its "
            "window. Keep history (history_maxlen may be small), or leave archive out."
        )
    registered = StreamKind(
        kind,
        re.compile(key),
        can_read,
        can_publish,
        history=history,
        history_maxlen=history_maxlen,
        history_max_age_secs=history_max_age_secs,
        presence=presence,
        archive=archive,
    )
    current = _kinds.get(kind)
    if current is not None and current != registered:
        raise ValueError(f"Stream kind {kind!r} is already registered, differently: {current!r}.")
    _kinds[kind] = registered
    return registered


def register_from_settings(kinds: dict[str, dict[str, Any]]) -> None:
    """SWITCHBOARD_STREAM_KINDS: {kind: {"key": regex, "can_read": path, "can_publish": path,
    "history": bool, "history_maxlen": int, "history_max_age_secs": int, "presence": bool,
    "archive": bool}};
    only "key" and "can_read" are required."""
    for kind, spec in kinds.items():
        unknown = sorted(set(spec) - SETTINGS_FIELDS)
        if unknown:
            raise ValueError(
                f"SWITCHBOARD_STREAM_KINDS[{kind!r}] has {', '.join(map(repr, unknown))}, which "
                f"no stream kind takes: use {', '.join(sorted(SETTINGS_FIELDS))}."
            )
        publish_path = spec.get("can_publish")
        register(
            kind,
            key=spec["key"],
            can_read=import_string(spec["can_read"]),
            can_publish=import_string(publish_path) if publish_path else None,
            history=spec.get("history", True),
            history_maxlen=spec.get("history_maxlen"),
            history_max_age_secs=spec.get("history_max_age_secs"),
            presence=spec.get("presence", False),
            archive=spec.get("archive", False),
        )


def policy_for(stream: str) -> KindPolicy:
    """What `stream` keeps and tracks: its kind's history, retention, presence and archive, the
    global settings where the kind says None. The core's kinds keep history with the global
    retention and have no presence and no archive. For a name group_for_stream() accepted: this
    looks up the kind by the part before the colon, and raises ValueError for a kind nobody
    registered."""
    name = stream.partition(":")[0]
    kind = _kinds.get(name)
    if kind is None:
        if name not in CORE_KINDS:
            raise ValueError(
                f"{stream[:80]!r} is of no registered stream kind ({', '.join(registered())})."
            )
        return KindPolicy(
            history=True,
            history_maxlen=settings.HISTORY_MAXLEN,
            history_max_age_secs=settings.HISTORY_MAX_AGE_SECS,
            presence=False,
        )
    return KindPolicy(
        history=kind.history,
        history_maxlen=(
            settings.HISTORY_MAXLEN if kind.history_maxlen is None else kind.history_maxlen
        ),
        history_max_age_secs=(
            settings.HISTORY_MAX_AGE_SECS
            if kind.history_max_age_secs is None
            else kind.history_max_age_secs
        ),
        presence=kind.presence,
        archive=kind.archive,
    )


def archived_kinds() -> list[str]:
    """The registered kinds that keep an archive (the archiver runs only if there are any)."""
    return sorted(name for name, kind in _kinds.items() if kind.archive)


def kind_of(stream: str) -> tuple[StreamKind, str] | None:
    """The registered kind of `stream` and its key, when the name is one of that kind's."""
    name, sep, key = stream.partition(":")
    kind = _kinds.get(name)
    if not sep or kind is None or not SAFE_KEY_RE.fullmatch(key) or not kind.key.fullmatch(key):
        return None
    return kind, key


def registered() -> list[str]:
    return sorted(_kinds)


def kind_named(name: str) -> StreamKind | None:
    """The registered kind called `name` (None for the core's kinds and unknown names)."""
    return _kinds.get(name)


def forget(kind: str) -> None:
    """Unregister (tests)."""
    _kinds.pop(kind, None)
