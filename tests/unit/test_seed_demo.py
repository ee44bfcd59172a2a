"""seed_demo creates what is missing and never changes an account or room that exists."""

from __future__ import annotations

from io import StringIO

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command

from chat.models import Room

pytestmark = pytest.mark.django_db


def seed() -> str:
    out = StringIO()
    call_command("seed_demo", stdout=out)
    return out.getvalue()


def test_seed_demo_creates_the_missing_demo_users_and_rooms() -> None:
    out = seed()
    assert User.objects.get(username="alice").check_password("alice-pass")
    admin = User.objects.get(username="admin")
    assert admin.is_staff and admin.is_superuser and admin.check_password("admin-pass")
    private = Room.objects.get(slug="alice-and-bob")
    assert {u.username for u in private.members.all()} == {"alice", "bob"}
    assert "alice  / alice-pass  (user, created)" in out
    assert "Demo rooms created: #lobby, #alice-and-bob" in out


def test_seed_demo_leaves_an_existing_admin_its_password_role_and_active_flag() -> None:
    admin = User.objects.create_user("admin", password="a real admin's own password")
    admin.is_active = False
    admin.save()
    hash_before = admin.password

    out = seed()

    admin.refresh_from_db()
    assert admin.password == hash_before
    assert not admin.is_active and not admin.is_staff and not admin.is_superuser
    assert "admin  exists with a password of its own; left as it is" in out
    assert "admin-pass" not in out


def test_seed_demo_run_again_changes_nothing_and_says_so() -> None:
    seed()
    alice = User.objects.get(username="alice")
    alice.is_staff = True  # an operator's later change
    alice.save()
    lobby = Room.objects.get(slug="lobby")
    lobby.title = "Renamed"
    lobby.save()
    private = Room.objects.get(slug="alice-and-bob")
    private.members.remove(User.objects.get(username="bob"))
    hashes = dict(User.objects.values_list("username", "password"))

    out = seed()

    assert dict(User.objects.values_list("username", "password")) == hashes
    assert User.objects.get(username="alice").is_staff
    assert Room.objects.get(slug="lobby").title == "Renamed"
    assert [u.username for u in private.members.all()] == ["alice"]
    assert "alice  / alice-pass  (exists, left as it is)" in out
    assert "Demo rooms that exist, left as they are: #lobby, #alice-and-bob" in out
