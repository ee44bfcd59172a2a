"""Usernames to user ids for the publish API, remembered per process.

A push names its user (`{"user": "alice"}`), and the stream is the id's (`user:<id>`). Asking
the database for every push cost a replica more than the whole rest of it: a hand-off to a
worker thread, a new database connection (CONN_MAX_AGE=0) and an ORM query, ~2 ms of CPU
against ~0.3 ms for the request and the publish together (docs/performance.md). A username's id
does not change, so active users' ids are kept for `API_USER_CACHE_SECS` (60 s), up to
MAX_ENTRIES of them, least recently used dropped first.

What the cache delays: a user deactivated or renamed in this process is forgotten at once (the
model's signals); in another replica, a push by the old name still finds the old id for up to
`API_USER_CACHE_SECS`. That push goes to the user's own stream and nowhere else: a deactivated
user's sockets are closed by realtime/access.py as the change is saved, whatever the cache
holds. Unknown names are not cached: a user created a moment ago is found at once.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable

from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models.signals import post_delete, post_save

from realtime.selectors import user_ids_by_username

# About 100 bytes an entry: 100k users cost a replica ~10 MB at most.
MAX_ENTRIES = 100_000

_ids: OrderedDict[str, tuple[int, float]] = OrderedDict()  # username -> (id, good until)


async def active_user_ids(usernames: Iterable[str]) -> dict[str, int]:
    """{username: id} of the active users among `usernames`; the database is asked only for
    names not remembered (in one query, in a worker thread)."""
    found: dict[str, int] = {}
    missing: set[str] = set()
    now = time.monotonic()
    for name in usernames:
        entry = _ids.get(name)
        if entry is not None and entry[1] > now:
            _ids.move_to_end(name)
            found[name] = entry[0]
        else:
            missing.add(name)
    if missing:
        fetched = await database_sync_to_async(user_ids_by_username)(usernames=missing)
        found.update(fetched)
        remember(fetched)
    return found


async def active_user_id(username: str) -> int | None:
    return (await active_user_ids((username,))).get(username)


def remember(ids: dict[str, int]) -> None:
    ttl = settings.API_USER_CACHE_SECS
    if ttl <= 0:
        return
    until = time.monotonic() + ttl
    for name, user_id in ids.items():
        _ids[name] = (user_id, until)
        _ids.move_to_end(name)
    while len(_ids) > MAX_ENTRIES:
        _ids.popitem(last=False)


def forget_user(user_id: int) -> None:
    """Drop every name remembered for `user_id` (a rename leaves the old name behind)."""
    for name in [n for n, (i, _) in _ids.items() if i == user_id]:
        del _ids[name]


def clear() -> None:
    _ids.clear()


def _on_user_changed(sender: object, instance: object, **kwargs: object) -> None:
    user_id = getattr(instance, "pk", None)
    if user_id is not None and _ids:
        forget_user(int(user_id))


def connect_signals() -> None:
    """Called by the app's ready(): saving or deleting a user forgets its names here."""
    model = get_user_model()
    post_save.connect(_on_user_changed, sender=model, dispatch_uid="user_directory_save")
    post_delete.connect(_on_user_changed, sender=model, dispatch_uid="user_directory_delete")
