"""The WebSocket entry point in front of the consumer: origin check, session login and routing.

It replaces Channels' `AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(routes)))`.
That stack is five middlewares, and each keeps a coroutine frame and its own copy of the scope
alive for as long as the socket is open (~4-5 KiB per connection, measured with tracemalloc on
a replica); the scope also keeps the decoded session, and the session middleware wraps `send`,
so every frame sent does a LazyObject lookup. Sockets never write the session, so all this
needs is one frame, one scope copy holding the user, and Daphne's own `send` passed through
(`direct_send.ws_protocol_of` finds Daphne's protocol behind it).

The origin check compares the whole origin, as Django's CSRF check does for a POST: scheme,
host and port must be the page's own (the request's Host, which must be in ALLOWED_HOSTS, and
https when the request was secure), or listed in CSRF_TRUSTED_ORIGINS. Channels' validator
compared host names only, so `http://localhost:1234` (any other program on the machine) was
accepted. Refusals (a foreign or missing Origin, an unknown path) close before accept, as
Channels' WebsocketDenier does, so Daphne answers HTTP 403.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Mapping, Sequence
from importlib import import_module
from types import MappingProxyType
from typing import Any
from urllib.parse import parse_qs

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import AnonymousUser
from django.contrib.sessions.backends.base import SessionBase
from django.core.exceptions import ImproperlyConfigured
from django.http import parse_cookie
from django.http.request import split_domain_port, validate_host
from django.urls import URLPattern

from realtime import connect_tokens, db_thread, handshake_user
from realtime.asgi_types import ASGIApp, Receive, Scope, Send

logger = logging.getLogger(__name__)

# `url_route` of a route without parameters (ours): one shared read-only value rather than a
# dict, a tuple and another dict kept per socket.
_NO_ROUTE_ARGS = MappingProxyType({"args": (), "kwargs": MappingProxyType({})})


class SocketAuthMiddleware:
    """ASGI app for WebSocket scopes: refuses foreign origins and unknown paths, logs the
    session's user in, and calls the route's consumer with `scope["user"]` set."""

    def __init__(self, routes: Sequence[URLPattern]) -> None:
        for route in routes:
            if not isinstance(route, URLPattern) or getattr(route.callback, "_path_routing", False):
                raise ImproperlyConfigured(
                    f"SocketAuthMiddleware routes path() entries straight to consumers; {route!r} "
                    "is an include() or a nested URLRouter: list its routes instead."
                )
        self.routes = list(routes)
        # As HttpRequest.get_host() reads them: DEBUG with no ALLOWED_HOSTS allows local hosts.
        self.allowed_hosts = list(settings.ALLOWED_HOSTS)
        if settings.DEBUG and not self.allowed_hosts:
            self.allowed_hosts = [".localhost", "127.0.0.1", "[::1]"]
        self.trusted_origins = {origin.lower() for origin in settings.CSRF_TRUSTED_ORIGINS}
        # SECURE_PROXY_SSL_HEADER names a META key ("HTTP_X_FORWARDED_PROTO"); scopes carry the
        # raw header name.
        proxy_ssl = getattr(settings, "SECURE_PROXY_SSL_HEADER", None)
        self.proxy_ssl_header: tuple[bytes, bytes] | None = None
        if proxy_ssl:
            header = proxy_ssl[0].removeprefix("HTTP_").replace("_", "-").lower()
            self.proxy_ssl_header = (header.encode(), proxy_ssl[1].encode())
        self.session_store: type[SessionBase] = import_module(settings.SESSION_ENGINE).SessionStore
        self.token_origins = {origin.lower() for origin in settings.CONNECT_TOKEN_ORIGINS}

    # asgiref (ProtocolTypeRouter, the test communicators) would take a __call__ that is not a
    # coroutine function for an ASGI 2 app without this hint.
    _asgi_single_callable = True

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # Not a coroutine function: it returns the coroutine that serves the socket, so no frame
        # of its own waits on it for the socket's life (~0.3 KiB a socket).
        if scope["type"] == "http":
            return self._serve_event_stream(scope, receive, send)
        if scope["type"] != "websocket":
            raise ValueError(
                f"SocketAuthMiddleware serves WebSocket and SSE scopes, not {scope['type']!r}: "
                "route other protocols elsewhere in ProtocolTypeRouter."
            )
        return self._serve(scope, receive, send, deny=_deny)

    async def _serve_event_stream(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The SSE transport's GET (realtime/transport/sse.py), checked like a handshake. A
        same-origin EventSource sends no Origin (fetch only adds it to cross-origin GETs), so
        there the browser's Sec-Fetch-Site must not say cross-site."""
        if scope.get("method") != "GET":
            await _http_refusal(
                send, 405, b"GET /sse/ opens an event stream; frames go to POST /sse/send."
            )
            return
        fetch_site = next((v for k, v in scope.get("headers", ()) if k == b"sec-fetch-site"), None)
        if fetch_site not in (None, b"same-origin", b"none"):
            logger.info("event stream refused: Sec-Fetch-Site %r", fetch_site)
            await _http_refusal(send, 403, b"Event streams open from this site's pages only.")
            return
        await self._serve(scope, receive, send, deny=_deny_http, origin_required=False)

    async def _serve(
        self, scope: Scope, receive: Receive, send: Send, *, deny: Any, origin_required: bool = True
    ) -> None:
        origin = cookie = host = None
        secure = scope.get("scheme") in ("wss", "https")
        for name, value in scope.get("headers", ()):
            if name == b"origin":
                origin = value  # the last one, as Channels' OriginValidator reads it
            elif name == b"cookie" and cookie is None:
                cookie = value  # the first one, as Channels' CookieMiddleware reads it
            elif name == b"host" and host is None:
                host = value
            elif self.proxy_ssl_header is not None and name == self.proxy_ssl_header[0]:
                secure = value == self.proxy_ssl_header[1]
        token = _query_value(scope.get("query_string", b""), "token")
        if token is not None:
            # A connection token: also from the origins listed for tokens, or from no browser
            # at all (a browser always sends Origin; a cookie is not what authenticates here).
            origin_ok = origin is None or (
                origin.decode("latin1").lower() in self.token_origins
                or self._origin_allowed(origin, host, secure=secure)
            )
        else:
            origin_ok = (origin is None and not origin_required) or self._origin_allowed(
                origin, host, secure=secure
            )
        if not origin_ok:
            logger.info("socket refused: origin %r is not this site's (host %r)", origin, host)
            await deny(receive, send)
            return
        route = self._route(scope)
        if route is None:
            logger.info("socket refused: no route for path %r", scope.get("path"))
            await deny(receive, send)
            return
        app, url_route = route
        if token is not None:
            await app({**scope, **await _token_login(token), "url_route": url_route}, receive, send)
            return
        # This frame lives as long as the socket: the parsed cookies die in _user, not here.
        user, session_key = await self._user(cookie)
        await app(
            {**scope, "user": user, "session_key": session_key, "url_route": url_route},
            receive,
            send,
        )

    async def _user(
        self, cookie: bytes | None
    ) -> tuple[AbstractBaseUser | AnonymousUser, str | None]:
        """The session's user, and the session's key while it has a logged-in user: the socket
        ends when that session does (logout, deletion, expiry; see realtime/session_watch.py)."""
        cookies = parse_cookie(cookie.decode("latin1")) if cookie else {}
        session_key = cookies.get(settings.SESSION_COOKIE_NAME)
        if not session_key:
            return AnonymousUser(), None  # no thread hop for a socket without a session
        user = await _user_of_session(self.session_store, session_key)
        return user, (session_key if user.is_authenticated else None)

    def _origin_allowed(self, origin: bytes | None, host: bytes | None, *, secure: bool) -> bool:
        """The whole origin (scheme://host[:port]) is this request's own, on an allowed host,
        or one of CSRF_TRUSTED_ORIGINS. No Origin: refused (browsers always send one)."""
        if origin is None or host is None:
            return False
        origin_text = origin.decode("latin1").lower()
        host_text = host.decode("latin1").lower()
        domain, _ = split_domain_port(host_text)
        if not domain or not validate_host(domain, self.allowed_hosts):
            return False
        if origin_text == f"{'https' if secure else 'http'}://{host_text}":
            return True
        return origin_text in self.trusted_origins

    def _route(self, scope: Scope) -> tuple[ASGIApp, Mapping[str, Any]] | None:
        """The consumer and `url_route` for the scope's path, as Channels' URLRouter finds them."""
        path = scope.get("path")
        if path is None:
            return None
        root_path = scope.get("root_path", "")
        if root_path:
            if not path.startswith(root_path):
                return None
            path = path[len(root_path) :]
        path = path.lstrip("/")
        for route in self.routes:
            match = route.pattern.match(path)
            if match:
                _, args, kwargs = match
                kwargs = {**kwargs, **route.default_args}
                url_route = {"args": args, "kwargs": kwargs} if args or kwargs else _NO_ROUTE_ARGS
                return route.callback, url_route
        return None


