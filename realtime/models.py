from __future__ import annotations

from django.conf import settings
from django.db import models


class ApiToken(models.Model):
    """A bearer token for server-to-server publishing (POST /api/push, /api/broadcast).

    Only a SHA-256 digest is stored: the token itself is shown once, when it is issued, and a
    leaked database does not leak working tokens.
    """

    name = models.CharField(max_length=100, unique=True, help_text="Who or what uses it.")
    prefix = models.CharField(
        max_length=12, editable=False, help_text="The token's first characters, to recognise it."
    )
    digest = models.CharField(max_length=64, unique=True, editable=False)
    is_active = models.BooleanField(default=True, help_text="Untick to revoke the token.")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, editable=False, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "API token"
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"


def validate_room_slug(value: str) -> None:
    """A room slug (groups.ROOM_SLUG_RE). Here because realtime's migrations 0002-0004 (the
    chat tables, before the models moved to chat/models.py) reference it by this path."""
    from django.core.exceptions import ValidationError

    from realtime.groups import ROOM_SLUG_RE

    if not ROOM_SLUG_RE.fullmatch(value):
        raise ValidationError(
            "Use lower-case letters, digits and hyphens, starting with a letter or digit (≤ 50)."
        )
