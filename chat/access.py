"""Who may read a room's stream, and the sockets told when that changes.

`room_can_read` is the chat's check for `room:<slug>` streams, registered with the core in
chat/apps.py (realtime/streams.py). The signals below tell the sockets concerned to check again
(realtime/access.py's `recheck_on_commit`: once the change is committed, so that the
sockets' check reads it) when a room is made private or deleted, or when members
leave a private room.
"""

from __future__ import annotations

from typing import Any

from django.db.models.signals import m2m_changed, post_delete, post_save, pre_save

from chat.models import Room
from realtime.access import recheck_on_commit
from realtime.streams import StreamDenied


def room_can_read(user: Any, stream: str) -> bool:
    """Rooms the user may join: public ones, private ones they belong to (any, for staff). A
    member may also publish to the room's stream (lines and typing: chat/services.py)."""
    key = stream.partition(":")[2]
    room = Room.objects.filter(slug=key).first()
    if room is None or (
        room.is_private and not user.is_staff and not room.members.filter(pk=user.pk).exists()
    ):
        # One answer for both, as the room page's 404: a non-member must not learn that a
        # private room exists by probing names.
        raise StreamDenied(
            "unknown_room",
            f"There is no room {key!r} that you may join; a private room's members can add you.",
        )
    return True


def _room_about_to_change(sender: Any, instance: Room, **kwargs: Any) -> None:
    rows = Room.objects.filter(pk=instance.pk) if instance.pk is not None else Room.objects.none()
    before = rows.values("is_private").first()
    instance._sb_was_private = None if before is None else before["is_private"]  # type: ignore


def _room_changed(sender: Any, instance: Room, created: bool, **kwargs: Any) -> None:
    if not created and getattr(instance, "_sb_was_private", None) is False and instance.is_private:
        recheck_on_commit(room_slugs=[instance.slug])


def _room_deleted(sender: Any, instance: Room, **kwargs: Any) -> None:
    recheck_on_commit(room_slugs=[instance.slug])


def _members_changed(
    sender: Any, instance: Any, action: str, reverse: bool, pk_set: Any, **kwargs: Any
) -> None:
    """A private room's members removed (room.members.remove/clear, or user.rooms.remove/clear)."""
    if action == "pre_clear":
        # Who was there: post_clear no longer knows.
        instance._sb_cleared = (
            [instance.pk] if reverse else list(instance.members.values_list("pk", flat=True))
        )
        return
    if action == "post_clear":
        recheck_on_commit(user_ids=getattr(instance, "_sb_cleared", []))
    elif action == "post_remove":
        recheck_on_commit(user_ids=[instance.pk] if reverse else sorted(pk_set or ()))


def connect_signals() -> None:
    pre_save.connect(_room_about_to_change, sender=Room, dispatch_uid="sb-access-room-pre")
    post_save.connect(_room_changed, sender=Room, dispatch_uid="sb-access-room")
    post_delete.connect(_room_deleted, sender=Room, dispatch_uid="sb-access-room-deleted")
    m2m_changed.connect(
        _members_changed, sender=Room.members.through, dispatch_uid="sb-access-members"
    )
