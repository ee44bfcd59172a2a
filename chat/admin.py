"""Admin: rooms, chat lines (read-only) and the presence page (who is online, per room).

The models moved from realtime (same tables). Their admin pages moved with them, from
/admin/realtime/room/ and /admin/realtime/chatmessage/ to /admin/chat/...; the old addresses
redirect there (bookmarks, links in old messages). The presence page keeps its address,
/admin/realtime/presence/, and its name, admin:realtime-presence.
"""

from __future__ import annotations

import logging
from typing import Any, TypedDict

from asgiref.sync import async_to_sync
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.base_user import AbstractBaseUser
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, re_path, reverse
from django.utils.html import format_html

from chat.models import ChatMessage, Room
from realtime import presence
from realtime.broker import BrokerUnavailable

logger = logging.getLogger(__name__)
User = get_user_model()


@admin.register(Room)
class RoomAdmin(admin.ModelAdmin):
    list_display = (
        "slug", "title", "is_private", "member_count", "created_by", "created_at", "ledger_link",
    )  # fmt: skip
    list_filter = ("is_private",)
    search_fields = ("slug", "title")
    filter_horizontal = ("members",)
    readonly_fields = ("created_by", "created_at")

    @admin.display(description="Members")
    def member_count(self, room: Room) -> int:
        return room.members.count()

    @admin.display(description="Delivery ledger")
    def ledger_link(self, room: Room) -> str:
        url = reverse("admin:realtime-stream-ledger", args=[f"room:{room.slug}"])
        return format_html('<a href="{}">messages</a>', url)

    def save_model(self, request: HttpRequest, obj: Room, form: Any, change: bool) -> None:
        if not change:
            assert isinstance(request.user, User), "the admin site lets only staff in"
            obj.created_by = request.user
        super().save_model(request, obj, form, change)


@admin.register(ChatMessage)
class ChatMessageAdmin(admin.ModelAdmin):
    """Read-only: a chat line is the row *and* its stream message, so an edit here would make
    the two disagree. Staff with the delete permission may remove a line (moderation)."""

    list_display = ("created_at", "room", "user", "short_text", "seq")
    list_filter = ("room",)
    search_fields = ("text", "user__username", "room__slug")
    list_select_related = ("room", "user")
    readonly_fields = ("room", "user", "text", "created_at", "client_id", "seq", "epoch")

    @admin.display(description="Text")
    def short_text(self, message: ChatMessage) -> str:
        return message.text if len(message.text) <= 80 else message.text[:79] + "…"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class _Person(TypedDict):
    user: AbstractBaseUser
    status: presence.UserStatus | None


def presence_view(request: HttpRequest) -> HttpResponse:
    """Who is online, per room and overall, as the replicas' presence entries in Redis say."""
    if not request.user.has_perm("chat.view_room"):
        raise PermissionDenied("Viewing presence needs the 'view room' permission.")
    rooms = list(Room.objects.order_by("slug"))
    users = {user.pk: user for user in User.objects.filter(is_active=True).order_by("username")}
    online_by_room: list[tuple[Room, list[Any]]] = []
    statuses: dict[int, presence.UserStatus] = {}
    try:
        online = async_to_sync(_presence_snapshot)([room.slug for room in rooms], list(users))
    except BrokerUnavailable as exc:
        logger.warning("presence unreadable: %r", exc)
        messages.error(request, f"Redis is unreachable ({exc.__class__.__name__}); try again.")
    else:
        room_ids, statuses = online
        online_by_room = [
            (room, [users[uid] for uid in ids if uid in users])
            for room, ids in zip(rooms, room_ids, strict=True)
        ]
    people: list[_Person] = [
        {"user": user, "status": statuses.get(uid)} for uid, user in users.items()
    ]
    people.sort(key=lambda p: (not (p["status"] and p["status"].online), p["user"].get_username()))
    return TemplateResponse(
        request,
        "admin/realtime/presence.html",
        {
            **admin.site.each_context(request),
            "title": "Presence (read-only)",
            "rooms": online_by_room,
            "people": people,
            "ttl_secs": presence.ttl_ms() / 1000,
        },
    )


async def _presence_snapshot(
    slugs: list[str], user_ids: list[int]
) -> tuple[list[list[int]], dict[int, presence.UserStatus]]:
    rooms = [await presence.room_online(slug=slug) for slug in slugs]
    return rooms, await presence.user_statuses(user_ids=user_ids)


def _moved(request: HttpRequest, model: str, rest: str = "") -> HttpResponse:
    """/admin/realtime/<room|chatmessage>/...: the pages' addresses before the models moved.
    A 307 keeps the method and body, so a form posted to the old address still lands."""
    url = request.get_full_path().replace(f"/realtime/{model}/", f"/chat/{model}/", 1)
    return HttpResponseRedirect(url, status=307)


_original_get_urls = admin.site.get_urls


def _get_urls() -> list[Any]:
    extra = [
        path(
            "realtime/presence/",
            admin.site.admin_view(presence_view),
            name="realtime-presence",
        ),
        re_path(
            r"^realtime/(?P<model>room|chatmessage)/(?P<rest>.*)$",
            admin.site.admin_view(_moved),
        ),
    ]
    return extra + _original_get_urls()


# Chained onto realtime/admin.py's pages (the realtime app comes first in INSTALLED_APPS).
admin.site.get_urls = _get_urls  # type: ignore[method-assign]
