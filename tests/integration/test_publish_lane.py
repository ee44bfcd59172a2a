"""The publish API's lane past Django's request cycle, on a real Redis: what it takes, what it
passes on to Django, and that its answers are the API's answers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import HttpCommunicator
from pytest_django.fixtures import Settings

from realtime import api
from realtime.api import MAX_BODY_BYTES
from realtime.layer import StreamChannelLayer
from realtime.models import ApiToken
from realtime.publish_lane import PublishLane
from realtime.services import api_token_issue
from tests.integration.conftest import Fallback

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def fresh_token_cache() -> Iterator[None]:
    api._token_names.clear()
    yield
    api._token_names.clear()


async def call(
    app: Any,
    path: str,
    body: Any = None,
    *,
    method: str = "POST",
    token: str | None = None,
    host: str = "127.0.0.1",
) -> dict[str, Any]:
    headers = [(b"host", host.encode())]
    if token is not None:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    communicator = HttpCommunicator(app, method, path, body=content, headers=headers)
    return await communicator.get_response(timeout=5)  # type: ignore[no-any-return]


def headers_of(response: dict[str, Any]) -> dict[bytes, bytes]:
    return dict(response["headers"])


async def test_a_token_broadcast_is_answered_by_the_lane_with_the_apis_answer(
    layer: StreamChannelLayer,
) -> None:
    django = Fallback()
    lane = PublishLane(django)
    _, secret = await api_token_issue_async("lane")
    response = await call(lane, "/api/broadcast", {"payload": {"n": 1}}, token=secret)
    body = json.loads(response["body"])
    assert response["status"] == 200 and body["ok"] is True
    assert (body["stream"], body["seq"]) == ("broadcast", 1)
    headers = headers_of(response)
    assert headers[b"content-type"] == b"application/json"
    assert headers[b"content-length"] == str(len(response["body"])).encode()
    assert headers[b"x-content-type-options"] == b"nosniff"
    assert headers[b"x-frame-options"] == b"DENY"
    assert b"x-replica" in headers
    assert django.paths == []


async def test_requests_without_a_token_and_other_methods_go_to_django(
    layer: StreamChannelLayer,
) -> None:
    django = Fallback()
    lane = PublishLane(django)
    _, secret = await api_token_issue_async("lane")
    assert (await call(lane, "/api/broadcast", {"payload": 1}))["status"] == 299
    assert (await call(lane, "/api/broadcast", method="GET", token=secret))["status"] == 299
    assert (await call(lane, "/api/whoami", {"payload": 1}, token=secret))["status"] == 299
    assert django.paths == ["/api/broadcast", "/api/broadcast", "/api/whoami"]


async def test_the_lane_refuses_what_django_would_refuse(layer: StreamChannelLayer) -> None:
    lane = PublishLane(Fallback())
    _, secret = await api_token_issue_async("lane")
    too_big = b'{"payload": "' + b"x" * MAX_BODY_BYTES + b'"}'
    cases = [
        (await call(lane, "/api/broadcast", too_big, token=secret), 413, "body_too_large"),
        (
            await call(lane, "/api/broadcast", {"payload": 1}, token=secret, host="evil.example"),
            400,
            "bad_host",
        ),
        (
            await call(lane, "/api/broadcast", {"payload": 1}, token="sb_wrong"),
            401,
            "invalid_token",
        ),
        (
            await call(lane, "/api/push", {"user": "nobody", "payload": 1}, token=secret),
            404,
            "unknown_user",
        ),
        (
            await call(lane, "/api/publish", {"stream": "nope!", "payload": 1}, token=secret),
            400,
            "bad_stream",
        ),
        (
            await call(lane, "/api/publish", {"stream": "ops", "payload": 1}, token=secret),
            403,
            "forbidden_stream",
        ),
    ]
    got = [(r["status"], json.loads(r["body"])["error"]) for r, _, _ in cases]
    assert got == [(status, code) for _, status, code in cases]


async def test_a_revoked_token_is_refused_once_the_cache_time_is_up(
    layer: StreamChannelLayer, settings: Settings
) -> None:
    lane = PublishLane(Fallback())
    token, secret = await api_token_issue_async("lane")
    assert (await call(lane, "/api/broadcast", {"payload": 1}, token=secret))["status"] == 200
    await ApiToken.objects.filter(pk=token.pk).aupdate(is_active=False)
    # Within API_TOKEN_CACHE_SECS this replica still trusts it (the documented trade-off) ...
    assert (await call(lane, "/api/broadcast", {"payload": 2}, token=secret))["status"] == 200
    # ... and once the entry is stale, the database says no.
    api._token_names[next(iter(api._token_names))] = ("lane", 0.0)
    response = await call(lane, "/api/broadcast", {"payload": 3}, token=secret)
    assert response["status"] == 401 and json.loads(response["body"])["error"] == "invalid_token"
    settings.API_TOKEN_CACHE_SECS = 0
    await ApiToken.objects.filter(pk=token.pk).aupdate(is_active=True)
    assert (await call(lane, "/api/broadcast", {"payload": 4}, token=secret))["status"] == 200
    assert api._token_names == {}  # with no cache time nothing is remembered


async def api_token_issue_async(name: str) -> tuple[ApiToken, str]:
    return await database_sync_to_async(api_token_issue)(name=name)  # type: ignore[no-any-return]
