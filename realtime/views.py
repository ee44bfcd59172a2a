"""HTTP views: parse, call a service, answer. Async so a request costs no thread hop."""

from __future__ import annotations

import hmac
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from realtime import (
    broker,
    connect_tokens,
    control,
    drain,
    groups,
    lifetimes,
    metrics,
    presence,
    publish,
    readiness,
    sealing,
    streams,
    transport,
    user_directory,
)
from realtime.api import (
    ApiError,
    ApiRequest,
    authenticate_publisher,
    connect_token_subject,
    error_body,
    error_response,
    ok_body,
    ok_response,
    parse_json_object,
    sse_sender_id,
)
from realtime.broker import BrokerUnavailable
from realtime.selectors import archived_messages_read
from realtime.stats import replica_stats

logger = logging.getLogger(__name__)

# The most messages one GET /api/history answers (page with `after`).
HISTORY_PAGE_MAX = 500

# A health check must answer well within HAProxy's check timeout even when Redis hangs.
HEALTH_REDIS_TIMEOUT_SECS = 0.5


def _from_inside(request: HttpRequest) -> bool:
    """A request straight from this host to the replica, not through HAProxy: health checks,
    the runner, the bench. HAProxy always adds X-Forwarded-For (and drops the client's), so a
    request without it did not come through the proxy; with Daphne's --proxy-headers,
    REMOTE_ADDR is then the real peer."""
    if "X-Forwarded-For" in request.headers:
        return False
    return request.META.get("REMOTE_ADDR") in ("127.0.0.1", "::1")


