"""Login lockout (realtime/login_lockout.py) through Django's ASGI stack, as under Daphne.

Each test's client comes from an address of its own (the ASGI scope's client, which becomes
REMOTE_ADDR); the database is emptied after each test, so no failure outlives its test.
"""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth.models import User
from django.http import HttpResponse
from django.test import AsyncClient

pytestmark = pytest.mark.django_db(transaction=True)

ATTACKER = "198.51.100.7"
ELSEWHERE = "203.0.113.20"
LOCKED_TEXT = "Too many failed login attempts. Try again in 15 minutes."


@pytest.fixture(autouse=True)
async def users() -> None:
    create = sync_to_async(User.objects.create_user)
    for name in ("alice", "bob"):
        await create(username=name, password=f"{name}-pass")
    await create(username="admin", password="admin-pass", is_staff=True, is_superuser=True)


class ClientFrom(AsyncClient):
    """An ASGI test client connecting from `ip`: Daphne puts that in the scope, Django in
    REMOTE_ADDR (behind HAProxy, the address HAProxy put in X-Forwarded-For)."""

    def __init__(self, ip: str) -> None:
        super().__init__()
        self.ip = ip

    def _base_scope(self, **request: Any) -> dict[str, Any]:
        scope: dict[str, Any] = super()._base_scope(**request)
        scope["client"] = [self.ip, 0]
        return scope


def client_from(ip: str) -> AsyncClient:
    return ClientFrom(ip)


async def log_in(
    client: AsyncClient, username: str, password: str, *, path: str = "/accounts/login/", **kw: str
) -> HttpResponse:
    return await client.post(path, {"username": username, "password": password}, **kw)  # type: ignore[no-any-return]


def is_locked_out(answer: HttpResponse) -> bool:
    return answer.status_code == 429 and LOCKED_TEXT in answer.content.decode()


def test_the_limits_are_the_documented_defaults() -> None:
    assert (settings.LOGIN_USER_IP_MAX_FAILURES, settings.LOGIN_IP_MAX_FAILURES) == (5, 20)
    assert settings.LOGIN_LOCKOUT_SECS == 15 * 60


async def test_five_wrong_passwords_lock_the_username_from_that_ip_even_for_the_right_one() -> None:
    attacker = client_from(ATTACKER)
    for _ in range(4):
        answer = await log_in(attacker, "alice", "guess")
        assert answer.status_code == 200
        assert "did not match" in answer.content.decode(), "the login form still answers"
    fifth = await log_in(attacker, "alice", "guess")
    assert is_locked_out(fifth)
    assert fifth["Retry-After"] == "900"
    assert 'href="/accounts/login/"' in fifth.content.decode(), "the page extends base.html"
    right = await log_in(attacker, "alice", "alice-pass")
    assert is_locked_out(right)
    assert "sessionid" not in right.cookies
    assert (await attacker.get("/api/whoami")).json()["user"] is None


async def test_others_on_the_locked_out_ip_and_alice_elsewhere_still_log_in() -> None:
    attacker = client_from(ATTACKER)
    for _ in range(settings.LOGIN_USER_IP_MAX_FAILURES):
        await log_in(attacker, "alice", "guess")
    assert is_locked_out(await log_in(attacker, "alice", "alice-pass"))
    # Bob behind the same NAT: one user's lockout is not the address's.
    witness = await log_in(client_from(ATTACKER), "bob", "bob-pass")
    assert witness.status_code == 302 and "sessionid" in witness.cookies
    # Alice from her own address: nobody can lock her out from theirs.
    alice = await log_in(client_from(ELSEWHERE), "alice", "alice-pass")
    assert alice.status_code == 302


async def test_twenty_wrong_passwords_over_many_usernames_lock_the_ip_for_everyone() -> None:
    sprayer = client_from(ATTACKER)
    for n in range(settings.LOGIN_IP_MAX_FAILURES - 1):
        assert (await log_in(sprayer, f"user{n}", "Winter2025!")).status_code == 200
    assert is_locked_out(await log_in(sprayer, "user-last", "Winter2025!"))
    assert is_locked_out(await log_in(client_from(ATTACKER), "bob", "bob-pass"))
    assert (await log_in(client_from(ELSEWHERE), "bob", "bob-pass")).status_code == 302


async def test_admin_login_is_locked_out_too() -> None:
    attacker = client_from(ATTACKER)
    for _ in range(settings.LOGIN_USER_IP_MAX_FAILURES - 1):
        answer = await log_in(attacker, "admin", "guess", path="/admin/login/")
        assert answer.status_code == 200
    assert is_locked_out(await log_in(attacker, "admin", "guess", path="/admin/login/"))
    right = await log_in(attacker, "admin", "admin-pass", path="/admin/login/")
    assert is_locked_out(right)
    assert (await attacker.get("/admin/")).status_code == 302  # to the login: not logged in


async def test_the_site_and_admin_logins_share_one_count() -> None:
    attacker = client_from(ATTACKER)
    for path in ("/admin/login/", "/accounts/login/", "/admin/login/", "/accounts/login/"):
        assert (await log_in(attacker, "admin", "guess", path=path)).status_code == 200
    assert is_locked_out(await log_in(attacker, "admin", "guess", path="/accounts/login/"))
    assert is_locked_out(await log_in(attacker, "admin", "admin-pass", path="/admin/login/"))


async def test_a_client_sent_x_forwarded_for_changes_nothing() -> None:
    attacker = client_from(ATTACKER)
    for n in range(settings.LOGIN_USER_IP_MAX_FAILURES - 1):
        await log_in(attacker, "alice", "guess", headers={"X-Forwarded-For": f"192.0.2.{n}"})
    fifth = await log_in(attacker, "alice", "guess", headers={"X-Forwarded-For": ELSEWHERE})
    assert is_locked_out(fifth)
    spoofed = await log_in(attacker, "alice", "alice-pass", headers={"X-Forwarded-For": ELSEWHERE})
    assert is_locked_out(spoofed)


async def test_a_successful_login_clears_that_users_failures_from_that_ip() -> None:
    alice = client_from(ATTACKER)
    for _ in range(settings.LOGIN_USER_IP_MAX_FAILURES - 1):
        await log_in(alice, "alice", "typo")
    assert (await log_in(alice, "alice", "alice-pass")).status_code == 302
    again = client_from(ATTACKER)
    for _ in range(settings.LOGIN_USER_IP_MAX_FAILURES - 1):
        assert (await log_in(again, "alice", "typo")).status_code == 200
    assert (await log_in(again, "alice", "alice-pass")).status_code == 302
