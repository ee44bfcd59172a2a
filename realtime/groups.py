"""The only place stream and group names are built.

A *stream* is what a client reads (`user:42`, `room:lobby`, `broadcast`); a *group* is the
channel-layer group that carries it (`user.42`, `room.lobby`, `broadcast`). Channels only allows
ASCII letters, digits, hyphens, underscores and periods in group names, hence two spellings.
"""

from __future__ import annotations

import re

from realtime import streams

BROADCAST_STREAM = "broadcast"
BROADCAST_GROUP = "broadcast"
# Each replica's stats, about once a second (ops/reports.py); read by staff only, on the
# cluster view. It goes through the same publish path as everything else, so the view shows
# the realtime system working, or not.
OPS_STREAM = "ops"
OPS_GROUP = "ops"

# Room slugs: lower-case, start with a letter or digit, at most 50 characters. Always used with
# fullmatch(): `$` also matches before a final newline, and "lobby\n" passed the old check.
ROOM_SLUG_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,49}")
# User ids: positive, no leading zero, at most 18 digits (a bigint; 5000 digits overran
# int()'s digit limit and answered HTTP 500).
USER_ID_RE = re.compile(r"[1-9][0-9]{0,17}")
# Longer than any name (a kind of 20 characters, a key of 50 and the colon): refused before
# any pattern runs.
MAX_STREAM_CHARS = 71


class InvalidStreamName(ValueError):
    """A stream name that is not one of user:<id>, room:<slug> or broadcast."""


def user_stream(user_id: int) -> str:
    return f"user:{user_id}"


def user_group(user_id: int) -> str:
    return f"user.{user_id}"


def room_stream(slug: str) -> str:
    _check_slug(slug)
    return f"room:{slug}"


def room_group(slug: str) -> str:
    _check_slug(slug)
    return f"room.{slug}"


def group_for_stream(stream: str) -> str:
    """Map a stream name to its channel-layer group, rejecting anything malformed."""
    if stream == BROADCAST_STREAM:
        return BROADCAST_GROUP
    if stream == OPS_STREAM:
        return OPS_GROUP
    kind, sep, key = stream.partition(":")
    if sep and len(stream) <= MAX_STREAM_CHARS:
        if kind == "user" and USER_ID_RE.fullmatch(key):
            return user_group(int(key))
        # An app's kind (realtime/streams.py): room:<slug> is the chat's.
        if streams.kind_of(stream) is not None:
            return f"{kind}.{key}"
    kinds = ", ".join(f"'{name}:<key>'" for name in streams.registered())
    raise InvalidStreamName(
        f"{stream[:MAX_STREAM_CHARS]!r} is not a stream: use 'user:<id>', 'broadcast', 'ops'"
        + (f" or {kinds} with a key the kind allows" if kinds else "")
        + "."
    )


def is_room_slug(slug: str) -> bool:
    return ROOM_SLUG_RE.fullmatch(slug) is not None


def _check_slug(slug: str) -> None:
    if not is_room_slug(slug):
        raise InvalidStreamName(
            f"{slug[:MAX_STREAM_CHARS]!r} is not a room name: use lower-case letters, digits "
            "and hyphens, starting with a letter or digit, at most 50 characters."
        )
