"""The user of a session cookie, as Django finds it, with its two lookups compiled once.

`django.contrib.auth.get_user` loads the session row and then the user, each through the ORM,
and checks the session's auth hash against the user's (a changed password logs the other
sessions out). For the common configuration (the database session engine, ModelBackend) the
same steps run here with both lookups through realtime/compiled_lookup.py, a fraction of the
ORM's CPU, and the handshakes that share a hop to the database thread share the two queries
(`users_of_sessions`); any other session engine or backend, or a user model keyed by something
other than an integer or text, goes through Django's own `get_user`. What is decided is the same
either way: tests/integration/test_socket_auth.py runs both.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence
from typing import Any, cast

from django.conf import settings
from django.contrib.auth import (
    BACKEND_SESSION_KEY,
    HASH_SESSION_KEY,
    SESSION_KEY,
    get_user,
    get_user_model,
    load_backend,
)
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import AnonymousUser
from django.contrib.sessions.backends import db as db_sessions
from django.contrib.sessions.backends.base import SessionBase
from django.http import HttpRequest
from django.utils import timezone
from django.utils.crypto import constant_time_compare

from realtime.compiled_lookup import CompiledGet


class _SessionOnly:
    """All that `django.contrib.auth.get_user` reads of a request: its session."""

    __slots__ = ("session",)

    def __init__(self, session: SessionBase) -> None:
        self.session = session


def _keep_key() -> None:
    return None


@functools.cache
def fast_store(store: type[SessionBase]) -> type[SessionBase]:
    """`store`, with its row read by a compiled lookup when it is the database engine's (or a
    subclass that reads its rows the same way); otherwise `store` itself. Rows read for several
    sessions at once (`users_of_sessions`) are handed to each session as `prefetched_row`."""
    reads_rows_as_db = getattr(store, "_get_session_from_db", None) is getattr(
        db_sessions.SessionStore, "_get_session_from_db", ()
    )
    if not (issubclass(store, db_sessions.SessionStore) and reads_rows_as_db):
        return store
    lookup = CompiledGet.make(store.get_model_class()._default_manager, "session_key")
    if lookup is None:
        return store

    def _get_session_from_db(self: Any) -> Any:
        # As the engine's own: a row that has not expired, or None with the key forgotten.
        row = self.__dict__.pop("prefetched_row", _NOT_READ)
        if row is _NOT_READ:
            row = lookup.get(self.session_key) if self.session_key else None
        if row is None or row.expire_date <= timezone.now():
            self._session_key = None
            return None
        return row

    # The same names: a session is signed with a salt made of its store's __qualname__.
    attributes = {
        "_get_session_from_db": _get_session_from_db,
        "rows_of": staticmethod(lookup.get_many),
        "__qualname__": store.__qualname__,
        "__module__": store.__module__,
    }
    return type(store.__name__, (store,), attributes)


_NOT_READ = object()


@functools.cache
def _user_lookup() -> CompiledGet | None:
    return CompiledGet.make(get_user_model()._default_manager, "pk")


Outcome = tuple[bool, Any]  # (True, the user or AnonymousUser) or (False, the exception raised)


def user_of_session(store: type[SessionBase], session_key: str) -> AbstractBaseUser | AnonymousUser:
    """The session's user, or AnonymousUser: Django's `get_user`, never rotating the session key
    (a socket cannot give the browser a new cookie, so the key is left for the browser's next
    HTTP request to rotate), never saving the session."""
    ok, value = users_of_sessions([(store, session_key)])[0]
    if not ok:
        raise value
    return cast(AbstractBaseUser | AnonymousUser, value)


def users_of_sessions(calls: Sequence[tuple[type[SessionBase], str]]) -> list[Outcome]:
    """`user_of_session(store, key)` for each call, in order, each with its own outcome; for the
    database engine the sessions' rows are read in one query and their users in another
    (compiled_lookup's `get_many`), however many sessions. A failure of those shared reads (a
    DatabaseError) is raised to the caller: every session of the batch failed."""
    sessions: list[Any] = []
    by_store: dict[type[SessionBase], list[int]] = {}
    for store, key in calls:
        session = fast_store(store)(key)
        session.cycle_key = _keep_key  # type: ignore[method-assign]
        sessions.append(session)
        by_store.setdefault(store, []).append(len(sessions) - 1)
    for store, indexes in by_store.items():
        rows_of = getattr(fast_store(store), "rows_of", None)
        if rows_of is not None:
            rows = rows_of([sessions[i].session_key for i in indexes if sessions[i].session_key])
            for i in indexes:
                sessions[i].prefetched_row = rows.get(sessions[i].session_key)
    # Each session's outcome, or its claim (a user id and a backend) for the compiled user
    # lookup to finish: anonymous, or Django's own get_user, are decided at once.
    outcomes: list[Outcome | None] = []
    claims: dict[int, tuple[Any, Any]] = {}
    for index, session in enumerate(sessions):
        try:
            claimed = _claim(session)
        except Exception as exc:
            outcomes.append((False, exc))
            continue
        if isinstance(claimed, tuple):
            claims[index] = claimed
            outcomes.append(None)
        else:
            outcomes.append((True, claimed))
    lookup = _user_lookup()
    wanted = [user_id for user_id, _ in claims.values()]
    users = lookup.get_many(wanted) if wanted and lookup is not None else {}
    handed_out: set[Any] = set()
    for index, (user_id, backend) in claims.items():
        user = users.get(user_id)
        if user is not None and user_id in handed_out:
            user = copy.copy(user)  # one instance per socket, as each lookup made its own
        handed_out.add(user_id)
        try:
            outcomes[index] = (True, _checked(sessions[index], user, backend))
        except Exception as exc:
            outcomes[index] = (False, exc)
    return cast(list[Outcome], outcomes)


def _claim(session: SessionBase) -> tuple[Any, Any] | AbstractBaseUser | AnonymousUser:
    """(user id, ModelBackend-like backend) for the compiled user lookup to finish, or the
    answer itself: AnonymousUser without a logged-in user, Django's get_user for a backend of
    its own kind."""
    try:
        user_id = get_user_model()._meta.pk.to_python(session[SESSION_KEY])
        backend_path = session[BACKEND_SESSION_KEY]
    except KeyError:
        return AnonymousUser()
    if backend_path not in settings.AUTHENTICATION_BACKENDS or _user_lookup() is None:
        return get_user(cast(HttpRequest, _SessionOnly(session)))
    backend: Any = load_backend(backend_path)
    if type(backend).get_user is not ModelBackend.get_user:
        return get_user(cast(HttpRequest, _SessionOnly(session)))
    return user_id, backend


def _checked(session: SessionBase, user: Any, backend: Any) -> AbstractBaseUser | AnonymousUser:
    """ModelBackend.get_user's answer for the looked-up `user`, then get_user's check of the
    session against the user's password (and the fallback secrets')."""
    if user is None or not backend.user_can_authenticate(user):
        return AnonymousUser()
    session_hash = session.get(HASH_SESSION_KEY)
    if session_hash and constant_time_compare(session_hash, user.get_session_auth_hash()):
        return cast(AbstractBaseUser, user)
    if session_hash and any(
        constant_time_compare(session_hash, fallback)
        for fallback in user.get_session_auth_fallback_hash()
    ):
        return cast(AbstractBaseUser, user)  # get_user would rotate the key: see above
    session.flush()  # as get_user does: a session its user's password no longer matches ends
    return AnonymousUser()
