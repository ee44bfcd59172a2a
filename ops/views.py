"""The cluster view (staff only): every replica as HAProxy sees it, live from the `ops` stream.

The page is drawn once with HAProxy's current view, so every replica has a row before the first
report arrives; from then on it updates from the reports the replicas publish (ops/reports.py)
over the page's own WebSocket.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.request

from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_POST

from ops.reports import configured_haproxy_addresses, configured_haproxy_states
from realtime import drain

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


@require_POST
@login_required
async def drain_replica(request: HttpRequest) -> JsonResponse:
    """POST replica=dX[&undo=1] (staff, with the CSRF token): drain or undrain dX, wherever
    this request landed. The order goes to dX's own address, which HAProxy's stats name,
    signed with the SECRET_KEY the replicas share (realtime/drain.py)."""
    user = await request.auser()
    if not user.is_staff:
        raise PermissionDenied("Draining a replica is for staff only.")
    target, undo = request.POST.get("replica", ""), bool(request.POST.get("undo"))
    if target == settings.REPLICA_ID:
        layer = get_channel_layer()
        answer = drain.stop() if undo else await drain.start(layer)
        return JsonResponse({"ok": True, **answer})
    try:
        addresses = await asyncio.to_thread(configured_haproxy_addresses)
    except (OSError, ValueError) as exc:
        return JsonResponse({"ok": False, "error": "no_haproxy", "message": repr(exc)}, status=503)
    address = addresses.get(target)
    if address is None:
        return JsonResponse(
            {"ok": False, "error": "no_such_replica", "message": f"HAProxy lists no {target!r}."},
            status=404,
        )
    query = "?undo=1" if undo else ""
    order = drain.signed_order(target, undo=undo)
    try:
        answer = await asyncio.to_thread(_post_order, f"http://{address}/drain{query}", order)
    except OSError as exc:
        return JsonResponse({"ok": False, "error": "unreachable", "message": repr(exc)}, status=502)
    logger.info(
        "staff=%s %s replica=%s", user.get_username(), "undrain" if undo else "drain", target
    )
    return JsonResponse(answer)


def _post_order(url: str, order: str) -> dict[str, object]:
    request = urllib.request.Request(
        url, data=b"", method="POST", headers={drain.ORDER_HEADER: order}
    )
    with urllib.request.urlopen(request, timeout=5) as answer:
        return json.loads(answer.read())  # type: ignore[no-any-return]
