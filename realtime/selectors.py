"""Reads. Keyword-only arguments, named <noun>_<verb>."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser

from realtime.models import ApiToken
from realtime.services import token_digest


def api_token_authenticate(*, raw: str) -> ApiToken | None:
    """The active token whose secret is `raw`, or None."""
    # The digest of a 256-bit random secret is looked up, never compared byte by byte.
    return ApiToken.objects.filter(digest=token_digest(raw), is_active=True).first()


def user_get_by_username(*, username: str) -> AbstractBaseUser | None:
    return get_user_model().objects.filter(username=username, is_active=True).first()
