"""Login lockout through HAProxy: the replicas count the address HAProxy saw, never a header.

Each test connects from loopback addresses of its own (127.x.y.z, which all reach HAProxy's
127.0.0.1), so the lockouts it causes touch neither 127.0.0.1, where every other test logs in
as the demo users, nor another test; and it clears its addresses' failures when it ends.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator

import httpx
import pytest

from devtools.cluster import Cluster
from tests.conftest import manage
from tests.support.clients import login

LOCKED_TEXT = "Too many failed login attempts. Try again in 15 minutes."
MAX_FAILURES = 5  # LOGIN_USER_IP_MAX_FAILURES's default, which the cluster runs with


@pytest.fixture
def addresses(healthy_cluster: Cluster) -> Iterator[list[str]]:
    """Fresh loopback source addresses for this test, their failures cleared after it."""
    used: list[str] = []
    try:
        yield used
    finally:
        if used:
            manage(healthy_cluster, "axes_reset_ip", *used)


def new_address(used: list[str]) -> str:
    while True:
        ip = f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(1, 254)}"
        if ip not in used:
            used.append(ip)
            return ip


class Browser:
    """An HTTP client from one source address, posting the login form as a browser does."""

    def __init__(self, cluster: Cluster, source_ip: str) -> None:
        self.http = httpx.Client(
            base_url=cluster.url,
            timeout=10,
            transport=httpx.HTTPTransport(local_address=source_ip),
        )

    def log_in(
        self, username: str, password: str, *, path: str = "/accounts/login/", **headers: str
    ) -> httpx.Response:
        page = self.http.get(path)
        page.raise_for_status()
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
        assert token, f"{path} has no CSRF token"
        form = {"username": username, "password": password, "csrfmiddlewaretoken": token.group(1)}
        return self.http.post(path, data=form, headers=headers)

    def close(self) -> None:
        self.http.close()


def is_locked_out(answer: httpx.Response) -> bool:
    return answer.status_code == 429 and LOCKED_TEXT in answer.text


def test_wrong_passwords_lock_alice_out_from_that_address_only(
    healthy_cluster: Cluster, addresses: list[str]
) -> None:
    attacker_ip = new_address(addresses)
    attacker = Browser(healthy_cluster, attacker_ip)
    witness = Browser(healthy_cluster, attacker_ip)
    alice_at_home = Browser(healthy_cluster, new_address(addresses))
    try:
        for _ in range(MAX_FAILURES - 1):
            answer = attacker.log_in("alice", "guess")
            assert answer.status_code == 200 and "did not match" in answer.text
        assert is_locked_out(attacker.log_in("alice", "guess"))
        refused = attacker.log_in("alice", "alice-pass")
        assert is_locked_out(refused), refused.status_code
        assert refused.headers["Retry-After"] == "900"
        assert "sessionid" not in attacker.http.cookies
        # Bob on the same address (a NAT) still logs in: it is alice's lock, not the address's.
        assert witness.log_in("bob", "bob-pass").status_code == 302
        # Alice from elsewhere still logs in: an attacker cannot lock her out of her account.
        assert alice_at_home.log_in("alice", "alice-pass").status_code == 302
        login(healthy_cluster.url, "alice", "alice-pass").close()  # as every other test does
    finally:
        for browser in (attacker, witness, alice_at_home):
            browser.close()


def test_a_client_sent_x_forwarded_for_neither_resets_nor_moves_the_count(
    healthy_cluster: Cluster, addresses: list[str]
) -> None:
    attacker = Browser(healthy_cluster, new_address(addresses))
    try:
        for n in range(MAX_FAILURES - 1):
            # HAProxy drops the header and sends the address it saw; a new one each time would
            # start a new count if the replicas believed it.
            answer = attacker.log_in("carol", "guess", **{"X-Forwarded-For": f"192.0.2.{n}"})
            assert answer.status_code == 200
        assert is_locked_out(attacker.log_in("carol", "guess", **{"X-Forwarded-For": "127.0.0.1"}))
        spoofed = attacker.log_in("carol", "carol-pass", **{"X-Forwarded-For": "203.0.113.9"})
        assert is_locked_out(spoofed)
    finally:
        attacker.close()
    # Claiming 127.0.0.1 moved no failure there: carol still logs in from it.
    login(healthy_cluster.url, "carol", "carol-pass").close()


def test_the_admin_login_is_locked_out_after_wrong_passwords(
    healthy_cluster: Cluster, addresses: list[str]
) -> None:
    attacker = Browser(healthy_cluster, new_address(addresses))
    try:
        for _ in range(MAX_FAILURES - 1):
            assert attacker.log_in("admin", "guess", path="/admin/login/").status_code == 200
        assert is_locked_out(attacker.log_in("admin", "guess", path="/admin/login/"))
        assert is_locked_out(attacker.log_in("admin", "admin-pass", path="/admin/login/"))
        assert attacker.http.get("/admin/").status_code == 302  # to the login: not logged in
    finally:
        attacker.close()
    admin = login(healthy_cluster.url, "admin", "admin-pass")
    try:
        assert admin.get("/admin/").status_code == 200
    finally:
        admin.close()