@require_GET
async def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness for HAProxy (always 200 while the process serves); the counters and Redis
    details only for staff and for callers on this host (they tell an attacker load and
    timing, and nothing a user needs)."""
    if not _from_inside(request):
        user = await request.auser()
        if not user.is_staff:
            return JsonResponse({"replica": settings.REPLICA_ID, "status": "ok"})
    started = time.perf_counter()
    # Every shard at once (one Redis: one shard), each with its own timeout.
    shards = await broker.current().shard_health(timeout=HEALTH_REDIS_TIMEOUT_SECS)
    layer: Any = get_channel_layer()
    subscribed = layer.shards_connected()
    errors = [row["error"] for row in shards if row["error"]]
    # 200 even without Redis: every replica shares the same Redis, so failing the check would
    # take the whole cluster out of HAProxy; the replica can still serve pages and say why.
    return JsonResponse(
        {
            "replica": settings.REPLICA_ID,
            "status": "ok",
            "redis": {
                "reachable": not errors,
                "error": errors[0] if errors else None,
                "latency_ms": round((time.perf_counter() - started) * 1000, 2),
                # Addresses are left out: an operator knows them, and a page need not.
                "shards": [
                    {
                        "shard": row["shard"],
                        "reachable": row["reachable"],
                        "error": row["error"],
                        "latency_ms": row["latency_ms"],
                        "subscribed": subscribed[row["shard"]],
                    }
                    for row in shards
                ],
            },
            "connections": replica_stats.open_connections,
            "layer_subscribed": all(subscribed),
            "rss_bytes": _rss_bytes(),
            # Per-socket objects alive now (realtime/lifetimes.py): after sockets close and a
            # full collection has run (stats.gc_full_collections), only open sockets' remain.
            "live_objects": lifetimes.live_counts(),
            # What sockets write through: Daphne's fast path, or plain ASGI (realtime/transport/).
            "transport": transport.active_transport,
            "stats": replica_stats.as_dict(),
        }
    )


@csrf_exempt  # from this host only: no browser reaches it
@require_POST
async def drain_view(request: HttpRequest) -> JsonResponse:
    """POST /drain[?window_secs=N] from the replica's own host (the runner, an operator on the
    box), or relayed from another replica for staff with an order signed by the shared
    SECRET_KEY (the cluster view's button; realtime/drain.py): its sockets move to other
    replicas in slots over the window. POST /drain?undo=1 takes it back. Anyone else: 404."""
    undo = bool(request.GET.get("undo"))
    order = request.headers.get(drain.ORDER_HEADER, "")
    if not _from_inside(request) and not (order and drain.order_valid(order, undo=undo)):
        return JsonResponse({"ok": False, "error": "not_found"}, status=404)
    if undo:
        return ok_response(drain.stop())
    try:
        window = float(request.GET.get("window_secs", settings.DRAIN_WINDOW_SECS))
    except ValueError:
        return error_response(400, "bad_window", "window_secs is a number of seconds.")
    if not 0 <= window <= 3600:
        return error_response(400, "bad_window", "window_secs is 0 to 3600.")
    return ok_response(await drain.start(get_channel_layer(), window_secs=window))


@require_GET
async def readyz(request: HttpRequest) -> JsonResponse:
    """Readiness for HAProxy (realtime/readiness.py): 200 while this replica should get new
    clients, 503 with the reasons while it should not. The reasons name no address."""
    reasons = await readiness.problems(get_channel_layer())
    body = {"replica": settings.REPLICA_ID, "ready": not reasons, "reasons": reasons}
    return JsonResponse(body, status=503 if reasons else 200)


@require_GET
async def metrics_view(request: HttpRequest) -> HttpResponse:
    """This replica's numbers in Prometheus' text format (realtime/metrics.py): for callers on
    this host, staff sessions, and `Authorization: Bearer <METRICS_TOKEN>` (a Prometheus on
    another host; no token set: none). Anyone else gets 404, as if there were no such page:
    load, sockets and Redis health tell an attacker when to strike."""
    if not await _may_read_metrics(request):
        return JsonResponse({"ok": False, "error": "not_found"}, status=404)
    metrics.watch_loop_lag()
    the_broker = broker.current()
    layer: Any = get_channel_layer()
    shards = await the_broker.shard_health(timeout=HEALTH_REDIS_TIMEOUT_SECS)
    body = metrics.render(
        shards_up=[row["reachable"] for row in shards],
        shards_subscribed=layer.shards_connected(),
        backlogged=metrics.backlogged_sockets(layer.local_sinks()),
    )
    return HttpResponse(body, content_type=metrics.CONTENT_TYPE_LATEST)


async def _may_read_metrics(request: HttpRequest) -> bool:
    if _from_inside(request):
        return True
    token = settings.METRICS_TOKEN
    given = request.headers.get("Authorization", "")
    if token and given.startswith("Bearer "):
        return hmac.compare_digest(given[7:].encode(), token.encode())
    user = await request.auser()
    return bool(user.is_staff)


def _rss_bytes() -> int | None:
    """This process's resident memory now (Linux), for operators and the memory tests."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


@csrf_exempt  # checked in sse_sender_id for session callers
@require_POST
async def sse_send(request: HttpRequest) -> JsonResponse:
    """POST {"connection": <hello's connection>, "frame": "<frame JSON text>"}: a client frame of
    the SSE transport (realtime/transport/sse.py). Any replica takes it; the channel layer
    carries it to the replica holding that connection, and the answer comes back on the
    stream. From a page: session and X-CSRFToken; from a client with a connection token: the
    same token as `Authorization: Bearer`."""
    try:
        user_id = await sse_sender_id(request)
        body = parse_json_object(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message)
    connection, frame = body.get("connection"), body.get("frame")
    if not isinstance(connection, str) or not isinstance(frame, str):
        return error_response(
            400, "bad_frame", 'Send {"connection": <from hello>, "frame": <frame JSON text>}.'
        )
    if len(frame) > settings.MAX_CLIENT_FRAME_BYTES:
        return error_response(
            413,
            "frame_too_large",
            f"Frames may be at most {settings.MAX_CLIENT_FRAME_BYTES} bytes.",
        )
    message = {"type": "rt.client_frame", "text": frame, "user_id": user_id}
    try:
        await get_channel_layer().send(connection, message)  # type: ignore[union-attr]
    except ValueError:
        return error_response(400, "bad_connection", "'connection' must be the id from hello.")
    except BrokerUnavailable:
        return error_response(503, "unavailable", "Messaging is unavailable; retry shortly.")
    return JsonResponse({"ok": True, "replica": settings.REPLICA_ID}, status=202)


@require_GET
async def whoami(request: HttpRequest) -> JsonResponse:
    user = await request.auser()
    return JsonResponse(
        {
            "replica": settings.REPLICA_ID,
            "user": user.get_username() if user.is_authenticated else None,
            # REMOTE_ADDR comes from HAProxy's X-Forwarded-For (Daphne --proxy-headers);
            # HAProxy deletes whatever X-Forwarded-For the client sent.
            "client_ip": request.META.get("REMOTE_ADDR"),
        }
    )


# --- The publish endpoints ----------------------------------------------------------------
# Each is a handler that reads an ApiRequest (headers and body) and returns its answer's data
# or raises: the same handler answers through Django (the views below, for staff sessions and
# any token request Django gets) and on the publish lanes (realtime/publish_lane.py), which
# skip Django's request and response objects for token requests.

ApiHandler = Callable[[ApiRequest], Awaitable[dict[str, Any]]]


async def outcome(handler: ApiHandler, request: ApiRequest) -> tuple[int, dict[str, Any]]:
    """(status, JSON body) of `handler`'s answer to `request`, errors in the API's shape."""
    try:
        data = await handler(request)
    except Exception as exc:
        failure = _api_failure(exc)
        if failure is None:
            raise
        status, code, message = failure
        return status, error_body(code, message)
    return 200, ok_body(data)


def publish_view(handler: ApiHandler) -> Callable[[HttpRequest], Coroutine[Any, Any, JsonResponse]]:
    """`handler` as a Django view: POST only; CSRF is checked in authenticate_publisher for
    session callers (token callers send no cookie)."""

    async def view(request: HttpRequest) -> JsonResponse:
        status, body = await outcome(handler, request)
        return JsonResponse(body, status=status)

    view.__name__ = view.__qualname__ = handler.__name__.replace("handle_", "api_")
    view.__doc__ = handler.__doc__
    return csrf_exempt(require_POST(view))


async def handle_push(request: ApiRequest) -> dict[str, Any]:
    """POST {"user": "alice", "payload": {...}} -> the message reaches every socket of alice."""
    publisher = await authenticate_publisher(request)
    body = parse_json_object(request)
    username = body.get("user")
    if not isinstance(username, str) or not username:
        raise ApiError(400, "bad_user", "'user' must be a username string.")
    payload = _payload_from(body)
    user_id = await user_directory.active_user_id(username)
    if user_id is None:
        raise ApiError(404, "unknown_user", f"There is no active user {username[:150]!r}.")
    result = await publish.push_to_user(
        user_id=user_id, payload=payload, idempotency=_idempotency(request, publisher)
    )
    logger.info("push user=%s seq=%s by=%s", username, result.seq, publisher)
    return {"user": username, **result.as_dict()}


api_push = publish_view(handle_push)


# A batch is one request's worth of work: bounded, so one caller cannot hold a replica for long.
MAX_BATCH_MESSAGES = 500


async def handle_push_batch(request: ApiRequest) -> dict[str, Any]:
    """POST {"messages": [{"user": "alice", "payload": {...}}, ...]} -> each reaches its user.

    One request, one token check and one user query for up to MAX_BATCH_MESSAGES pushes: a
    Django request costs far more server CPU than a publish. The pushes go to Redis together
    (publish.publish_many), each numbered and stored as a push of its own, those to the same
    user in the order given. All users must exist, or nothing is sent.
    With an Idempotency-Key, message i is keyed "<key>#<i>", so a batch retried after a 503
    (which may come after some were sent) publishes each message exactly once.
    """
    publisher = await authenticate_publisher(request)
    messages = parse_json_object(request).get("messages")
    if not isinstance(messages, list) or not 0 < len(messages) <= MAX_BATCH_MESSAGES:
        raise ApiError(
            400,
            "bad_messages",
            f"'messages' must be a list of 1 to {MAX_BATCH_MESSAGES} {{user, payload}} objects.",
        )
    for index, item in enumerate(messages):
        if not isinstance(item, dict) or not isinstance(item.get("user"), str) or not item["user"]:
            raise ApiError(400, "bad_user", f"messages[{index}]: 'user' must be a username string.")
        _payload_from(item, check=True)  # all of them before any is sent
    usernames = {m["user"] for m in messages}
    ids = await user_directory.active_user_ids(usernames)
    if unknown := sorted(usernames - set(ids)):
        raise ApiError(
            404,
            "unknown_user",
            f"There is no active user {unknown[0][:150]!r} (and {len(unknown) - 1} more); "
            "nothing was sent.",
        )
    key = _idempotency(request, publisher)
    # One call: each Redis shard publishes its part of the batch in one script call, in the
    # order given (so pushes to the same user arrive in that order).
    published = await publish.publish_many(
        [
            (
                groups.user_stream(ids[item["user"]]),
                item["payload"],
                f"{key}#{index}" if key else None,
            )
            for index, item in enumerate(messages)
        ]
    )
    results = [
        {"user": item["user"], **result.as_dict()}
        for item, result in zip(messages, published, strict=True)
    ]
    logger.info("push batch=%d users=%d by=%s", len(messages), len(usernames), publisher)
    return {"results": results}


api_push_batch = publish_view(handle_push_batch)


async def handle_broadcast(request: ApiRequest) -> dict[str, Any]:
    """POST {"payload": {...}} -> the message reaches every connected socket."""
    publisher = await authenticate_publisher(request)
    payload = _payload_from(parse_json_object(request))
    return await _published(request, publisher, stream=groups.BROADCAST_STREAM, payload=payload)


api_broadcast = publish_view(handle_broadcast)


@csrf_exempt  # checked in connect_token_subject for session callers
@require_POST
async def api_connect_token(request: HttpRequest) -> JsonResponse:
    """POST {"user"?: <username, with an API token>, "streams"?: [<stream>, …]}: a short-lived
    token for /ws/?token=… and /sse/?token=… (realtime/connect_tokens.py)."""

    async def handle() -> JsonResponse:
        body = parse_json_object(request) if request.body else {}
        user = await connect_token_subject(request, body)
        wanted = body.get("streams")
        if wanted is not None:
            if not isinstance(wanted, list) or not all(isinstance(s, str) for s in wanted):
                raise ApiError(400, "bad_streams", "'streams' must be a list of stream names.")
            if len(wanted) > settings.MAX_STREAMS_PER_SOCKET:
                raise ApiError(
                    400,
                    "bad_streams",
                    f"At most {settings.MAX_STREAMS_PER_SOCKET} streams per token.",
                )
            for stream in wanted:
                _check_stream_name(stream)
        token, expires = connect_tokens.issue(user, streams=wanted)
        return ok_response({"token": token, "expires_at": expires, "user": user.get_username()})

    return await _answer(handle)


@csrf_exempt  # checked in authenticate_publisher for session callers
@require_POST
async def api_kick(request: HttpRequest) -> JsonResponse:
    """POST {"user": <username>, "reason": <what the client is told>}: close all their sockets."""

    async def handle() -> JsonResponse:
        await authenticate_publisher(request)
        body = parse_json_object(request)
        user_id = await _user_id_named(body.get("user"))
        reason = body.get("reason", "")
        if not isinstance(reason, str):
            raise ApiError(400, "bad_reason", "'reason' must be a string.")
        await control.kick(user_id=user_id, reason=reason)
        return ok_response({"user": body["user"]})

    return await _answer(handle)


@csrf_exempt  # checked in authenticate_publisher for session callers
@require_POST
async def api_unsubscribe(request: HttpRequest) -> JsonResponse:
    """POST {"user": <username>, "stream": <stream>}: take the stream off their sockets."""

    async def handle() -> JsonResponse:
        await authenticate_publisher(request)
        body = parse_json_object(request)
        user_id = await _user_id_named(body.get("user"))
        stream = body.get("stream")
        if not isinstance(stream, str):
            raise ApiError(400, "bad_stream", "'stream' must be a stream name.")
        await control.unsubscribe(user_id=user_id, stream=_check_stream_name(stream))
        return ok_response({"user": body["user"], "stream": stream})

    return await _answer(handle)


@require_GET
async def api_history(request: HttpRequest) -> JsonResponse:
    """GET ?stream=<stream>&after=<seq>&limit=<n ≤ 500>: the stream's kept messages after `after`,
    oldest first, as the envelopes sockets got (with seq and epoch): the Redis window, and for a
    kind that keeps an archive the current epoch's archived messages before it. A stream whose
    kind keeps no history answers 400 no_history rather than an empty page, which would read as
    "nothing was sent"."""

    async def handle() -> JsonResponse:
        await authenticate_publisher(request)
        stream = _check_stream_name(request.GET.get("stream", ""))
        policy = streams.policy_for(stream)
        if not policy.history:
            raise ApiError(
                400,
                "no_history",
                f"{stream} keeps no history (its kind is registered with history=False): its "
                "messages reach only the sockets subscribed when they are sent.",
            )
        try:
            after = int(request.GET.get("after", "0"))
            limit = int(request.GET.get("limit", "100"))
        except ValueError:
            raise ApiError(400, "bad_query", "'after' and 'limit' must be integers.") from None
        if after < 0 or not 1 <= limit <= HISTORY_PAGE_MAX:
            raise ApiError(
                400, "bad_query", f"'after' must be >= 0 and 'limit' 1..{HISTORY_PAGE_MAX}."
            )
        entries = await broker.current().read(stream, after=after, limit=limit)
        if policy.archive and (not entries or entries[0][0] > after + 1):
            entries = await _with_archived(stream, after=after, limit=limit, window=entries)
        messages = [json.loads(sealing.open_frame(text)) for _, text in entries]
        return ok_response({"stream": stream, "messages": messages})

    return await _answer(handle)


async def _with_archived(
    stream: str, *, after: int, limit: int, window: list[tuple[int, str]]
) -> list[tuple[int, str]]:
    """A history page that starts before the Redis window: the archive's messages of the
    stream's current epoch from `after` up to the window's first, then the window's."""
    head = (await broker.current().heads([stream]))[stream]
    if head.epoch is None:
        return window
    archived = await database_sync_to_async(archived_messages_read)(
        stream=stream,
        epoch=head.epoch,
        after=after,
        before=window[0][0] if window else head.seq + 1,
        limit=limit,
    )
    return (archived + window)[:limit]


@require_GET
async def api_presence(request: HttpRequest) -> JsonResponse:
    """GET ?stream=<stream>: who is on the stream now, for a stream whose kind keeps presence
    (room:<slug>, a project's kinds registered with presence=True)."""

    async def handle() -> JsonResponse:
        await authenticate_publisher(request)
        stream = _check_stream_name(request.GET.get("stream", ""))
        if not presence.has_presence(stream):
            raise ApiError(
                400,
                "no_presence",
                f"{stream} keeps no presence: only the streams of a kind registered with "
                "presence=True do (realtime/streams.py).",
            )
        users = await presence.stream_users(stream=stream)
        return ok_response({"stream": stream, "users": users})

    return await _answer(handle)


@require_GET
async def api_sockets(request: HttpRequest) -> JsonResponse:
    """GET ?user=<username>: the user's open sockets, counted per replica."""

    async def handle() -> JsonResponse:
        await authenticate_publisher(request)
        username = request.GET.get("user", "")
        user_id = await _user_id_named(username)
        replicas = await presence.user_sockets(user_id=user_id)
        return ok_response(
            {"user": username, "replicas": replicas, "total": sum(replicas.values())}
        )

    return await _answer(handle)


def _check_stream_name(stream: str) -> str:
    """`stream`, if it is a stream's name (of a registered kind); ApiError 400 otherwise."""
    try:
        groups.group_for_stream(stream)
    except groups.InvalidStreamName as exc:
        raise ApiError(400, "bad_stream", str(exc)) from None
    return stream


async def _user_id_named(username: Any) -> int:
    if not isinstance(username, str) or not username:
        raise ApiError(400, "bad_user", "'user' must be a username.")
    user_id = await user_directory.active_user_id(username)
    if user_id is None:
        raise ApiError(404, "unknown_user", f"No active user {username[:150]!r}.")
    return user_id


async def handle_publish(request: ApiRequest) -> dict[str, Any]:
    """POST {"stream": "room:lobby" | "user:<id>" | "broadcast", "payload": {...}}."""
    publisher = await authenticate_publisher(request)
    body = parse_json_object(request)
    stream = body.get("stream")
    if not isinstance(stream, str):
        raise ApiError(400, "bad_stream", "'stream' must be a stream name such as 'room:lobby'.")
    _check_stream_name(stream)
    if stream == groups.OPS_STREAM:
        # The cluster view trusts what it reads there: only the replicas' reporters write it.
        raise ApiError(403, "forbidden_stream", "The ops stream is written by the replicas only.")
    return await _published(request, publisher, stream=stream, payload=_payload_from(body))


api_publish = publish_view(handle_publish)


async def _published(
    request: ApiRequest, publisher: str, *, stream: str, payload: Any
) -> dict[str, Any]:
    result = await publish.publish(
        stream=stream, payload=payload, idempotency=_idempotency(request, publisher)
    )
    logger.info("publish stream=%s seq=%s by=%s", stream, result.seq, publisher)
    return result.as_dict()


# Idempotency keys: a client's own unique string per message, like Stripe's.
MAX_IDEMPOTENCY_KEY_CHARS = 100


def _idempotency(request: ApiRequest, publisher: str) -> str | None:
    """The history key for this request's Idempotency-Key header, scoped to its publisher: a
    retried request with the same key returns the first one's seq and publishes nothing."""
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not 0 < len(key) <= MAX_IDEMPOTENCY_KEY_CHARS:
        raise ApiError(
            400,
            "bad_idempotency_key",
            f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} characters.",
        )
    return publish.idempotency_key(publisher, key)


