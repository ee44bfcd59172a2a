"""HAProxy's health checks answered past Django's middleware.

HAProxy asks every replica `GET /readyz` and `GET /healthz` each second (haproxy.cfg: the main
backend's checks and the fallback's). Through Django's request cycle each cost a replica ~10 ms
of CPU on the bench machine: the session, CSRF, auth and messages middleware each hand the
request to a thread and back. That was ~2% of a core per replica doing nothing, and a twentieth
of a replica's CPU under single pushes (docs/performance.md).

A probe from this host (HAProxy's checks carry no X-Forwarded-For, so the client is HAProxy
itself) is answered here, by the same view, with the headers Django's middleware would add.
From anywhere else it goes through Django as before: /healthz shows staff its details, which
needs their session. A Host that ALLOWED_HOSTS refuses goes to Django too, for its 400.
"""

from __future__ import annotations

import io
from collections.abc import Awaitable, Callable

from django.conf import settings
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest, HttpResponse

from realtime import views
from realtime.asgi_types import ASGIApp, Receive, Scope, Send
from realtime.middleware import content_security_policy
from realtime.publish_lane import SECURITY_HEADERS, host_served

# The probes, by path, as realtime/urls.py routes them (included at the site's root).
PROBES: dict[str, Callable[[HttpRequest], Awaitable[HttpResponse]]] = {
    "/readyz": views.readyz,
    "/healthz": views.healthz,
}

THIS_HOST = ("127.0.0.1", "::1")


class ProbeLane:
    """ASGI app: a GET of a probe from this host to its view, everything else to `app`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        view = PROBES.get(scope["path"]) if scope["type"] == "http" else None
        if view is None or scope["method"] != "GET" or not _from_this_host(scope):
            await self.app(scope, receive, send)
            return
        request = ASGIRequest(scope, io.BytesIO(b""))
        if not host_served(request.headers.get("Host") or "", None):
            await self.app(scope, receive, send)
            return
        response = await view(request)
        headers = [(k.lower().encode("latin1"), v.encode("latin1")) for k, v in response.items()]
        headers += [
            (b"content-length", str(len(response.content)).encode()),
            *SECURITY_HEADERS,
            (b"content-security-policy", content_security_policy(request).encode()),
            (b"x-replica", settings.REPLICA_ID.encode()),
        ]
        await send(
            {"type": "http.response.start", "status": response.status_code, "headers": headers}
        )
        await send({"type": "http.response.body", "body": response.content})


def _from_this_host(scope: Scope) -> bool:
    client = scope.get("client")
    return client is not None and client[0] in THIS_HOST and not _forwarded(scope)


def _forwarded(scope: Scope) -> bool:
    # Behind a proxy that forwards clients' addresses, the address is theirs, not this host's;
    # a request naming one came through a proxy, whatever the server made of it.
    return any(name == b"x-forwarded-for" for name, _ in scope.get("headers", ()))
