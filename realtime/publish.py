"""The one way to send a message to connected clients.

Only this module calls `group_send`: views, admin actions, management commands and consumers all
come through here, so every message gets the same envelope, size limit and error handling.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from redis.exceptions import RedisError

from realtime import groups, protocol

logger = logging.getLogger(__name__)

# The channel-layer message type consumers handle (`rt_deliver`). Prefixed so it can never
# collide with a type a client could name.
DELIVER = "rt.deliver"


class RealtimeUnavailable(Exception):
    """Redis (the channel layer) could not be reached: nothing was sent. Retry later."""


class InvalidPayload(ValueError):
    """The payload cannot be sent: not JSON, or too large."""


class PayloadTooLarge(InvalidPayload):
    """The payload encodes to more than MAX_PAYLOAD_BYTES."""


@dataclass(frozen=True)
class PublishResult:
    stream: str
    id: str
    origin: str

    def as_dict(self) -> dict[str, Any]:
        return {"stream": self.stream, "id": self.id, "origin": self.origin}


def check_payload(payload: Any) -> None:
    """Raise InvalidPayload unless `payload` is JSON that fits in MAX_PAYLOAD_BYTES."""
    try:
        size = len(protocol.encode({"p": payload}).encode())
    except (TypeError, ValueError) as exc:
        raise InvalidPayload(f"The payload must be JSON-serialisable: {exc}.") from None
    if size > settings.MAX_PAYLOAD_BYTES:
        raise PayloadTooLarge(
            f"The payload is {size} bytes encoded; the limit is {settings.MAX_PAYLOAD_BYTES}."
        )


async def push_to_user(*, user_id: int, payload: Any) -> PublishResult:
    """Send `payload` to every socket of one user, on whichever replica it lives."""
    return await _publish(
        kind="push",
        stream=groups.user_stream(user_id),
        group=groups.user_group(user_id),
        payload=payload,
    )


async def broadcast(*, payload: Any) -> PublishResult:
    """Send `payload` to every connected socket on every replica."""
    return await _publish(
        kind="broadcast",
        stream=groups.BROADCAST_STREAM,
        group=groups.BROADCAST_GROUP,
        payload=payload,
    )


push_to_user_sync = async_to_sync(push_to_user)
broadcast_sync = async_to_sync(broadcast)


async def _publish(*, kind: str, stream: str, group: str, payload: Any) -> PublishResult:
    check_payload(payload)
    origin = settings.REPLICA_ID
    message_id = uuid.uuid4().hex
    envelope = protocol.envelope(
        kind=kind, stream=stream, message_id=message_id, payload=payload, origin=origin
    )
    # Encoded once here, not once per recipient: consumers write this text as it is.
    frame = protocol.encode(envelope)
    layer = get_channel_layer()
    try:
        await asyncio.wait_for(
            layer.group_send(group, {"type": DELIVER, "frame": frame}),
            timeout=settings.REDIS_TIMEOUT_SECS,
        )
    except (RedisError, OSError, asyncio.TimeoutError) as exc:
        logger.warning("publish failed stream=%s replica=%s error=%r", stream, origin, exc)
        raise RealtimeUnavailable(
            f"Redis at {settings.REDIS_URL} is unreachable ({exc.__class__.__name__}); "
            "nothing was sent. Retry when it is back."
        ) from exc
    logger.debug("published stream=%s id=%s replica=%s", stream, message_id, origin)
    return PublishResult(stream=stream, id=message_id, origin=origin)
