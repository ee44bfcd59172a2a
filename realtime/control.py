"""What a backend service does to a user's open sockets, on whichever replica each is: end them
(kick, with a reason the client sees) or take one stream away (unsubscribe).

The order goes out on the user's own group, which every socket of theirs on every replica has
joined, and each socket acts on itself (delivery/session.py's LAYER_HANDLERS). Called by the
server API (`POST /api/kick`, `POST /api/unsubscribe`) or from any async Django code.
"""

from __future__ import annotations

import asyncio
from typing import Any

from channels.layers import get_channel_layer
from django.conf import settings

from realtime import groups
from realtime.broker import REDIS_FAILURES, BrokerUnavailable
from realtime.protocol import CLOSE_UNAUTHORIZED
from realtime.publish import UNAVAILABLE_MESSAGE, RealtimeUnavailable

KICK = "rt.kick"
UNSUBSCRIBE = "rt.unsubscribe"
MAX_REASON_CHARS = 200


async def kick(*, user_id: int, reason: str) -> None:
    """Close every socket of the user, each with an error frame `kicked` saying `reason`, then
    4401 (clients do not reconnect by themselves after it)."""
    await _tell(user_id, {"type": KICK, "reason": reason[:MAX_REASON_CHARS]})


async def unsubscribe(*, user_id: int, stream: str) -> None:
    """Take `stream` away from every socket of the user that reads it (`unsubscribed` frame).
    It does not stop them subscribing again: take the permission away for that (access.py)."""
    groups.group_for_stream(stream)  # InvalidStreamName for a malformed name
    await _tell(user_id, {"type": UNSUBSCRIBE, "stream": stream})


async def _tell(user_id: int, event: dict[str, Any]) -> None:
    layer: Any = get_channel_layer()
    try:
        await asyncio.wait_for(
            layer.group_send(groups.user_group(user_id), event), settings.REDIS_TIMEOUT_SECS
        )
    except (BrokerUnavailable, *REDIS_FAILURES) as exc:
        raise RealtimeUnavailable(UNAVAILABLE_MESSAGE) from exc


# --- on each socket -------------------------------------------------------------------------


async def kick_socket(session: Any, event: dict[str, Any]) -> None:
    if not session.ready:
        return
    await session.send_error("kicked", event.get("reason") or "The server ended this connection.")
    await session.close(CLOSE_UNAUTHORIZED)


async def unsubscribe_socket(session: Any, event: dict[str, Any]) -> None:
    stream = event.get("stream")
    if stream in session.cursors:
        await session.leave(stream)
        await session.send_frame({"type": "unsubscribed", "stream": stream, "by": "server"})