def _payload_from(body: dict[str, Any], *, check: bool = False) -> Any:
    """`body`'s payload. Checked here (`check`) only where several are sent: one publish checks
    its payload itself before anything is sent, and its refusal is answered as these are
    (_api_failure); checking twice was a second JSON encoding per push."""
    if "payload" not in body:
        raise ApiError(400, "missing_payload", "'payload' is required (any JSON value).")
    payload = body["payload"]
    if check:
        try:
            publish.check_payload(payload)
        except publish.InvalidPayload as exc:
            raise ApiError(*_payload_refusal(exc)) from None
    return payload


def _payload_refusal(exc: publish.InvalidPayload) -> tuple[int, str, str]:
    if isinstance(exc, publish.PayloadTooLarge):
        return 413, "payload_too_large", str(exc)
    return 400, "bad_payload", str(exc)


async def _answer(handle: Callable[[], Awaitable[JsonResponse]]) -> JsonResponse:
    try:
        return await handle()
    except Exception as exc:
        failure = _api_failure(exc)
        if failure is None:
            raise
        return error_response(*failure)


def _api_failure(exc: Exception) -> tuple[int, str, str] | None:
    """(status, code, message) an API caller is told of `exc`; None: not the caller's to know
    (a bug: Django's 500, or the lane's)."""
    if isinstance(exc, ApiError):
        return exc.status, exc.code, exc.message
    if isinstance(exc, publish.InvalidPayload):  # refused by the publish: nothing was sent
        return _payload_refusal(exc)
    if isinstance(exc, publish.RealtimeUnavailable):
        return 503, "redis_unavailable", str(exc)
    if isinstance(exc, BrokerUnavailable):  # a read (history, presence): detail for the log only
        logger.warning("API read failed: Redis unavailable", exc_info=True)
        return 503, "redis_unavailable", publish.UNAVAILABLE_MESSAGE
    return None
