"""Connection tokens (realtime/connect_tokens.py) through the real entry middleware, consumer
and Redis: a token from POST /api/connect-token opens a socket without a session, from no
browser or a listed origin; expired, tampered and foreign tokens get bad_token and 4401 with
the reason; a token's stream list is the most its socket may read."""

from __future__ import annotations

import json
import time
from typing import Any

import jwt
import pytest
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User
from django.test import AsyncClient
from pytest_django.fixtures import Settings

from realtime import connect_tokens
from realtime.layer import StreamChannelLayer
from realtime.routing import websocket_urlpatterns
from realtime.services import api_token_issue
from realtime.socket_auth import SocketAuthMiddleware
from tests.support.clients import tampered

pytestmark = pytest.mark.django_db(transaction=True)

HOST = (b"host", b"localhost:8000")
APP_ORIGIN = "https://app.example.com"


@pytest.fixture
def app(settings: Settings) -> SocketAuthMiddleware:
    settings.ALLOWED_HOSTS = ["localhost", "testserver"]  # the socket's host; the test client's
    settings.CONNECT_TOKEN_ORIGINS = [APP_ORIGIN]
    return SocketAuthMiddleware(websocket_urlpatterns)


async def token_for(username: str, **body: Any) -> str:
    _, secret = await api_token_issue_async()
    answer = await AsyncClient().post(
        "/api/connect-token",
        {"user": username, **body},
        content_type="application/json",
        headers={"Authorization": f"Bearer {secret}"},
    )
    assert answer.status_code == 200, answer.content
    return answer.json()["token"]  # type: ignore[no-any-return]


async def api_token_issue_async() -> tuple[Any, str]:
    from asgiref.sync import sync_to_async

    return await sync_to_async(api_token_issue)(name=f"svc-{time.monotonic_ns()}")


async def opened(app: SocketAuthMiddleware, token: str, origin: str | None = None) -> Any:
    headers = [HOST] + ([(b"origin", origin.encode())] if origin else [])
    communicator = WebsocketCommunicator(app, f"/ws/?token={token}", headers=headers)
    accepted, _ = await communicator.connect(timeout=3)
    return communicator, accepted


async def test_a_token_opens_a_socket_without_a_session(
    app: SocketAuthMiddleware, layer: StreamChannelLayer
) -> None:
    alice = await User.objects.acreate(username="tok-alice")
    token = await token_for("tok-alice")
    for origin in (None, APP_ORIGIN, "http://localhost:8000"):  # no browser; listed; own site
        communicator, accepted = await opened(app, token, origin)
        assert accepted
        hello = json.loads(await communicator.receive_from(timeout=3))
        assert (hello["type"], hello["user_id"]) == ("hello", alice.pk)
        await communicator.disconnect()


async def test_an_unlisted_origin_is_refused_even_with_a_token(
    app: SocketAuthMiddleware, layer: StreamChannelLayer
) -> None:
    await User.objects.acreate(username="tok-bob")
    _, accepted = await opened(app, await token_for("tok-bob"), "https://evil.example")
    assert not accepted


def forged(**changes: Any) -> str:
    claims = {"sub": "1", "aud": connect_tokens.AUDIENCE, "exp": int(time.time()) + 60, **changes}
    return jwt.encode(claims, connect_tokens._key(), algorithm="HS256")


async def test_bad_tokens_get_the_reason_and_4401(
    app: SocketAuthMiddleware, layer: StreamChannelLayer
) -> None:
    good = await token_for((await User.objects.acreate(username="tok-carol")).username)
    cases = {
        "expired": (forged(exp=int(time.time()) - 5), "expired"),
        "tampered": (tampered(good), "signature"),
        "foreign audience": (forged(aud="someone-else"), "not a Switchboard"),
        "other key": (
            jwt.encode({"sub": "1", "aud": connect_tokens.AUDIENCE, "exp": 2**40}, "x" * 32),
            "signature",
        ),
        "alg none": (
            jwt.encode({"sub": "1", "aud": connect_tokens.AUDIENCE}, None, algorithm="none"),
            "not valid",
        ),
        "garbage": ("not-a-token", "not valid"),
    }
    for name, (token, reason) in cases.items():
        communicator, accepted = await opened(app, token)
        assert accepted, name
        error = json.loads(await communicator.receive_from(timeout=3))
        assert error["code"] == "bad_token" and reason in error["message"], (name, error)
        closed = await communicator.receive_output(timeout=3)
        assert closed == {"type": "websocket.close", "code": 4401}, name
        await communicator.disconnect()


async def test_a_tokens_stream_list_bounds_what_its_socket_reads(
    app: SocketAuthMiddleware, layer: StreamChannelLayer
) -> None:
    from chat.models import Room

    dave = await User.objects.acreate(username="tok-dave")
    for slug in ("allowed", "other"):
        await Room.objects.acreate(slug=slug, title=slug)
    communicator, _ = await opened(app, await token_for("tok-dave", streams=["room:allowed"]))
    hello = json.loads(await communicator.receive_from(timeout=3))
    assert hello["user_id"] == dave.pk
    for stream, answer in (("room:allowed", "subscribed"), ("room:other", "error")):
        await communicator.send_json_to({"type": "subscribe", "stream": stream})
        frame = json.loads(await communicator.receive_from(timeout=3))
        assert frame["type"] == answer, frame
    assert "does not include room:other" in frame["message"]
    await communicator.disconnect()


async def test_a_session_gets_a_token_for_itself_only(
    settings: Settings, layer: StreamChannelLayer
) -> None:
    erin = await User.objects.acreate(username="tok-erin")
    client = AsyncClient(enforce_csrf_checks=False)
    await client.aforce_login(erin)
    mine = await client.post("/api/connect-token", {}, content_type="application/json")
    assert mine.status_code == 200 and mine.json()["user"] == "tok-erin"
    assert connect_tokens.verify(mine.json()["token"]).user_id == erin.pk
    other = await client.post(
        "/api/connect-token", {"user": "someone"}, content_type="application/json"
    )
    assert (other.status_code, other.json()["error"]) == (403, "forbidden")
    anonymous = await AsyncClient().post("/api/connect-token", {}, content_type="application/json")
    assert anonymous.status_code == 401
