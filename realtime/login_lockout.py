"""Limits on wrong passwords, per username and client IP and per client IP, through django-axes.

Axes counts failures in the database (shared by every replica, unlike a per-process cache) from
Django's `user_login_failed` signal, refuses a locked-out login in its authentication backend,
and its middleware turns that refusal into `lockout_response`. The backend and signal work
wherever `authenticate()` runs, so the site's login (/accounts/login/) and the admin's
(/admin/login/) are both covered. The settings, and the reasons for the two limits, are in
project/settings.py under "Login attempts".
"""

from __future__ import annotations

import math
from typing import Any

from axes.attempts import get_cool_off_threshold
from axes.handlers.database import AxesDatabaseHandler
from axes.helpers import get_cool_off
from axes.models import AccessAttempt
from django.conf import settings
from django.db.models import Sum
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


def client_ip(request: HttpRequest) -> str | None:
    """The client's address as HAProxy saw it, never one the client wrote itself.

    Replicas run Daphne with --proxy-headers, so REMOTE_ADDR is the address HAProxy put in
    X-Forwarded-For, and HAProxy drops any X-Forwarded-For the client sent (haproxy.cfg).
    Reading the header again here, as django-ipware would, could only add a spoofable value.
    """
    return request.META.get("REMOTE_ADDR")


class LoginLockoutHandler(AxesDatabaseHandler):
    """Axes' database handler with a second, looser limit per client IP over all usernames.

    Axes has one failure limit for all its lockout parameters; this adds the per-IP one
    (LOGIN_IP_MAX_FAILURES) on the same rows, and reports a client past it as having reached
    the per-username-and-IP limit, which is what axes compares against.
    """

    def get_failures(self, request: HttpRequest, credentials: dict[str, Any] | None = None) -> int:
        failures: int = super().get_failures(request, credentials)
        limit: int = settings.AXES_FAILURE_LIMIT
        if failures >= limit:
            return failures
        ip_failures = AccessAttempt.objects.filter(
            ip_address=request.axes_ip_address,  # type: ignore[attr-defined]
            attempt_time__gte=get_cool_off_threshold(request),
        ).aggregate(total=Sum("failures_since_start"))["total"]
        if ip_failures is not None and ip_failures >= settings.LOGIN_IP_MAX_FAILURES:
            return limit
        return failures


def lockout_response(
    request: HttpRequest, original_response: Any = None, credentials: Any = None
) -> HttpResponse:
    """429 with a page saying how long to wait; what axes' middleware answers a locked-out login.

    Neither other argument is used: axes 8.3.1's async middleware passes the credentials where
    the original response belongs.
    """
    cool_off = get_cool_off(request)
    wait_secs = int(cool_off.total_seconds()) if cool_off else 0
    response = render(
        request,
        "registration/locked_out.html",
        {"wait_minutes": math.ceil(wait_secs / 60)},
        status=429,
    )
    response["Retry-After"] = str(wait_secs)
    return response
