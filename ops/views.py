"""The cluster view (staff only): every replica as HAProxy sees it, live from the `ops` stream.

The page is drawn once with HAProxy's current view, so every replica has a row before the first
report arrives; from then on it updates from the reports the replicas publish (ops/reports.py)
over the page's own WebSocket.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.csrf import ensure_csrf_cookie

from ops.reports import configured_haproxy_states

logger = logging.getLogger(__name__)


@ensure_csrf_cookie  # client.js posts SSE frames with it
@login_required
def cluster_page(request: HttpRequest) -> HttpResponse:
    if not request.user.is_staff:
        raise PermissionDenied("The cluster view is for staff only.")
    haproxy: dict[str, object] | None = None
    if settings.HAPROXY_STATS_URL:
        try:
            haproxy = configured_haproxy_states()  # type: ignore[assignment]
        except (OSError, ValueError) as exc:
            logger.info("cluster view: HAProxy stats unreadable: %r", exc)
    initial = {"haproxy": haproxy, "interval_secs": settings.OPS_INTERVAL_SECS}
    return render(request, "realtime/cluster.html", {"initial": initial})
