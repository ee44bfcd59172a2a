"""Admin: API tokens, "send a message to the selected users", a broadcast page, and
each user's delivery ledger (what was sent to their stream, delivered, acknowledged).

Everything here publishes through realtime.publish, like the API and the commands.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from asgiref.sync import async_to_sync
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from realtime import broker, groups, publish, sealing
from realtime.broker import BrokerUnavailable
from realtime.delivery.tallies import tallied
from realtime.forms import MessageForm
from realtime.models import ApiToken, ArchivedMessage
from realtime.services import api_token_issue

logger = logging.getLogger(__name__)
User = get_user_model()
# Rows the ledger page shows: the newest messages of one user's stream.
LEDGER_ROWS = 100


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ("name", "prefix", "is_active", "created_by", "created_at")
    list_filter = ("is_active",)
    readonly_fields = ("prefix", "created_by", "created_at")

    def get_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        return (
            ("name",)
            if obj is None
            else ("name", "prefix", "is_active", "created_by", "created_at")
        )

    def save_model(self, request: HttpRequest, obj: ApiToken, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        assert isinstance(request.user, User), "the admin site lets only staff in"
        token, raw = api_token_issue(name=obj.name, created_by=request.user)
        obj.pk, obj.prefix, obj.digest = token.pk, token.prefix, token.digest
        messages.warning(
            request, f"API token for {token.name}: {raw} — copy it now, it is not shown again."
        )


@admin.register(ArchivedMessage)
class ArchivedMessageAdmin(admin.ModelAdmin):
    """The history archive, to look at: written by the archivers only (realtime/archive.py)."""

    list_display = ("stream", "epoch", "seq", "created_at")
    list_filter = ("created_at",)
    search_fields = ("=stream",)  # exact: the unique index serves it
    ordering = ("stream", "epoch", "seq")
    show_full_result_count = False  # a count(*) of the whole archive on every page is slow

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def _publish_failed(request: HttpRequest, exc: Exception) -> None:
    messages.error(request, f"Nothing was sent: {exc}")


@admin.action(description="Send a message to the selected users")
def send_message_to_users(
    modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet
) -> HttpResponse | None:
    form = MessageForm(request.POST if "apply" in request.POST else None)
    if form.is_valid():
        payload = {"text": form.cleaned_data["text"], "from": request.user.get_username()}
        try:
            for user in queryset:
                publish.push_to_user_sync(user_id=user.pk, payload=payload)
        except publish.RealtimeUnavailable as exc:
            _publish_failed(request, exc)
            return None
        modeladmin.message_user(request, f"Sent to {queryset.count()} user(s).", messages.SUCCESS)
        return None
    return TemplateResponse(
        request,
        "admin/realtime/send_message.html",
        {
            **modeladmin.admin_site.each_context(request),
            "title": "Send a message to the selected users",
            "form": form,
            "users": queryset,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        },
    )


class RealtimeUserAdmin(UserAdmin):
    actions = [send_message_to_users]
    # django-stubs declares list_display per instance; Django reads the class attribute.
    list_display = (*UserAdmin.list_display, "ledger_link")  # type: ignore[misc]

    @admin.display(description="Delivery ledger")
    def ledger_link(self, user: Any) -> str:
        url = reverse("admin:realtime-ledger", args=[user.pk])
        return format_html('<a href="{}">messages</a>', url)


admin.site.unregister(User)
admin.site.register(User, RealtimeUserAdmin)


def broadcast_view(request: HttpRequest) -> HttpResponse:
    form = MessageForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        payload = {"text": form.cleaned_data["text"], "from": request.user.get_username()}
        try:
            result = publish.broadcast_sync(payload=payload)
        except publish.RealtimeUnavailable as exc:
            _publish_failed(request, exc)
        else:
            messages.success(request, f"Broadcast sent (id {result.id}, via {result.origin}).")
            return redirect("admin:realtime-broadcast")
    return TemplateResponse(
        request,
        "admin/realtime/broadcast.html",
        {**admin.site.each_context(request), "title": "Broadcast to everyone", "form": form},
    )


def ledger_view(request: HttpRequest, user_id: int) -> HttpResponse:
    """One user's stream, newest first: each message sent, delivered to a socket, or acked."""
    if not request.user.has_perm("auth.view_user"):
        raise PermissionDenied("Viewing a user's messages needs the 'view user' permission.")
    user = get_object_or_404(User, pk=user_id)
    title = f"Delivery ledger: {user.get_username()}"
    return _ledger_page(request, groups.user_stream(user.pk), title=title, subject=user)


def stream_ledger_view(request: HttpRequest, stream: str) -> HttpResponse:
    """A stream many sockets read (a room, an app's own kind), newest first: each message with
    the sockets it was delivered to and acknowledged by, summed over the replicas."""
    if not tallied(stream):
        raise Http404("Only streams of a registered kind (rooms, …) have counts per message.")
    return _ledger_page(request, stream, title=f"Delivery ledger: {stream}", tallied=True)


def _ledger_page(
    request: HttpRequest, stream: str, *, title: str, subject: Any = None, tallied: bool = False
) -> HttpResponse:
    ledger, rows = None, []
    try:
        ledger = async_to_sync(broker.current().ledger)(stream, count=LEDGER_ROWS)
    except BrokerUnavailable as exc:
        logger.warning("ledger of %s unreadable: %r", stream, exc)
        messages.error(request, f"Redis is unreachable ({exc.__class__.__name__}); try again.")
    if ledger is not None:
        rows = [_ledger_row(message) for message in ledger["messages"]]
    return TemplateResponse(
        request,
        "admin/realtime/ledger.html",
        {
            **admin.site.each_context(request),
            "title": title,
            "subject": subject,
            "stream": stream,
            "tallied": tallied,
            "ledger": ledger,
            "rows": rows,
        },
    )


def _ledger_row(message: dict[str, Any]) -> dict[str, Any]:
    """A history entry as the ledger page shows it (the template escapes every value)."""
    frame = json.loads(sealing.open_frame(message["frame"]))
    payload = frame.get("payload")
    text = payload.get("text") if isinstance(payload, dict) and "text" in payload else payload
    return {
        "seq": message["seq"],
        "state": message["state"],
        "stored_at": datetime.fromtimestamp(message["stored_at"] / 1000, tz=UTC),
        "origin": frame.get("origin"),
        "sender": frame.get("sender"),
        "text": text if isinstance(text, str) else json.dumps(text),
        "delivered_to": message.get("delivered_to", 0),
        "acked_by": message.get("acked_by", 0),
    }


_original_get_urls = admin.site.get_urls


def _get_urls() -> list[Any]:
    extra = [
        path(
            "realtime/broadcast/",
            admin.site.admin_view(broadcast_view),
            name="realtime-broadcast",
        ),
        path(
            "realtime/ledger/<int:user_id>/",
            admin.site.admin_view(ledger_view),
            name="realtime-ledger",
        ),
        path(
            "realtime/ledger/stream/<str:stream>/",
            admin.site.admin_view(stream_ledger_view),
            name="realtime-stream-ledger",
        ),
    ]
    return extra + _original_get_urls()


# The default site, extended by two pages (chat/admin.py adds the presence page); a custom
# AdminSite class would need its own app config.
admin.site.get_urls = _get_urls  # type: ignore[method-assign]
