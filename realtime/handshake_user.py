"""The user of a session cookie, as Django finds it, with its two lookups compiled once.

`django.contrib.auth.get_user` loads the session row and then the user, each through the ORM,
and checks the session's auth hash against the user's (a changed password logs the other
sessions out). For the common configuration (the database session engine, ModelBackend) the
same steps run here with both lookups through realtime/compiled_lookup.py, a fraction of the
ORM's CPU; any other session engine or backend, or a user model keyed by something other than
an integer or text, goes through Django's own `get_user`. What is decided is the same either
way: tests/integration/test_socket_auth.py runs both.
"""

from __future__ import annotations

import functools
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
    subclass that reads its rows the same way); otherwise `store` itself."""
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
        row: Any = lookup.get(self.session_key) if self.session_key else None
        if row is None or row.expire_date <= timezone.now():
            self._session_key = None
            return None
        return row

    # The same names: a session is signed with a salt made of its store's __qualname__.
    attributes = {
        "_get_session_from_db": _get_session_from_db,
        "__qualname__": store.__qualname__,
        "__module__": store.__module__,
    }
    return type(store.__name__, (store,), attributes)


@functools.cache
def _user_lookup() -> CompiledGet | None:
    return CompiledGet.make(get_user_model()._default_manager, "pk")


def user_of_session(store: type[SessionBase], session_key: str) -> AbstractBaseUser | AnonymousUser:
    """The session's user, or AnonymousUser: Django's `get_user`, never rotating the session key
    (a socket cannot give the browser a new cookie, so the key is left for the browser's next
    HTTP request to rotate), never saving the session."""
    session = fast_store(store)(session_key)
    session.cycle_key = _keep_key  # type: ignore[method-assign]
    try:
        user_id = get_user_model()._meta.pk.to_python(session[SESSION_KEY])
        backend_path = session[BACKEND_SESSION_KEY]
    except KeyError:
        return AnonymousUser()
    lookup = _user_lookup()
    if backend_path not in settings.AUTHENTICATION_BACKENDS or lookup is None:
        return get_user(cast(HttpRequest, _SessionOnly(session)))
    backend: Any = load_backend(backend_path)
    if type(backend).get_user is not ModelBackend.get_user:
        return get_user(cast(HttpRequest, _SessionOnly(session)))
    # ModelBackend.get_user, with the compiled lookup.
    user: Any = lookup.get(user_id)
    if user is None or not backend.user_can_authenticate(user):
        return AnonymousUser()
    # get_user's check of the session against the user's password (and the fallback secrets').
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
