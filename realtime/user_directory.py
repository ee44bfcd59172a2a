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

import asyncio
import functools
import time
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models.signals import post_delete, post_save

from realtime import db_thread
from realtime.compiled_lookup import CompiledGet
from realtime.selectors import user_ids_by_username

# About 100 bytes an entry: 100k users cost a replica ~10 MB at most.
MAX_ENTRIES = 100_000

_ids: OrderedDict[str, tuple[int, float]] = OrderedDict()  # username -> (id, good until)


def _remembered(name: str, now: float) -> int | None:
    entry = _ids.get(name)
    if entry is None or entry[1] <= now:
        return None
    _ids.move_to_end(name)
    return entry[0]


async def active_user_ids(usernames: Iterable[str]) -> dict[str, int]:
    """{username: id} of the active users among `usernames` (a batch of pushes); the database
    is asked only for names not remembered, in one hop to the hot paths' database thread."""
    found: dict[str, int] = {}
    missing: list[str] = []
    now = time.monotonic()
    for name in usernames:
        user_id = _remembered(name, now)
        if user_id is None:
            missing.append(name)
        else:
            found[name] = user_id
    if missing:
        fetched = await db_thread.run(_lookup_active, missing)
        found.update(fetched)
        remember(fetched)
    return found


async def active_user_id(username: str) -> int | None:
    """One name's id. Misses that arrive together (pushes in flight at once) are asked in one
    hop to the hot paths' database thread (realtime/db_thread.py), as a DataLoader batches."""
    user_id = _remembered(username, time.monotonic())
    if user_id is not None:
        return user_id
    loop = asyncio.get_running_loop()
    pending = _pending.setdefault(loop, {})
    waiting = pending.get(username)
    if waiting is None:
        waiting = pending[username] = loop.create_future()
        if len(pending) == 1:
            loop.call_soon(_ask_pending, loop)
    return await asyncio.shield(waiting)


# Names asked for in this turn of each event loop, each with the future its callers wait on.
_pending: dict[asyncio.AbstractEventLoop, dict[str, asyncio.Future[int | None]]] = {}


def _ask_pending(loop: asyncio.AbstractEventLoop) -> None:
    names = _pending.pop(loop, {})
    task = asyncio.get_running_loop().create_task(db_thread.run(_lookup_active, list(names)))
    task.add_done_callback(lambda done: _answer(names, done))


def _answer(names: dict[str, asyncio.Future[int | None]], done: asyncio.Task[Any]) -> None:
    error = done.exception() if not done.cancelled() else asyncio.CancelledError()
    ids: dict[str, int] = {} if error else done.result()
    if not error:
        remember(ids)
    for name, future in names.items():
        if future.done():
            continue
        if error:
            future.set_exception(error)
        else:
            future.set_result(ids.get(name))


@functools.cache
def _by_username() -> CompiledGet | None:
    return CompiledGet.make(get_user_model()._default_manager, "username")


# From this many names a batch is one IN query (compiled each time, ~0.6 ms), below it each a
# lookup by key compiled once (~30 µs of SQL each).
IN_QUERY_FROM = 20


def _lookup_active(names: list[str]) -> dict[str, int]:
    """The active users' ids among `names` (run on the database thread)."""
    lookup = _by_username()
    if lookup is None or len(names) >= IN_QUERY_FROM:
        return user_ids_by_username(usernames=set(names))
    found = {}
    for name in names:
        user: Any = lookup.get(name)
        if user is not None and user.is_active:
            found[name] = int(user.pk)
    return found


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
