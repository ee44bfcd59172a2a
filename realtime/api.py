"""What the publish API shares: JSON errors, body parsing, and who may call it.

Callers are staff users with a session (and a CSRF token, since a browser sends the cookie on
its own) or holders of an API token (`Authorization: Bearer sb_…`, no cookie, so no CSRF).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Mapping
from typing import Any, Protocol

from channels.db import database_sync_to_async
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware

from realtime import connect_tokens, protocol
from realtime.selectors import api_token_authenticate, user_get_by_username
from realtime.services import token_digest

# 1 MiB: a batch of messages fits; anything larger is refused before it is parsed.
MAX_BODY_BYTES = 1024 * 1024


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class ApiRequest(Protocol):
    """What the publish endpoints read of a request: its headers (by any case), its body, and
    for a session caller its user. A Django HttpRequest is one; so is the publish port's own,
    lighter request (realtime/transport/publish_port.py)."""

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def body(self) -> bytes: ...

    def auser(self) -> Awaitable[Any]: ...


def error_body(code: str, message: str) -> dict[str, Any]:
    """The API's error shape: what every error answer's JSON holds."""
    return {"ok": False, "error": code, "message": message, "replica": settings.REPLICA_ID}


def ok_body(data: dict[str, Any]) -> dict[str, Any]:
    return {"ok": True, "replica": settings.REPLICA_ID, **data}


def error_response(status: int, code: str, message: str) -> JsonResponse:
    return JsonResponse(error_body(code, message), status=status)


def ok_response(data: dict[str, Any], status: int = 200) -> JsonResponse:
    return JsonResponse(ok_body(data), status=status)


def parse_json_object(request: ApiRequest) -> dict[str, Any]:
    # Content-Length first (nothing read yet); the body's own length for a chunked upload.
    declared = int(request.headers.get("Content-Length") or 0)
    if declared > MAX_BODY_BYTES or len(request.body) > MAX_BODY_BYTES:
        raise ApiError(
            413, "body_too_large", f"Request bodies may be at most {MAX_BODY_BYTES} bytes."
        )
    try:
        body = protocol.loads(request.body or b"null")
    except protocol.InvalidJson as exc:
        raise ApiError(400, "bad_json", f"The request body must be a JSON object: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "bad_json", "The request body must be a JSON object.")
    return body


def _csrf_failure(request: HttpRequest) -> bool:
    # The views are csrf_exempt so token callers need no cookie; session callers are checked
    # here with Django's own middleware logic. It only reads headers and cookies, no I/O.
    checker = CsrfViewMiddleware(_no_view)
    checker.process_request(request)
    return checker.process_view(request, _no_view, (), {}) is not None


def _no_view(request: HttpRequest) -> HttpResponse:
    """The middleware's `get_response` and view: the CSRF check above calls neither."""
    raise AssertionError("the CSRF check calls no view")


# A valid token is remembered per process for a few seconds, so a busy publisher's requests cost
# no thread hop and no query. Revoking a token therefore takes effect within that time.
_token_names: dict[str, tuple[str, float]] = {}
_TOKEN_CACHE_MAX = 1024


async def token_name(raw: str) -> str | None:
    """The name of the active token whose secret is `raw`, or None."""
    digest = token_digest(raw)
    now = time.monotonic()
    cached = _token_names.get(digest)
    if cached is not None and cached[1] > now:
        return cached[0]
    token = await database_sync_to_async(api_token_authenticate)(raw=raw)
    if token is None:
        _token_names.pop(digest, None)
        return None
    if settings.API_TOKEN_CACHE_SECS > 0:
        if len(_token_names) >= _TOKEN_CACHE_MAX:
            _token_names.clear()  # only valid tokens get here: a full cache is a rare event
        _token_names[digest] = (token.name, now + settings.API_TOKEN_CACHE_SECS)
    return token.name


async def authenticate_publisher(request: ApiRequest) -> str:
    """Who is publishing, as 'token:<name>' or 'staff:<username>'; ApiError if nobody may."""
    header = request.headers.get("Authorization")
    if header is not None:
        return f"token:{await _api_token_name(header)}"
    user = await request.auser()
    if not user.is_authenticated:
        raise ApiError(
            401, "not_authenticated", "Log in as staff, or send 'Authorization: Bearer <token>'."
        )
    if not user.is_staff:
        raise ApiError(403, "forbidden", "Only staff users and API tokens may publish.")
    _require_csrf(request)
    return f"staff:{user.get_username()}"


async def _api_token_name(header: str) -> str:
    """The name of the active API token an Authorization header carries; ApiError if none."""
    scheme, _, raw = header.partition(" ")
    if scheme.lower() != "bearer" or not raw.strip():
        raise ApiError(401, "bad_authorization", "Send 'Authorization: Bearer <token>'.")
    name = await token_name(raw.strip())
    if name is None:
        raise ApiError(401, "invalid_token", "The API token is unknown or revoked.")
    return name


def _require_csrf(request: ApiRequest) -> None:
    # Only a Django request carries a session (the publish port serves token requests only).
    if not isinstance(request, HttpRequest) or _csrf_failure(request):
        raise ApiError(
            403, "csrf_failed", "Send the CSRF token in the X-CSRFToken header with session auth."
        )


async def connect_token_subject(request: HttpRequest, body: dict[str, Any]) -> Any:
    """Whom a connection token is for: with an API token, the active user `body["user"]` names
    (a service opening sockets for its users); with a session, its own logged-in user (CSRF
    checked, as for any session POST). ApiError otherwise."""
    header = request.headers.get("Authorization")
    if header is not None:
        await _api_token_name(header)
        username = body.get("user")
        if not isinstance(username, str) or not username:
            raise ApiError(400, "bad_user", 'Name the token\'s user: {"user": "<username>"}.')
        named = await database_sync_to_async(user_get_by_username)(username=username)
        if named is None:
            raise ApiError(404, "unknown_user", f"No active user {username[:150]!r}.")
        return named
    user = await request.auser()
    if not user.is_authenticated:
        raise ApiError(401, "not_authenticated", "Log in, or send 'Authorization: Bearer <token>'.")
    _require_csrf(request)
    if body.get("user") not in (None, user.get_username()):
        raise ApiError(403, "forbidden", "A session gets tokens for its own user only.")
    return user


async def sse_sender_id(request: HttpRequest) -> int:
    """Whose frames a POST /sse/send carries: the user of the connection token in
    `Authorization: Bearer` (the one the stream opened with; a bearer credential, not a cookie,
    so no CSRF), or the logged-in session's user (CSRF checked). The replica holding the stream
    drops frames from anyone but its user. ApiError otherwise."""
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "bad_token", "Send Authorization: Bearer <connection token>.")
        try:
            return connect_tokens.verify(token.strip()).user_id
        except connect_tokens.BadToken as exc:
            raise ApiError(401, "bad_token", str(exc)) from None
    user = await request.auser()
    if not user.is_authenticated:
        raise ApiError(401, "not_authenticated", "Log in first; then reconnect.")
    _require_csrf(request)
    return int(user.pk)
