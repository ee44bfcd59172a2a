"""The publish API's own lane past Django's request cycle, for callers with an API token.

A Django request here costs a replica ~3.5 ms of CPU, most of it thread hand-offs in the request
cycle: a thread-sensitive context per request, request_started/finished closing database
connections in a worker thread, sync middleware hooks. The publish itself is ~0.3 ms. Under a
broadcast storm every hand-off also waits for a turn of a busy event loop, so an API request
took ~130 ms and the publishers could not keep up with what the replicas could deliver.

POST requests to the publish endpoints that carry `Authorization: Bearer …` come here instead:
the body is read (at most api.MAX_BODY_BYTES), the Host header checked against ALLOWED_HOSTS,
and the very handler the endpoint's Django view runs (realtime/views.py `handle_*`) answers, so
validation, answers and errors are the same. Skipped is what a token request does not use:
sessions, CSRF (token callers are exempt), the auth and messages middleware, URL resolution,
and Django's response object (the answer holds what JsonResponse's would, in compact JSON). The
headers Django's middleware adds to these answers are added here. Anything else (staff from
the browser with a session, other paths and methods) goes to Django untouched. The publish
port (realtime/transport/publish_port.py) answers through `answer` too.
"""

from __future__ import annotations

import functools
import io
import logging

from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest

from realtime import protocol, views
from realtime.api import MAX_BODY_BYTES, ApiRequest, error_body
from realtime.asgi_types import ASGIApp, Receive, Scope, Send

logger = logging.getLogger(__name__)

# The handlers of the views realtime/urls.py routes these paths to (included at the site's root).
ROUTES: dict[str, views.ApiHandler] = {
    "/api/push": views.handle_push,
    "/api/push/batch": views.handle_push_batch,
    "/api/broadcast": views.handle_broadcast,
    "/api/publish": views.handle_publish,
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
        handler = ROUTES.get(scope["path"]) if scope["type"] == "http" else None
        if handler is None or scope["method"] != "POST" or not _has_authorization(scope):
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        if body is None:
            return  # the client went away
        if len(body) > MAX_BODY_BYTES:
            message = f"Request bodies may be at most {MAX_BODY_BYTES} bytes."
            status, headers, content = refusal(413, "body_too_large", message)
        else:
            status, headers, content = await answer(handler, ASGIRequest(scope, io.BytesIO(body)))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": content})


Answer = tuple[int, list[tuple[bytes, bytes]], bytes]


async def answer(handler: views.ApiHandler, request: ApiRequest) -> Answer:
    """`handler`'s answer to a token request (status, headers, body), after what
    CommonMiddleware would check first: the Host. Here and on the publish port."""
    headers = request.headers
    if not host_served(headers.get("Host") or "", headers.get("X-Forwarded-Host")):
        return refusal(400, "bad_host", "This host name is not served here.")
    status, body = await views.outcome(handler, request)
    return status, *_json(body)


def refusal(status: int, code: str, message: str) -> Answer:
    """An error answer in the API's shape, with the lane's headers."""
    return status, *_json(error_body(code, message))


def _json(body: dict[str, object]) -> tuple[list[tuple[bytes, bytes]], bytes]:
    # The values JsonResponse would write (its DjangoJSONEncoder adds nothing for these plain
    # ones), in the compact JSON every frame uses: orjson's where it can, 0.3 µs against 4 for
    # a push's answer, 4 against 40 for a batch's (docs/performance.md, the tenth round).
    content = protocol.encode_bytes(body)
    return answer_headers(len(content)), content


def answer_headers(length: int) -> list[tuple[bytes, bytes]]:
    """A JSON answer's headers, with what Django's middleware would add to them."""
    return [
        (b"content-type", b"application/json"),
        (b"content-length", str(length).encode()),  # as CommonMiddleware sets it: no chunking
        *SECURITY_HEADERS,
        (b"x-replica", settings.REPLICA_ID.encode()),
    ]


def host_served(host: str, forwarded_host: str | None) -> bool:
    """Whether Django's own check (HttpRequest.get_host: ALLOWED_HOSTS, USE_X_FORWARDED_HOST)
    lets a request with these headers in; asked once per host and settings, not per request."""
    return _host_served(
        host,
        forwarded_host,
        tuple(settings.ALLOWED_HOSTS),
        settings.USE_X_FORWARDED_HOST,
        settings.DEBUG,
    )


@functools.lru_cache(maxsize=256)
def _host_served(
    host: str,
    forwarded_host: str | None,
    allowed: tuple[str, ...],
    use_forwarded: bool,
    debug: bool,
) -> bool:
    # The settings are arguments so a changed setting is a new entry, never a stale verdict.
    probe = HttpRequest()
    probe.META = {"HTTP_HOST": host, "SERVER_NAME": "", "SERVER_PORT": ""}
    if forwarded_host is not None:
        probe.META["HTTP_X_FORWARDED_HOST"] = forwarded_host
    try:
        probe.get_host()
    except DisallowedHost as exc:
        # The detail (which host, which setting to change) is for the log, not the caller.
        logger.info("publish lane refused host: %s", exc)
        return False
    return True


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
