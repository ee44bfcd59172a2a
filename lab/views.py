"""The transport lab: the four ways a message can travel between a browser and the cluster.

  1. HTTP out, HTTP in: the replica that got the request answers it.
  2. WS out, WS in: the replica holding the socket echoes the frame (no view here: the consumer).
  3. HTTP out, WS in, direct: the replica that got the request writes to the user's socket
     itself, which works only if that socket lives in this very process.
  4. HTTP out, WS in, through the channel layer: the replica publishes to the user's stream in
     Redis, and whichever replica holds the socket delivers it. Always arrives.

Every answer names the replica that handled it. The same views answer under /lab/nosticky/,
where HAProxy ignores the SERVERID cookie (haproxy.cfg), so the page can show stickiness and
its absence side by side.
"""

from __future__ import annotations

import logging
from typing import Any

from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_POST

from realtime import protocol, publish
from realtime.api import ApiError, error_response, ok_response, parse_json_object

logger = logging.getLogger(__name__)

# A lab message is a line typed into a box; anything longer is a mistake or an abuse.
MAX_LAB_TEXT_CHARS = 500
MAX_LAB_ID_CHARS = 64


@ensure_csrf_cookie  # client.js posts SSE frames with it
@login_required
def lab_page(request: HttpRequest) -> HttpResponse:
    return render(request, "realtime/lab.html")


@login_required
@require_POST
async def lab_send(request: HttpRequest, way: str) -> JsonResponse:
    """POST {"text", "id", "connection"?} to /lab/(nosticky/)?(http|direct|relay)."""
    user = await request.auser()
    assert isinstance(user, User), "login_required lets no anonymous user in"
    try:
        body = parse_json_object(request)
        text, message_id = _text_and_id(body)
        if way == "http":
            return ok_response({"way": 1, "id": message_id, "text": text})
        if way == "direct":
            return ok_response(await _direct(user, body.get("connection"), text, message_id))
        result = await publish.push_to_user(
            user_id=user.pk, payload={"lab": 4, "id": message_id, "text": text}
        )
        logger.info(
            "lab relay user=%s seq=%s replica=%s", user.get_username(), result.seq, result.origin
        )
        return ok_response(
            {"way": 4, "id": message_id, "seq": result.seq, "sockets": result.sockets}
        )
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message)
    except publish.RealtimeUnavailable as exc:
        return error_response(503, "redis_unavailable", str(exc))


async def _direct(user: Any, connection: Any, text: str, message_id: str) -> dict[str, Any]:
    """Way 3: write to the user's socket if, and only if, this process holds it."""
    if not isinstance(connection, str) or not connection:
        raise ApiError(
            400, "bad_connection", "'connection' must be the id from your socket's hello frame."
        )
    session = get_channel_layer().local_sink(connection)  # type: ignore[union-attr]
    # Someone else's socket on this replica is treated as absent: the lab writes only to the
    # requester's own sockets, and says nothing about anyone else's.
    held = session is not None and getattr(getattr(session, "user", None), "pk", None) == user.pk
    sent = False
    if held:
        frame = {
            "type": "lab",
            "way": 3,
            "replica": settings.REPLICA_ID,
            "id": message_id,
            "text": text,
        }
        try:
            await session.send_text(protocol.encode(frame))  # the socket's delivery session
            sent = True
        except Exception as exc:  # the socket closed between the lookup and the write
            logger.info("lab direct write failed user=%s: %r", user.get_username(), exc)
    return {"way": 3, "id": message_id, "held": held, "sent": sent}


def _text_and_id(body: dict[str, Any]) -> tuple[str, str]:
    text, message_id = body.get("text"), body.get("id")
    if not isinstance(text, str) or not 0 < len(text) <= MAX_LAB_TEXT_CHARS:
        raise ApiError(400, "bad_text", f"'text' must be 1 to {MAX_LAB_TEXT_CHARS} characters.")
    if not isinstance(message_id, str) or not 0 < len(message_id) <= MAX_LAB_ID_CHARS:
        raise ApiError(
            400, "bad_id", f"'id' must be a string of 1 to {MAX_LAB_ID_CHARS} characters."
        )
    return text, message_id
