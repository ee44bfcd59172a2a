"""The publish API's own lane past Django's request cycle, for callers with an API token.

A Django request here costs a replica ~3.5 ms of CPU, most of it thread hand-offs in the request
cycle: a thread-sensitive context per request, request_started/finished closing database
connections in a worker thread, sync middleware hooks. The publish itself is ~0.3 ms. Under a
broadcast storm every hand-off also waits for a turn of a busy event loop, so an API request
took ~130 ms and the publishers could not keep up with what the replicas could deliver.

POST requests to the publish endpoints that carry `Authorization: Bearer …` come here instead:
the body is read (at most api.MAX_BODY_BYTES), the Host header checked against ALLOWED_HOSTS,
and the very view function the URL conf names runs on an ASGIRequest, so validation, answers
and errors are the same. Skipped is what a token request does not use: sessions, CSRF (token
callers are exempt), the auth and messages middleware, URL resolution. The headers Django's
middleware adds to these answers are added here. Anything else (staff from the browser with a
session, other paths and methods) goes to Django untouched.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Awaitable, Callable

from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest, HttpResponse

from realtime import views
from realtime.api import MAX_BODY_BYTES, error_response
from realtime.asgi_types import ASGIApp, Receive, Scope, Send

logger = logging.getLogger(__name__)

# The views, by path, exactly as realtime/urls.py routes them (included at the site's root).
ROUTES: dict[str, Callable[[HttpRequest], Awaitable[HttpResponse]]] = {
    "/api/push": views.api_push,
    "/api/push/batch": views.api_push_batch,
    "/api/broadcast": views.api_broadcast,
    "/api/publish": views.api_publish,
}

# What SecurityMiddleware and XFrameOptionsMiddleware add to these answers under Django.
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
]


class PublishLane:
    """ASGI app: token-authenticated publish requests to their view, the rest to `app`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        view = ROUTES.get(scope["path"]) if scope["type"] == "http" else None
        if view is None or scope["method"] != "POST" or not _has_authorization(scope):
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        if body is None:
            return  # the client went away
        if len(body) > MAX_BODY_BYTES:
            response: HttpResponse = error_response(
                413, "body_too_large", f"Request bodies may be at most {MAX_BODY_BYTES} bytes."
            )
        else:
            response = await answer(view, ASGIRequest(scope, io.BytesIO(body)))
        await self._answer(response, send)

    async def _answer(self, response: HttpResponse, send: Send) -> None:
        headers = answer_headers(response)
        start = {"type": "http.response.start", "status": response.status_code, "headers": headers}
        await send(start)
        await send({"type": "http.response.body", "body": response.content})


async def answer(
    view: Callable[[HttpRequest], Awaitable[HttpResponse]], request: HttpRequest
) -> HttpResponse:
    """The view's answer, after what CommonMiddleware would check first: the Host. Here and on
    the publish port (realtime/transport/publish_port.py)."""
    try:
        request.get_host()
    except DisallowedHost as exc:
        # The detail (which host, which setting to change) is for the log, not the caller.
        logger.info("publish lane refused host: %s", exc)
        return error_response(400, "bad_host", "This host name is not served here.")
    return await view(request)


def answer_headers(response: HttpResponse) -> list[tuple[bytes, bytes]]:
    """The response's headers, with what Django's middleware would add to them."""
    headers = [(k.lower().encode("latin1"), v.encode("latin1")) for k, v in response.items()]
    if not response.has_header("Content-Length"):  # as CommonMiddleware sets it: no chunking
        headers.append((b"content-length", str(len(response.content)).encode()))
    headers += SECURITY_HEADERS
    headers.append((b"x-replica", settings.REPLICA_ID.encode()))
    return headers


def _has_authorization(scope: Scope) -> bool:
    return any(name == b"authorization" for name, _ in scope.get("headers", ()))


async def _read_body(receive: Receive) -> bytes | None:
    """The request body, read no further than one byte past the limit; None on disconnect."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        if size <= MAX_BODY_BYTES:
            chunks.append(chunk)
            size += len(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
