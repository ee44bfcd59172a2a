"""A socket lives no longer than the login session it was opened with.

Django ends a session three ways; each now ends the session's sockets, on every replica:
- logout and deletion (the admin, `clearsessions`, a password change's flush): the session's
  row is deleted, and realtime/access.py sends `rt.recheck` with the session's digest to the
  user's group; the socket holding that session closes with 4401 at once.
- expiry: nothing happens at the moment a session expires, so each process checks its sockets'
  sessions every SESSION_CHECK_SECS, all in one query per 500 sockets, and closes the sockets
  whose session is gone or expired.

Only the digest of a session key travels through Redis: the key itself is a login credential.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Iterable
from importlib import import_module
from typing import Protocol

from channels.db import database_sync_to_async
from django.conf import settings
from django.db import DatabaseError
from django.utils import timezone

logger = logging.getLogger(__name__)

# Keys per query: SQLite allows 999 parameters in older builds.
KEYS_PER_QUERY = 500


class SessionSocket(Protocol):
    async def session_ended(self) -> None: ...


def session_digest(session_key: str) -> str:
    return hashlib.sha256(session_key.encode()).hexdigest()[:32]


def live_session_keys(*, keys: Iterable[str]) -> set[str]:
    """Those of `keys` whose session still exists and has not expired."""
    store = import_module(settings.SESSION_ENGINE).SessionStore
    keys = list(keys)
    if hasattr(store, "get_model_class"):  # db and cached_db: one query per KEYS_PER_QUERY
        model = store.get_model_class()
        live: set[str] = set()
        for start in range(0, len(keys), KEYS_PER_QUERY):
            rows = model.objects.filter(
                session_key__in=keys[start : start + KEYS_PER_QUERY], expire_date__gt=timezone.now()
            )
            live.update(rows.values_list("session_key", flat=True))
        return live
    if settings.SESSION_ENGINE.endswith("signed_cookies"):
        return set(keys)  # nothing on the server to end: such sessions expire in the browser
    return {key for key in keys if store().exists(key)}


class _Watch:
    """One event loop's sockets with a session, and the task that checks them."""

    def __init__(self) -> None:
        self.sockets: dict[SessionSocket, str] = {}
        self.task: asyncio.Task[None] | None = None

    def add(self, socket: SessionSocket, session_key: str) -> None:
        self.sockets[socket] = session_key
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._run())

    def discard(self, socket: SessionSocket) -> None:
        self.sockets.pop(socket, None)

    async def _run(self) -> None:
        try:
            while self.sockets:
                await asyncio.sleep(settings.SESSION_CHECK_SECS)
                await self.check()
        finally:
            self.task = None

    async def check(self) -> None:
        """Close every socket whose session has ended."""
        # Judged: the sockets as they were when the query was made. One that connected while it
        # ran has a session the query never looked at (closing those was a bug a test found).
        checked = list(self.sockets.items())
        if not checked:
            return
        try:
            live = await database_sync_to_async(live_session_keys)(keys={key for _, key in checked})
        except DatabaseError as exc:
            logger.warning("session check skipped: %r", exc)
            return
        ended = [socket for socket, key in checked if key not in live and socket in self.sockets]
        for socket in ended:
            self.sockets.pop(socket, None)
            with contextlib.suppress(Exception):
                await socket.session_ended()
        if ended:
            logger.info("closed %d socket(s) whose session ended", len(ended))


_watches: dict[asyncio.AbstractEventLoop, _Watch] = {}


def _watch() -> _Watch:
    loop = asyncio.get_running_loop()
    watch = _watches.get(loop)
    if watch is None:
        for old in [other for other in _watches if other.is_closed()]:
            del _watches[old]  # tests run many loops; production has one per process
        watch = _watches[loop] = _Watch()
    return watch


def watch(socket: SessionSocket, session_key: str) -> None:
    _watch().add(socket, session_key)


def unwatch(socket: SessionSocket) -> None:
    watch_ = _watches.get(asyncio.get_running_loop())
    if watch_ is not None:
        watch_.discard(socket)


def watched_count() -> int:
    watch_ = _watches.get(asyncio.get_running_loop())
    return 0 if watch_ is None else len(watch_.sockets)


async def check_now() -> None:
    """Check this loop's sockets at once (tests; the timer does it every SESSION_CHECK_SECS)."""
    await _watch().check()
