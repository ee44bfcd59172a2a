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
    from django.core.exceptions import ValidationError

    from realtime.groups import ROOM_SLUG_RE

    if not ROOM_SLUG_RE.fullmatch(value):
        raise ValidationError(
            "Use lower-case letters, digits and hyphens, starting with a letter or digit (≤ 50)."
        )


class Room(models.Model):
    """A chat room: its stream is room:<slug>. Public rooms anyone logged in may join;
    private ones only their members (and staff)."""

    slug = models.CharField(max_length=50, unique=True, validators=[validate_room_slug])
    title = models.CharField(max_length=100)
    is_private = models.BooleanField(default=False)
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, blank=True, related_name="rooms")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.title or self.slug


class ChatMessage(models.Model):
    """One line said in a room. Append only: rows are never edited or deleted by the app.

    The row is the truth; the stream message is its announcement. `seq`/`epoch` are the room
    stream position its publish got (filled in right after the commit, empty while in flight).
    `client_id` is the sender's message id, so a resend after a reconnect finds this row
    instead of saying the same thing twice.
    """

    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="messages")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    text = models.TextField(max_length=2000)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    client_id = models.CharField(max_length=64, blank=True, default="")
    seq = models.PositiveBigIntegerField(null=True, blank=True)
    epoch = models.CharField(max_length=64, blank=True, default="")

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(
                fields=["user", "room", "client_id"],
                condition=~models.Q(client_id=""),
                name="chat_message_unique_client_id_per_room",
            )
        ]

    def __str__(self) -> str:
        return f"{self.room_id} #{self.pk}: {self.text[:40]}"
