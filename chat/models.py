"""The chat demo's rows. The models moved here from realtime/models.py and kept their tables
(realtime_room, realtime_room_members, realtime_chatmessage): existing databases keep their
rows, see chat/migrations/0001_initial.py."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from realtime.models import validate_room_slug


class Room(models.Model):
    """A chat room: its stream is room:<slug>. Public rooms anyone logged in may join;
    private ones only their members (and staff)."""

    slug = models.CharField(max_length=50, unique=True, validators=[validate_room_slug])
    title = models.CharField(max_length=100)
    is_private = models.BooleanField(default=False)
    members = models.ManyToManyField(
        settings.AUTH_USER_MODEL, blank=True, related_name="rooms", db_table="realtime_room_members"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "realtime_room"
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
        db_table = "realtime_chatmessage"
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
