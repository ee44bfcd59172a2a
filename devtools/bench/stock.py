"""Stock Channels, as the documentation teaches it: the benchmark's baseline.

A plain AsyncWebsocketConsumer in the same groups (user.<id>, broadcast), channels_redis'
default RedisChannelLayer, and sync views that call `async_to_sync(group_send)`; each consumer
JSON-encodes the envelope it is handed. Stock Channels numbers nothing, so these views take a
seq from a Redis INCR per stream only so that the benchmark can count lost, duplicated and
out-of-order messages; there is no history, gap repair or resume.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import redis
import redis.asyncio as aioredis
from asgiref.sync import async_to_sync
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from realtime.protocol import now_ms
from realtime.selectors import api_token_authenticate, user_get_by_username

_sync_redis: redis.Redis | None = None
_async_redis: aioredis.Redis | None = None


def seq_key(stream: str) -> str:
    return f"stock:seq:{stream}"


class StockConsumer(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        user = self.scope["user"]
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        self.joined = [f"user.{user.pk}", "broadcast"]
        for group in self.joined:
            await self.channel_layer.group_add(group, self.channel_name)
        await self.accept()
        global _async_redis
        if _async_redis is None:
            _async_redis = aioredis.Redis.from_url(settings.REDIS_URL)
        streams = [f"user:{user.pk}", "broadcast"]
        heads = await _async_redis.mget([seq_key(s) for s in streams])
        await self.send(
            text_data=json.dumps(
                {
                    "type": "hello",
                    "replica": settings.REPLICA_ID,
                    "user_id": user.pk,
                    "streams": {
                        s: {"epoch": None, "seq": int(h or 0)}
                        for s, h in zip(streams, heads, strict=True)
                    },
                }
            )
        )

    async def disconnect(self, code: int) -> None:
        for group in getattr(self, "joined", []):
            await self.channel_layer.group_discard(group, self.channel_name)

    async def stock_deliver(self, event: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps(event["envelope"]))


def _publish(stream: str, group: str, kind: str, payload: Any) -> JsonResponse:
    global _sync_redis
    if _sync_redis is None:
        _sync_redis = redis.Redis.from_url(settings.REDIS_URL)
    seq = _sync_redis.incr(seq_key(stream))
    envelope = {
        "seq": seq,
        "epoch": None,
        "type": kind,
        "stream": stream,
        "id": uuid.uuid4().hex,
        "payload": payload,
        "sent_at": now_ms(),
        "origin": settings.REPLICA_ID,
    }
    layer = get_channel_layer()
    if layer is None:
        raise ImproperlyConfigured("The stock baseline needs CHANNEL_LAYERS['default'].")
    async_to_sync(layer.group_send)(group, {"type": "stock.deliver", "envelope": envelope})
    return JsonResponse({"ok": True, "stream": stream, "seq": seq})


def _refused(request: HttpRequest) -> JsonResponse | None:
    scheme, _, raw = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or api_token_authenticate(raw=raw.strip()) is None:
        return JsonResponse({"ok": False, "error": "invalid_token"}, status=401)
    return None


@csrf_exempt
@require_POST
def broadcast(request: HttpRequest) -> JsonResponse:
    if refused := _refused(request):
        return refused
    return _publish("broadcast", "broadcast", "broadcast", json.loads(request.body)["payload"])


@csrf_exempt
@require_POST
def push(request: HttpRequest) -> JsonResponse:
    if refused := _refused(request):
        return refused
    body = json.loads(request.body)
    user = user_get_by_username(username=body["user"])
    if user is None:
        return JsonResponse({"ok": False, "error": "unknown_user"}, status=404)
    return _publish(f"user:{user.pk}", f"user.{user.pk}", "push", body["payload"])


async def healthz(request: HttpRequest) -> JsonResponse:
    # Async, unlike the publish views: an overloaded stock replica answering its health check
    # late is taken out of HAProxy, and the benchmark would measure 503s instead of fan-out.
    return JsonResponse({"replica": settings.REPLICA_ID, "status": "ok"})


urlpatterns = [
    path("healthz", healthz),
    # HAProxy checks readiness (haproxy.cfg); stock Channels has no more to say than "up".
    path("readyz", healthz),
    path("api/broadcast", broadcast),
    path("api/push", push),
]
