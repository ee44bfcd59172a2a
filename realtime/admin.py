"""Admin: API tokens, "send a message to the selected users", and a broadcast page.

Everything here publishes through realtime.publish, like the API and the commands.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path

from realtime import publish
from realtime.forms import MessageForm
from realtime.models import ApiToken
from realtime.services import api_token_issue

User = get_user_model()


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ("name", "prefix", "is_active", "created_by", "created_at")
    list_filter = ("is_active",)
    readonly_fields = ("prefix", "created_by", "created_at")

    def get_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return ["name"] if obj is None else ["name", "prefix", "is_active", "created_by", "created_at"]

    def save_model(self, request: HttpRequest, obj: ApiToken, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        token, raw = api_token_issue(name=obj.name, created_by=request.user)
        obj.pk, obj.prefix, obj.digest = token.pk, token.prefix, token.digest
        messages.warning(
            request, f"API token for {token.name}: {raw} — copy it now, it is not shown again."
        )


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
            "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
        },
    )


class RealtimeUserAdmin(UserAdmin):
    actions = [send_message_to_users]


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


_original_get_urls = admin.site.get_urls


def _get_urls() -> list[Any]:
    extra = [
        path(
            "realtime/broadcast/",
            admin.site.admin_view(broadcast_view),
            name="realtime-broadcast",
        )
    ]
    return extra + _original_get_urls()


# The default site, extended by one page; a custom AdminSite class would need its own app config.
admin.site.get_urls = _get_urls  # type: ignore[method-assign]
