"""The WebSocket entry middleware: whole origins compared (scheme, host and port), the session's
user logged in as Django checks it, unknown paths refused, and Daphne's `send` handed on
untouched."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from django.contrib.auth.models import User
from django.contrib.sessions.models import Session
from django.test import AsyncClient
from django.urls import path
from django.utils import timezone
from pytest_django.fixtures import Settings

from realtime import transport
from realtime.socket_auth import SocketAuthMiddleware

pytestmark = pytest.mark.django_db(transaction=True)

OURS = "http://localhost:8000"
HOST = "localhost:8000"


class Consumer:
    """Stands in for the consumer: keeps each scope and send it is called with, and accepts."""

    def __init__(self) -> None:
        self.scopes: list[dict[str, Any]] = []
        self.sends: list[Any] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.scopes.append(scope)
        self.sends.append(send)
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        await receive()  # websocket.disconnect


@pytest.fixture
def consumer() -> Consumer:
    return Consumer()


@pytest.fixture
def app(settings: Settings, consumer: Consumer) -> SocketAuthMiddleware:
    settings.ALLOWED_HOSTS = ["localhost", ".example.com"]
    settings.DEBUG = False
    return SocketAuthMiddleware([path("ws/", consumer)])


async def handshake(
    app: Any,
    *,
    url: str = "/ws/",
    origin: str | None = OURS,
    cookie: str | None = None,
    host: str = HOST,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> bool:
    """Whether the app accepts the socket (a close before accept is Daphne's HTTP 403)."""
    headers = [(b"host", host.encode()), *(extra or [])]
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    if cookie is not None:
        headers.append((b"cookie", cookie.encode()))
    communicator = WebsocketCommunicator(app, url, headers=headers)
    accepted, _ = await communicator.connect(timeout=3)
    await communicator.disconnect(timeout=3)
    return bool(accepted)


async def logged_in(user: User) -> str:
    """A session key of `user`, made by Django's own login."""
    client = AsyncClient()
    await client.aforce_login(user)
    return str(client.cookies[django_settings.SESSION_COOKIE_NAME].value)


def session_cookie(key: str) -> str:
    return f"csrftoken=abc; {django_settings.SESSION_COOKIE_NAME}={key}; SERVERID=d1"


@pytest.mark.parametrize(
    ("origin", "accepted"),
    [
        (OURS, True),
        ("HTTP://LOCALHOST:8000", True),  # scheme and host are case-insensitive
        ("http://localhost:1234", False),  # another port: another program on the machine
        ("http://localhost", False),
        ("https://localhost:8000", False),  # another scheme
        ("ws://localhost:8000", False),
        ("http://localhost:8000.evil.example", False),
        ("http://evil.example", False),
        ("http://127.0.0.1:8000", False),  # the same machine under another name: another origin
        ("null", False),
        ("file://", False),
        ("", False),
        (None, False),
    ],
)
async def test_only_the_pages_own_whole_origin_is_accepted(
    app: SocketAuthMiddleware, origin: str | None, accepted: bool
) -> None:
    assert await handshake(app, origin=origin) == accepted


async def test_origins_listed_in_csrf_trusted_origins_are_accepted_exactly(
    settings: Settings,
) -> None:
    settings.ALLOWED_HOSTS = ["localhost"]
    settings.CSRF_TRUSTED_ORIGINS = ["https://app.example.com"]
    app = SocketAuthMiddleware([path("ws/", Consumer())])
    assert await handshake(app, origin="https://app.example.com")
    assert not await handshake(app, origin="http://app.example.com")
    assert not await handshake(app, origin="https://app.example.com:8443")


async def test_a_host_not_in_allowed_hosts_is_refused_even_from_its_own_origin(
    app: SocketAuthMiddleware,
) -> None:
    assert not await handshake(app, host="evil.example", origin="http://evil.example")
    assert await handshake(app, host="chat.example.com", origin="http://chat.example.com")


async def test_behind_a_tls_proxy_the_origin_must_be_https(
    settings: Settings,
) -> None:
    settings.ALLOWED_HOSTS = ["localhost"]
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    app = SocketAuthMiddleware([path("ws/", Consumer())])
    tls = [(b"x-forwarded-proto", b"https")]
    assert await handshake(app, origin="https://localhost:8000", extra=tls)
    assert not await handshake(app, origin="http://localhost:8000", extra=tls)
    assert await handshake(app, origin="http://localhost:8000")


async def test_a_foreign_origin_is_refused_before_accept_and_never_reaches_the_consumer(
    app: SocketAuthMiddleware, consumer: Consumer
) -> None:
    communicator = WebsocketCommunicator(app, "/ws/", headers=[(b"origin", b"http://evil.example")])
    assert await communicator.connect(timeout=3) == (False, 1000)  # websocket.close: HTTP 403
    await communicator.wait(timeout=3)
    assert consumer.scopes == []


async def test_without_an_origin_header_the_socket_is_refused_even_if_every_host_is_allowed(
    settings: Settings, app: SocketAuthMiddleware
) -> None:
    assert not await handshake(app, origin=None)
    settings.ALLOWED_HOSTS = ["*"]
    assert not await handshake(SocketAuthMiddleware([path("ws/", Consumer())]), origin=None)


@pytest.mark.parametrize("origin", ["http://[::1", "http://[localhost]"])
async def test_a_malformed_origin_is_refused_where_channels_would_raise(
    app: SocketAuthMiddleware, consumer: Consumer, origin: str
) -> None:
    assert not await handshake(app, origin=origin)
    assert consumer.scopes == []


async def test_without_a_cookie_the_user_is_anonymous(
    app: SocketAuthMiddleware, consumer: Consumer
) -> None:
    assert await handshake(app)
    assert await handshake(app, cookie="csrftoken=abc; SERVERID=d1")
    assert [s["user"].is_anonymous for s in consumer.scopes] == [True, True]


async def test_an_unknown_session_key_is_anonymous(
    app: SocketAuthMiddleware, consumer: Consumer
) -> None:
    assert await handshake(app, cookie=session_cookie("nosuchsessionkey0123456789abcdef"))
    assert await handshake(app, cookie=session_cookie("x"))  # too short for a key at all
    assert [s["user"].is_anonymous for s in consumer.scopes] == [True, True]


async def test_an_expired_session_is_anonymous(
    app: SocketAuthMiddleware, consumer: Consumer
) -> None:
    key = await logged_in(await User.objects.acreate_user("alice", password="pw"))
    await Session.objects.filter(pk=key).aupdate(expire_date=timezone.now() - timedelta(seconds=1))
    assert await handshake(app, cookie=session_cookie(key))
    assert consumer.scopes[0]["user"].is_anonymous


async def test_a_valid_session_logs_its_user_in_with_nothing_else_added_to_the_scope(
    app: SocketAuthMiddleware, consumer: Consumer
) -> None:
    alice = await User.objects.acreate_user("alice", password="pw")
    await User.objects.acreate_user("bob", password="pw")
    assert await handshake(app, url="/ws/?resume=x", cookie=session_cookie(await logged_in(alice)))
    scope = consumer.scopes[0]
    assert scope["user"].is_authenticated and scope["user"].pk == alice.pk
    assert type(scope["user"]) is User  # the user itself, not a lazy object resolved per use
    assert scope["query_string"] == b"resume=x"
    assert "session" not in scope and "cookies" not in scope
    assert dict(scope["url_route"]) == {"args": (), "kwargs": {}}


async def test_a_session_from_before_a_password_change_is_anonymous_and_flushed_as_by_django(
    app: SocketAuthMiddleware, consumer: Consumer
) -> None:
    alice = await User.objects.acreate_user("alice", password="old")
    key = await logged_in(alice)
    alice.set_password("new")
    await alice.asave()
    assert await handshake(app, cookie=session_cookie(key))
    assert consumer.scopes[0]["user"].is_anonymous
    assert not await Session.objects.filter(pk=key).aexists()


async def test_a_session_signed_with_a_fallback_secret_logs_in_and_keeps_its_key(
    settings: Settings, app: SocketAuthMiddleware, consumer: Consumer
) -> None:
    alice = await User.objects.acreate_user("alice", password="pw")
    key = await logged_in(alice)
    settings.SECRET_KEY_FALLBACKS = [settings.SECRET_KEY]
    settings.SECRET_KEY = "a-rotated-secret-key-for-this-test-only"
    assert await handshake(app, cookie=session_cookie(key))
    assert consumer.scopes[0]["user"].pk == alice.pk
    # Django rotates the key of such a session, but a socket cannot send the browser the new
    # one: the browser's cookie must still name a live session.
    assert await Session.objects.filter(pk=key).aexists()


async def test_an_unknown_path_is_refused_before_accept(
    app: SocketAuthMiddleware, consumer: Consumer
) -> None:
    for url in ("/", "/ws", "/ws/extra/", "/wss/", "/admin/"):
        assert not await handshake(app, url=url), url
    assert consumer.scopes == []


async def test_route_parameters_reach_the_consumer_as_urlrouter_gives_them(
    consumer: Consumer,
) -> None:
    app = SocketAuthMiddleware([path("ws/", Consumer()), path("rooms/<slug:room>/", consumer)])
    assert await handshake(app, url="/rooms/tea/")
    assert consumer.scopes[0]["url_route"] == {"args": (), "kwargs": {"room": "tea"}}


async def test_the_servers_fast_path_reaches_the_consumer_with_send_untouched(
    app: SocketAuthMiddleware, consumer: Consumer
) -> None:
    """Our server offers Daphne's protocol as a scope extension; the middleware must pass the
    extension and Daphne's own `send` on, so the consumer picks the fast writer."""
    protocol = object()
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for message in ({"type": "websocket.connect"}, {"type": "websocket.disconnect", "code": 1000}):
        inbox.put_nowait(message)
    headers = [(b"origin", OURS.encode()), (b"host", HOST.encode())]
    extensions = {transport.FAST_PATH: {"protocol": protocol}}
    scope = {"type": "websocket", "path": "/ws/", "headers": headers, "extensions": extensions}
    await asyncio.wait_for(app(scope, inbox.get, send), timeout=3)
    assert consumer.sends == [send]
    writer = transport.writer_for(consumer.scopes[0], consumer.sends[0])
    assert writer.name == "daphne-fast-path" and writer.protocol is protocol  # type: ignore[attr-defined]
    assert transport.writer_for({"type": "websocket"}, send).name == "asgi"
    assert sent == [{"type": "websocket.accept"}]


async def test_other_scope_types_are_a_configuration_error(app: SocketAuthMiddleware) -> None:
    with pytest.raises(ValueError, match="WebSocket and SSE scopes, not 'lifespan'"):
        await app({"type": "lifespan"}, None, None)


async def event_stream_status(
    app: SocketAuthMiddleware, *, method: str = "GET", headers: list[tuple[bytes, bytes]]
) -> int:
    """The status of GET /sse/ through the middleware (200: it reached the consumer)."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": "/sse/", "headers": headers}
    await asyncio.wait_for(app(scope, receive, send), timeout=3)
    return int(sent[0]["status"]) if sent else 200


async def test_an_event_stream_is_refused_cross_site_and_for_other_methods(
    settings: Settings,
) -> None:
    settings.ALLOWED_HOSTS = ["localhost"]
    reached: list[dict[str, Any]] = []

    async def consumer(scope: dict[str, Any], receive: Any, send: Any) -> None:
        reached.append(scope)

    app = SocketAuthMiddleware([path("sse/", consumer)])
    host = (b"host", HOST.encode())
    # Same-origin EventSource: no Origin header (fetch adds none to same-origin GETs).
    assert (
        await event_stream_status(app, headers=[host, (b"sec-fetch-site", b"same-origin")]) == 200
    )
    assert await event_stream_status(app, headers=[host]) == 200  # not a browser
    assert await event_stream_status(app, headers=[host, (b"origin", OURS.encode())]) == 200
    assert len(reached) == 3
    cross_site = [host, (b"sec-fetch-site", b"cross-site")]
    assert await event_stream_status(app, headers=cross_site) == 403
    foreign = [host, (b"origin", b"http://evil.example")]
    assert await event_stream_status(app, headers=foreign) == 403
    assert await event_stream_status(app, method="POST", headers=[host]) == 405
    assert len(reached) == 3
