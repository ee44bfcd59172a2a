"""A new API token's secret is shown once, from the server-side session, never put in a cookie.

Django's default message storage is a cookie that is signed, not encrypted: anything that sees
the browser's cookies (a log, a proxy, a shared machine) would read the secret in it.
"""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import User
from django.test import Client

from realtime.models import ApiToken

pytestmark = pytest.mark.django_db


def test_creating_a_token_in_the_admin_shows_its_secret_without_a_messages_cookie() -> None:
    admin = User.objects.create_superuser("root", password="root-pass-for-tests")
    client = Client()
    client.force_login(admin)

    created = client.post("/admin/realtime/apitoken/add/", {"name": "deploy-bot"})

    assert created.status_code == 302, created.content[:500]
    assert "messages" not in created.cookies
    token = ApiToken.objects.get(name="deploy-bot")
    shown = client.get(created.headers["Location"])
    secret = re.search(rf"{re.escape(token.prefix)}[\w-]+", shown.content.decode())
    assert secret is not None, "the secret is shown on the next page"
    cookies = [*created.cookies.values(), *shown.cookies.values(), *client.cookies.values()]
    assert "messages" not in {cookie.key for cookie in cookies}
    assert not [cookie.key for cookie in cookies if secret.group(0) in cookie.value]
    # Shown once: the message is consumed with the page that displayed it.
    assert secret.group(0) not in client.get(created.headers["Location"]).content.decode()
