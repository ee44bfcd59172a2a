"""The WebSocket consumer: authenticate, join the user's groups, translate frames.

Thin on purpose: message building lives in protocol.py, sending in publish.py.

Close codes a client sees:
  4401  not logged in: do not retry until the user logs in
  4503  try again later, with backoff (Redis unreachable at connect). RFC 6455's code for this
        is 1013, but Autobahn (under Daphne) lets an application send only 1000 and 3000-4999.
  1009  frame above Daphne's 1 MiB limit (sent by Daphne itself)
"""

from __future__ import annotations

import logging
from typing import Any

from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from redis.exceptions import RedisError

from realtime import groups, protocol
from realtime.stats import replica_stats

logger = logging.getLogger(__name__)

CLOSE_UNAUTHORIZED = 4401
CLOSE_TRY_AGAIN_LATER = 4503


class RealtimeConsumer(AsyncWebsocketConsumer):
    joined_groups: list[str]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.joined_groups = []
        try:
            await super().__call__(scope, receive, send)
        except (RedisError, OSError) as exc:
            # The pub/sub layer subscribes the connection's own channel before anything else;
            # with Redis down that fails before connect() runs. Answer with "try again later"
            # instead of letting the error tear the socket down with a generic 1011.
            if getattr(self, "channel_name", None):
                raise
            logger.warning("refused websocket: channel layer unavailable (%r)", exc)
            await _refuse_unavailable(receive, send)

    async def connect(self) -> None:
        user = self.scope["user"]
        if not user.is_authenticated:
            await self.accept()
            await self._send_error("unauthorized", "Log in first; then reconnect.")
            await self.close(code=CLOSE_UNAUTHORIZED)
            return
        wanted = [groups.user_group(user.pk), groups.BROADCAST_GROUP]
        try:
            for group in wanted:
                await self.channel_layer.group_add(group, self.channel_name)
                self.joined_groups.append(group)
        except (RedisError, OSError) as exc:
            logger.warning("user=%s connect failed: channel layer unavailable (%r)", user, exc)
            await self.accept()
            await self._send_error("unavailable", "Messaging is unavailable; retry shortly.")
            await self.close(code=CLOSE_TRY_AGAIN_LATER)
            return
        await self.accept()
        replica_stats.open_connections += 1
        replica_stats.connections_total += 1
        self.counted = True
        logger.info("connected user=%s replica=%s", user.username, settings.REPLICA_ID)
        await self._send_text(
            protocol.encode(
                {
                    "type": "hello",
                    "replica": settings.REPLICA_ID,
                    "user": user.username,
                    "user_id": user.pk,
                    "connection": self.channel_name.rsplit(".", 1)[-1][-12:],
                    "streams": [groups.user_stream(user.pk), groups.BROADCAST_STREAM],
                }
            )
        )

    async def disconnect(self, code: int) -> None:
        if getattr(self, "counted", False):
            replica_stats.open_connections -= 1
            self.counted = False
        for group in self.joined_groups:
            try:
                await self.channel_layer.group_discard(group, self.channel_name)
            except (RedisError, OSError):
                # Redis is gone; its restart forgets the subscription anyway.
                logger.debug("group_discard %s failed; Redis unreachable", group)
        self.joined_groups = []

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        replica_stats.frames_in += 1
        if text_data is None:
            await self._send_error(
                "binary_not_supported", "Binary frames are not supported; send JSON text frames."
            )
            return
        try:
            frame = protocol.parse_client_frame(
                text_data, max_bytes=settings.MAX_CLIENT_FRAME_BYTES
            )
        except protocol.InvalidFrame as exc:
            await self._send_error(exc.code, exc.message, exc.ref)
            return
        if frame.type == "echo":
            answer: dict[str, Any] = {
                "type": "echo",
                "replica": settings.REPLICA_ID,
                "payload": frame.data.get("payload"),
            }
        else:  # ping
            answer = {"type": "pong", "replica": settings.REPLICA_ID}
        if frame.id is not None:
            answer["id"] = frame.id
        await self._send_text(protocol.encode(answer))

    # --- channel-layer handlers (type "rt.deliver" -> rt_deliver) --------------------------------

    async def rt_deliver(self, event: dict[str, Any]) -> None:
        await self._send_text(event["frame"])

    # --- helpers ---------------------------------------------------------------------------------

    async def _send_text(self, text: str) -> None:
        replica_stats.frames_out += 1
        await self.send(text_data=text)

    async def _send_error(self, code: str, message: str, ref: str | None = None) -> None:
        replica_stats.errors_sent += 1
        await self._send_text(protocol.error_frame(code, message, ref))


async def _refuse_unavailable(receive: Any, send: Any) -> None:
    """Complete the handshake only to close it with 4503, which browsers can read."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    await send(
        {
            "type": "websocket.send",
            "text": protocol.error_frame("unavailable", "Messaging is unavailable; retry shortly."),
        }
    )
    await send({"type": "websocket.close", "code": CLOSE_TRY_AGAIN_LATER})
