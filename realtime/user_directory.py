"""Usernames to user ids for the publish API: remembered per process, and shared in Redis.

A push names its user (`{"user": "alice"}`), and the stream is the id's (`user:<id>`). Asking
the database for every push cost a replica more than the whole rest of it: a hand-off to a
worker thread, a new database connection (CONN_MAX_AGE=0) and an ORM query, ~2 ms of CPU
against ~0.3 ms for the request and the publish together (docs/performance.md). A username's id
does not change, so active users' ids are kept for `API_USER_CACHE_SECS` (60 s):

- in each process, up to MAX_ENTRIES of them, least recently used dropped first;
- in Redis (`<p>:uname:<name>`, broker/keys.py), for every replica: a name one replica looked
  up, or saw in a socket's handshake, is found by the others with a GET through the automatic
  pipeline instead of a database query on the database thread (~0.5 ms of CPU with the hop). A
  push service sends to many users through every replica, so without it each replica asked the
  database for each user once.

Misses that arrive together are asked together: the directory in one round trip, then the
database in one hop to the hot paths' database thread (realtime/db_thread.py) for the rest.

What the caches delay: saving or deleting a user through the ORM, in any process, drops its
name (and the name it was loaded with, so a rename drops the old one) here and in Redis at once
(the model's signals). A change that skips the signals (`QuerySet.update()`, SQL) is seen within
`API_USER_CACHE_SECS`, and so is one saved while Redis was not answering. Until then a push by
the old name goes to that user's own stream and nowhere else; a deactivated user's sockets are
closed by realtime/access.py as the change is saved, whatever the caches hold. Unknown names
are not cached: a user created a moment ago is found at once. Redis not answering makes a
lookup ask the database, as before.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Iterable
from typing import Any, TypeVar

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models.signals import post_delete, post_init, post_save

from realtime import broker, db_thread
from realtime.compiled_lookup import CompiledGet
from realtime.selectors import user_ids_by_username

logger = logging.getLogger(__name__)

T = TypeVar("T")

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
        found.update(await _resolve(missing))
    return found


async def active_user_id(username: str) -> int | None:
    """One name's id. Misses that arrive together (pushes in flight at once) are asked
    together (`_resolve`), as a DataLoader batches."""
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
    task = asyncio.get_running_loop().create_task(_resolve(list(names)))
    task.add_done_callback(lambda done: _answer(names, done))


def _answer(names: dict[str, asyncio.Future[int | None]], done: asyncio.Task[Any]) -> None:
    error = done.exception() if not done.cancelled() else asyncio.CancelledError()
    ids: dict[str, int] = {} if error else done.result()
    for name, future in names.items():
        if future.done():
            continue
        if error:
            future.set_exception(error)
        else:
            future.set_result(ids.get(name))


async def _resolve(names: list[str]) -> dict[str, int]:
    """The active users' ids among `names`, none of them remembered here: the shared directory
    first, then the database for the rest (what it finds is shared). All are remembered here."""
    ttl = settings.API_USER_CACHE_SECS
    found = await _shared(names) if ttl > 0 else {}
    missing = [name for name in names if name not in found] if found else names
    if missing:
        fetched = await db_thread.run(_lookup_active, missing)
        if fetched and ttl > 0:
            await _share(fetched, ttl)
        found.update(fetched)
    remember(found)
    return found


async def _shared(names: list[str]) -> dict[str, int]:
    """What the shared directory holds of `names`; nothing when Redis does not answer in time
    (the database is asked instead)."""
    return await _guarded(broker.current().user_ids(names)) or {}


async def _share(ids: dict[str, int], ttl: int) -> None:
    await _guarded(broker.current().remember_user_ids(ids, ttl_ms=ttl * 1000))


async def _guarded(call: Awaitable[T]) -> T | None:
    """`call`'s result, or None when Redis does not answer within REDIS_TIMEOUT_SECS: the
    directory only saves work, so its failures are never the push's."""
    try:
        async with asyncio.timeout(settings.REDIS_TIMEOUT_SECS):
            return await call
    except (broker.BrokerUnavailable, TimeoutError) as exc:
        logger.debug("usernames: the shared directory did not answer: %r", exc)
        return None


@functools.cache
def _by_username() -> CompiledGet | None:
    return CompiledGet.make(get_user_model()._default_manager, "username")


