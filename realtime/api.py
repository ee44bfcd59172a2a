"""What the publish API shares: JSON errors, body parsing, and who may call it.

Callers are staff users with a session (and a CSRF token, since a browser sends the cookie on
its own) or holders of an API token (`Authorization: Bearer sb_…`, no cookie, so no CSRF).
"""

from __future__ import annotations

import json
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware

from realtime.selectors import api_token_authenticate

# 1 MiB: a batch of messages fits; anything larger is refused before it is parsed.
MAX_BODY_BYTES = 1024 * 1024


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def error_response(status: int, code: str, message: str) -> JsonResponse:
    return JsonResponse(
        {"ok": False, "error": code, "message": message, "replica": settings.REPLICA_ID},
        status=status,
    )


def ok_response(data: dict[str, Any], status: int = 200) -> JsonResponse:
    return JsonResponse({"ok": True, "replica": settings.REPLICA_ID, **data}, status=status)


def parse_json_object(request: HttpRequest) -> dict[str, Any]:
    if int(request.headers.get("Content-Length") or 0) > MAX_BODY_BYTES:
        raise ApiError(413, "body_too_large", f"Request bodies may be at most {MAX_BODY_BYTES} bytes.")
    try:
        body = json.loads(request.body or b"null")
    except ValueError:
        raise ApiError(400, "bad_json", "The request body must be a JSON object.") from None
    if not isinstance(body, dict):
        raise ApiError(400, "bad_json", "The request body must be a JSON object.")
    return body


def _csrf_failure(request: HttpRequest) -> bool:
    # The views are csrf_exempt so token callers need no cookie; session callers are checked
    # here with Django's own middleware logic. It only reads headers and cookies, no I/O.
    checker = CsrfViewMiddleware(lambda r: None)  # type: ignore[arg-type, return-value]
    checker.process_request(request)
    return checker.process_view(request, lambda r: None, (), {}) is not None  # type: ignore[arg-type]


async def authenticate_publisher(request: HttpRequest) -> str:
    """Who is publishing, as 'token:<name>' or 'staff:<username>'; ApiError if nobody may."""
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, raw = header.partition(" ")
        if scheme.lower() != "bearer" or not raw.strip():
            raise ApiError(401, "bad_authorization", "Send 'Authorization: Bearer <token>'.")
        token = await database_sync_to_async(api_token_authenticate)(raw=raw.strip())
        if token is None:
            raise ApiError(401, "invalid_token", "The API token is unknown or revoked.")
        return f"token:{token.name}"
    user = await request.auser()
    if not user.is_authenticated:
        raise ApiError(
            401, "not_authenticated", "Log in as staff, or send 'Authorization: Bearer <token>'."
        )
    if not user.is_staff:
        raise ApiError(403, "forbidden", "Only staff users and API tokens may publish.")
    if _csrf_failure(request):
        raise ApiError(
            403, "csrf_failed", "Send the CSRF token in the X-CSRFToken header with session auth."
        )
    return f"staff:{user.get_username()}"
