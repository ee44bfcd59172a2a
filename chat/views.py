"""The chat pages: room list (create, join, leave), a room with history and live messages, and
the two JSON reads the room page uses (catch-up from the database, presence).

Views parse, call chat/services.py, and answer. Messages are sent over the WebSocket (a
`publish` frame with a client-made id, see services.socket_publish); the pages here only read
and manage rooms.
"""

from __future__ import annotations

import logging

from asgiref.sync import async_to_sync
from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_GET, require_POST

from chat import services
from chat.models import Room
from realtime import groups, presence
from realtime.broker import BrokerUnavailable
from realtime.selectors import StreamDenied

logger = logging.getLogger(__name__)


class AuthedRequest(HttpRequest):
    """What @login_required lets through: a request whose user is a User, never anonymous."""

    user: User


def _room_or_404(request: AuthedRequest, slug: str) -> Room:
    # 404 for private rooms too: a non-member learns nothing about which private rooms exist.
    try:
        return services.room_get_readable(user=request.user, slug=slug)
    except StreamDenied:
        raise Http404("No such room") from None


@ensure_csrf_cookie  # client.js posts SSE frames with it
@login_required
@require_GET
def chat_home(request: AuthedRequest) -> HttpResponse:
    user = request.user
    joined = list(services.rooms_joined(user=user))
    joined_ids = {room.pk for room in joined}
    others = [room for room in services.rooms_visible(user=user) if room.pk not in joined_ids]
    return render(request, "realtime/chat/index.html", {"joined": joined, "others": others})


@login_required
@require_POST
def room_create(request: AuthedRequest) -> HttpResponse:
    try:
        room = services.room_create(
            user=request.user,
            slug=request.POST.get("slug", ""),
            title=request.POST.get("title", ""),
            is_private=request.POST.get("is_private") == "on",
        )
    except services.ChatError as exc:
        messages.error(request, str(exc))
        return redirect("chat")
    return redirect("chat-room", slug=room.slug)


@login_required
@require_POST
def room_join(request: AuthedRequest, slug: str) -> HttpResponse:
    services.room_join(user=request.user, room=_room_or_404(request, slug))
    return redirect("chat-room", slug=slug)


@login_required
@require_POST
def room_leave(request: AuthedRequest, slug: str) -> HttpResponse:
    services.room_leave(user=request.user, room=_room_or_404(request, slug))
    return redirect("chat")


@login_required
@require_POST
def room_invite(request: AuthedRequest, slug: str) -> HttpResponse:
    room = _room_or_404(request, slug)
    try:
        invited = services.room_invite(
            user=request.user, room=room, username=request.POST.get("username", "")
        )
    except services.ChatError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"{invited.get_username()} may now open this room.")
    return redirect("chat-room", slug=slug)


@ensure_csrf_cookie  # client.js posts SSE frames with it
@login_required
@require_GET
def room_page(request: AuthedRequest, slug: str) -> HttpResponse:
    user = request.user
    room = _room_or_404(request, slug)
    snapshot = services.room_snapshot(room=room)
    joined = list(services.rooms_joined(user=user))
    config = {
        "room": room.slug,
        "stream": groups.room_stream(room.slug),
        "me": {"id": user.pk, "username": user.get_username()},
        # Resume the live stream exactly where the rendered rows end (see services.room_snapshot).
        "position": None
        if snapshot.seq is None
        else {"epoch": snapshot.epoch, "seq": snapshot.seq},
        "lastId": snapshot.messages[-1].pk if snapshot.messages else 0,
        "rooms": [r.slug for r in joined if r.slug != room.slug],
        "messagesUrl": f"/chat/{room.slug}/messages",
        "presenceUrl": f"/chat/{room.slug}/presence",
    }
    return render(
        request,
        "realtime/chat/room.html",
        {
            "room": room,
            "history": snapshot.messages,
            "joined": joined,
            "is_member": any(r.pk == room.pk for r in joined),
            "config": config,
        },
    )


@login_required
@require_GET
def room_messages(request: AuthedRequest, slug: str) -> JsonResponse:
    """GET ?after=<message id>: the rows after it, oldest first (the page's catch-up)."""
    room = _room_or_404(request, slug)
    try:
        after = int(request.GET.get("after", "0"))
    except ValueError:
        return JsonResponse({"error": "'after' must be a message id (a whole number)."}, status=400)
    rows = services.messages_after(room=room, after_id=after)
    return JsonResponse(
        {
            "messages": [services.message_payload(row) for row in rows],
            "more": len(rows) == services.CATCH_UP_ROWS,
        }
    )


@login_required
@require_GET
def room_presence(request: AuthedRequest, slug: str) -> JsonResponse:
    """Who is in the room now (any replica), and each member's status: online anywhere, last
    seen."""
    room = _room_or_404(request, slug)
    member_ids = list(room.members.values_list("pk", flat=True))
    try:
        online_ids = async_to_sync(presence.room_online)(slug=room.slug)
        statuses = async_to_sync(presence.user_statuses)(
            user_ids=sorted(set(member_ids) | set(online_ids))
        )
    except BrokerUnavailable as exc:
        logger.warning("presence of %s unavailable: %r", room.slug, exc)
        return JsonResponse(
            {"error": "Presence is unavailable while Redis is; retry shortly."}, status=503
        )
    names = dict(get_user_model().objects.filter(pk__in=statuses).values_list("pk", "username"))
    return JsonResponse(
        {
            "online": [
                {"user_id": uid, "user": names.get(uid, f"user {uid}")} for uid in online_ids
            ],
            "members": [
                {
                    "user_id": uid,
                    "user": names.get(uid, f"user {uid}"),
                    "online": statuses[uid].online,
                    "last_seen_ms": statuses[uid].last_seen_ms,
                }
                for uid in member_ids
            ],
        }
    )
