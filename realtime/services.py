"""Writes. Keyword-only arguments, named <noun>_<verb>."""

from __future__ import annotations

import hashlib
import secrets

from django.contrib.auth.models import User

from realtime.models import ApiToken

TOKEN_PREFIX = "sb_"


def token_digest(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def api_token_issue(*, name: str, created_by: User | None = None) -> tuple[ApiToken, str]:
    """Create a token and return it with its secret, which is not stored and cannot be shown
    again."""
    raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(
        name=name, prefix=raw[:10], digest=token_digest(raw), created_by=created_by
    )
    return token, raw