def _lookup_active(names: list[str]) -> dict[str, int]:
    """The active users' ids among `names` (run on the database thread): one query, its SQL
    compiled once (compiled_lookup's `get_many`), for however many names."""
    lookup = _by_username()
    if lookup is None:
        return user_ids_by_username(usernames=set(names))
    return {
        name: int(user.pk)
        for name, user in lookup.get_many(names).items()
        if getattr(user, "is_active", True)
    }


def note_connected(name: str, user_id: int) -> None:
    """A socket's handshake found this active user: pushes to it by name, from any replica,
    need not ask the database. Remembered here, and shared in the background unless this
    process already remembers it for more than half its time (a reconnect: no write)."""
    ttl = settings.API_USER_CACHE_SECS
    if ttl <= 0:
        return
    entry = _ids.get(name)
    if entry is not None and entry[0] == user_id and entry[1] - time.monotonic() > ttl / 2:
        return
    remember({name: user_id})
    # Handshakes finish in batches (their database hop is shared: realtime/db_thread.py), so
    # the names noted in one turn of the loop go to Redis in one write, not a task each.
    loop = asyncio.get_running_loop()
    noted = _noted.setdefault(loop, {})
    if not noted:
        loop.call_soon(_share_noted, loop)
    noted[name] = user_id


# Names noted in this turn of each event loop, to be shared together.
_noted: dict[asyncio.AbstractEventLoop, dict[str, int]] = {}
# The handshakes' writes in flight (a task nobody holds may be collected before it ends).
_sharing: set[asyncio.Task[None]] = set()


def _share_noted(loop: asyncio.AbstractEventLoop) -> None:
    ids = _noted.pop(loop, {})
    ttl = settings.API_USER_CACHE_SECS
    if not ids or ttl <= 0:
        return
    task = loop.create_task(_share(ids, ttl))
    _sharing.add(task)
    task.add_done_callback(_sharing.discard)


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


def forget_user(user_id: int) -> list[str]:
    """Drop every name remembered here for `user_id` (a rename leaves the old name behind);
    the names dropped."""
    names = [n for n, (i, _) in _ids.items() if i == user_id]
    for name in names:
        del _ids[name]
    return names


def clear() -> None:
    _ids.clear()


# Where a user instance keeps the username it was loaded or last saved with: a rename must drop
# the old name, and post_save only sees the new one.
_LOADED_NAME = "_switchboard_loaded_username"


def _on_user_loaded(sender: Any, instance: Any, **kwargs: object) -> None:
    # Only a name already in __dict__: reading a deferred field would query the database.
    name = instance.__dict__.get(sender.USERNAME_FIELD)
    if name is not None:
        instance.__dict__[_LOADED_NAME] = name


def _on_user_changed(sender: Any, instance: Any, **kwargs: Any) -> None:
    user_id = instance.pk
    if user_id is None:
        return
    fields = kwargs.get("update_fields")
    if fields is not None and not {sender.USERNAME_FIELD, "is_active"} & set(fields):
        return  # a login's last_login, say: the name and the state stay
    names = set(forget_user(int(user_id)))
    for name in (instance.__dict__.get(_LOADED_NAME), instance.__dict__.get(sender.USERNAME_FIELD)):
        if name is not None:
            names.add(name)
    _on_user_loaded(sender, instance)
    if kwargs.get("created"):
        # A new user's name is in no cache: unknown names are never kept. (Asking Redis anyway
        # made `seed_demo` and `createsuperuser`, run before the cluster's Redis is up, warn
        # and wait on every user.)
        return
    if names and settings.API_USER_CACHE_SECS > 0:
        _forget_shared(names)


def _forget_shared(names: set[str]) -> None:
    """Drop `names` from Redis. A save happens in sync code (a thread with no event loop: a
    view, the admin, sync_to_async's thread); a failure is logged, never raised into the save."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:  # sync code called from a loop's own thread: a blocking call would stall the loop
        logger.warning("usernames: a user saved in an event loop's thread; Redis keeps %s", names)
        return
    try:
        broker.current().forget_usernames_sync(names)
    except (broker.BrokerUnavailable, RuntimeError) as exc:  # RuntimeError: no broker here
        logger.warning(
            "usernames: could not drop %d from the shared directory: %s", len(names), exc
        )


def connect_signals() -> None:
    """Called by the app's ready(): saving or deleting a user forgets its names, here and in
    the shared directory."""
    model = get_user_model()
    post_init.connect(_on_user_loaded, sender=model, dispatch_uid="user_directory_init")
    post_save.connect(_on_user_changed, sender=model, dispatch_uid="user_directory_save")
    post_delete.connect(_on_user_changed, sender=model, dispatch_uid="user_directory_delete")