def _query_value(query_string: bytes, name: str) -> str | None:
    """One parameter of the query string (the last if repeated), or None."""
    values = parse_qs(query_string.decode("latin1"), keep_blank_values=True).get(name)
    return values[-1] if values else None


async def _token_login(token: str) -> dict[str, Any]:
    """The scope entries for a socket opened with a connection token: its user (anonymous,
    with the reason, when the token or its user is refused) and the streams it may read."""
    try:
        claims = connect_tokens.verify(token)
    except connect_tokens.BadToken as exc:
        logger.info("socket token refused: %s", exc)
        return {"user": AnonymousUser(), "session_key": None, "token_error": str(exc)}
    user = (
        await get_user_model()._default_manager.filter(pk=claims.user_id, is_active=True).afirst()
    )
    if user is None:
        return {
            "user": AnonymousUser(),
            "session_key": None,
            "token_error": "The connection token's user does not exist or is deactivated.",
        }
    return {"user": user, "session_key": None, "token_streams": claims.streams}


async def _http_refusal(send: Send, status: int, text: bytes) -> None:
    headers = [(b"content-type", b"text/plain; charset=utf-8")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": text})


async def _deny_http(receive: Receive, send: Send) -> None:
    await _http_refusal(send, 403, b"This origin may not open an event stream here.")


async def _deny(receive: Receive, send: Send) -> None:
    """Close before accept, as Channels' WebsocketDenier does: Daphne answers HTTP 403."""
    message = await receive()
    if message["type"] == "websocket.connect":
        await send({"type": "websocket.close"})


async def _user_of_session(
    store: type[SessionBase], session_key: str
) -> AbstractBaseUser | AnonymousUser:
    """The session's user, checked as Django checks it on every request (the session's auth
    hash must match the user's: a changed password logs other sessions out), or AnonymousUser:
    Django's get_user with its two lookups compiled once (realtime/handshake_user.py), in one
    hop to the hot paths' database thread (realtime/db_thread.py), shared by the handshakes
    that arrive together."""
    user: AbstractBaseUser | AnonymousUser = await _users_of_sessions(store, session_key)
    return user


_users_of_sessions: db_thread.Batched[Any] = db_thread.Batched(
    handshake_user.users_of_sessions, together=True
)


class EventStreams:
    """HTTP requests for /sse/ to the socket stack (the SSE transport), the rest to `app`."""

    def __init__(self, streams: ASGIApp, app: ASGIApp) -> None:
        self.streams = streams
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("path") == "/sse/":
            await self.streams(scope, receive, send)
        else:
            await self.app(scope, receive, send)
