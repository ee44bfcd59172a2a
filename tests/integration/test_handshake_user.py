"""The handshake's user lookup (realtime/handshake_user.py) decides as Django's get_user does, for
every kind of session, without compiling a query per handshake."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from importlib import import_module
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth import get_user
from django.contrib.auth.models import User
from django.contrib.sessions.models import Session
from django.db import OperationalError, connection
from django.db.models.sql.compiler import SQLCompiler
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from realtime import db_thread, handshake_user
from realtime.compiled_lookup import MANY_AT_ONCE, CompiledGet

pytestmark = pytest.mark.django_db(transaction=True)


def session_of(user: User) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies[settings.SESSION_COOKIE_NAME].value


def djangos_answer(key: str) -> Any:
    store = import_module(settings.SESSION_ENGINE).SessionStore
    session = store(key)
    session.cycle_key = lambda: None  # type: ignore[method-assign]
    return get_user(handshake_user._SessionOnly(session))  # type: ignore[arg-type]


def test_every_kind_of_session_gets_djangos_answer_without_compiling_a_query(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = import_module(settings.SESSION_ENGINE).SessionStore
    alice = User.objects.create_user("hs-alice", password="pw")
    keys = {"valid": session_of(alice), "unknown": "x" * 32, "empty": ""}
    inactive = User.objects.create_user("hs-inactive", password="pw")
    keys["inactive"] = session_of(inactive)
    User.objects.filter(pk=inactive.pk).update(is_active=False)
    gone = User.objects.create_user("hs-gone", password="pw")
    keys["deleted user"] = session_of(gone)
    User.objects.filter(pk=gone.pk).delete()
    expired = User.objects.create_user("hs-expired", password="pw")
    keys["expired"] = session_of(expired)
    Session.objects.filter(session_key=keys["expired"]).update(
        expire_date=timezone.now() - timedelta(seconds=1)
    )
    expected = {"valid": alice.pk}
    handshake_user.user_of_session(store, keys["valid"])  # compiled here, once
    compiled: list[Any] = []
    original = SQLCompiler.as_sql

    def counted(self: SQLCompiler, *args: Any, **kwargs: Any) -> Any:
        compiled.append(self.query.model)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SQLCompiler, "as_sql", counted)
    for name, key in keys.items():
        ours = handshake_user.user_of_session(store, key)
        assert ours.pk == expected.get(name), name
    assert compiled == [], "a handshake compiled a query"
    monkeypatch.undo()
    for name, key in keys.items():
        assert djangos_answer(key).pk == expected.get(name), name


def test_a_session_older_than_its_users_password_is_anonymous_and_ended_as_by_django() -> None:
    store = import_module(settings.SESSION_ENGINE).SessionStore
    bob = User.objects.create_user("hs-bob", password="old")
    key = session_of(bob)
    bob.set_password("new")
    User.objects.filter(pk=bob.pk).update(password=bob.password)  # no signal: the row stays
    assert Session.objects.filter(session_key=key).exists()
    assert handshake_user.user_of_session(store, key).is_authenticated is False
    assert not Session.objects.filter(session_key=key).exists(), "flushed, as get_user does"


def test_a_lookup_by_a_key_it_cannot_stand_in_for_uses_the_orm() -> None:
    assert CompiledGet.make(User._default_manager, "pk") is not None
    assert CompiledGet.make(User._default_manager, "username") is not None
    assert CompiledGet.make(User._default_manager, "date_joined") is None


def test_a_lookup_that_cannot_be_compiled_on_a_database_goes_through_the_orm(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    carol = User.objects.create_user("hs-carol", password="pw")
    lookup = CompiledGet.make(User._default_manager, "pk")
    assert lookup is not None

    def refuse(alias: str, size: int) -> Any:
        raise RuntimeError("this backend cannot")

    monkeypatch.setattr(lookup, "_compile", refuse)
    found = lookup.get(carol.pk)
    assert found is not None and found.pk == carol.pk and str(found) == "hs-carol"
    assert lookup.get(carol.pk + 1000) is None  # and again, without trying to compile


def test_a_batch_of_handshakes_reads_its_sessions_in_one_query_and_its_users_in_another() -> None:
    store = import_module(settings.SESSION_ENGINE).SessionStore
    dave = User.objects.create_user("hs-dave", password="pw")
    erin = User.objects.create_user("hs-erin", password="pw")
    quitter = User.objects.create_user("hs-quitter", password="pw")
    keys = [
        session_of(dave),
        "y" * 32,  # no such session
        session_of(erin),
        "",  # no key at all
        session_of(quitter),
    ]
    keys.append(keys[0])  # a second tab of dave's, in the same batch
    User.objects.filter(pk=quitter.pk).update(is_active=False)
    handshake_user.users_of_sessions([(store, keys[0])])  # compiled here, once
    with CaptureQueriesContext(connection) as queries:
        outcomes = handshake_user.users_of_sessions([(store, key) for key in keys])
    assert [ok for ok, _ in outcomes] == [True] * len(keys)
    answers = [user.pk for _, user in outcomes]
    assert answers == [dave.pk, None, erin.pk, None, None, dave.pk]
    assert answers == [djangos_answer(key).pk for key in keys]
    assert len(queries) == 2, [q["sql"] for q in queries]
    assert outcomes[0][1] is not outcomes[5][1], "each socket gets its own user instance"


def test_get_many_reads_more_values_than_one_query_holds_in_slices() -> None:
    users = [User(username=f"hs-many-{n}") for n in range(MANY_AT_ONCE * 2 + 3)]
    User.objects.bulk_create(users)
    ids = list(User.objects.filter(username__startswith="hs-many-").values_list("pk", flat=True))
    lookup = CompiledGet.make(User._default_manager, "pk")
    assert lookup is not None
    asked = [*ids, 10**9, ids[0]]  # one without a row, one twice
    with CaptureQueriesContext(connection) as queries:
        found = lookup.get_many(asked)
    assert sorted(found) == sorted(ids)
    assert all(found[pk].pk == pk and found[pk].username.startswith("hs-many-") for pk in ids)
    assert len(queries) == 3  # 64, 64 and the last 4 of 132 distinct values (padded to 4)


def test_a_database_failure_in_a_batch_is_every_handshakes_and_the_next_batch_is_served(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = import_module(settings.SESSION_ENGINE).SessionStore
    frank = User.objects.create_user("hs-frank", password="pw")
    key = session_of(frank)

    def broken(values: Any) -> Any:
        raise OperationalError("the database went away")

    monkeypatch.setattr(handshake_user.fast_store(store), "rows_of", staticmethod(broken))
    batched = db_thread.Batched(handshake_user.users_of_sessions, together=True)

    async def two_handshakes() -> list[Any]:
        return await asyncio.gather(
            batched(store, key), batched(store, key), return_exceptions=True
        )

    answers = asyncio.run(two_handshakes())
    assert [type(answer) for answer in answers] == [OperationalError, OperationalError]
    monkeypatch.undo()
    assert asyncio.run(batched(store, key)).pk == frank.pk  # a fresh connection serves again
