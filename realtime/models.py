from __future__ import annotations

from django.conf import settings
from django.db import models

from realtime.groups import MAX_STREAM_CHARS


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


class ArchivedMessage(models.Model):
    """A message of an archived stream (a kind registered with archive=True), as its sockets got
    it: the history tier behind the Redis window, written by the archivers (realtime/archive.py)
    after the publish and read by replays that reach past the window and by GET /api/history.

    One row per message, whoever wrote it how often: the archivers deliver at least once, and
    the unique constraint (which is also the index range reads use) drops the repeats."""

    stream = models.CharField(max_length=MAX_STREAM_CHARS)
    # The stream's epoch when it was published: a seq means something only within its epoch.
    epoch = models.CharField(max_length=32)
    seq = models.BigIntegerField()
    # The exact frame text (the envelope with seq and epoch), replayed as it is.
    frame = models.TextField()
    created_at = models.DateTimeField(help_text="When it was published (Redis' clock).")

    class Meta:
        verbose_name = "archived message"
        constraints = [
            models.UniqueConstraint(
                fields=["stream", "epoch", "seq"], name="realtime_archive_one_per_position"
            )
        ]

    def __str__(self) -> str:
        return f"{self.stream} {self.epoch} #{self.seq}"


def validate_room_slug(value: str) -> None:
    """A room slug (groups.ROOM_SLUG_RE). Here because realtime's migrations 0002-0004 (the
    chat tables, before the models moved to chat/models.py) reference it by this path."""
    from django.core.exceptions import ValidationError

    from realtime.groups import ROOM_SLUG_RE

    if not ROOM_SLUG_RE.fullmatch(value):
        raise ValidationError(
            "Use lower-case letters, digits and hyphens, starting with a letter or digit (≤ 50)."
        )
