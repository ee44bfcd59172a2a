"""The one way to send a message to connected clients.

Only this module publishes to streams: views, admin actions, management commands and consumers
all come through here, so every message gets the same envelope, sequence number, history entry
(as far as its kind keeps history: realtime/streams.py), size limit and error handling. (The
broker's publish script does the PUBLISH that channels' `group_send` would do, atomically with
numbering and storing the message.)
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

from channels.layers import get_channel_layer
from django.conf import settings
from django.core.signals import setting_changed

from realtime import broker, groups, metrics, protocol, sealing, streams
from realtime.broker import Appended, BrokerUnavailable, StreamPolicy

logger = logging.getLogger(__name__)


class RealtimeUnavailable(BrokerUnavailable):
    """Nothing was sent: Redis could not be reached. Its message is for users (no address, no
    exception text); callers catching BrokerUnavailable catch it too."""


# What a user is told: no address, no password, no exception text (those are logged).
UNAVAILABLE_MESSAGE = "Messaging is unavailable right now; nothing was sent. Retry shortly."

# The archive queue's fill at which publishers warn: past the cap its oldest messages are lost
# to the archive. Once a minute per process at most: every publish sees the length.
ARCHIVE_QUEUE_WARN_FRACTION = 0.8
ARCHIVE_QUEUE_WARN_EVERY_SECS = 60.0
_archive_queue_warned_at = float("-inf")


class InvalidPayload(ValueError):
    """The payload cannot be sent: not JSON, or too large."""


class PayloadTooLarge(InvalidPayload):
    """The payload encodes to more than MAX_PAYLOAD_BYTES."""


@dataclass(frozen=True)
class PublishResult:
    stream: str
    id: str
    origin: str
    seq: int
    epoch: str
    replicas: int  # processes subscribed to the stream's group when it was published
    sockets: int  # sockets in that group, by the replicas' membership counts
    duplicate: bool  # the idempotency key was seen before: this is the first publish's result

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def check_payload(payload: Any) -> None:
    """Raise InvalidPayload unless `payload` is JSON that fits in MAX_PAYLOAD_BYTES."""
    try:
        size = len(protocol.encode_bytes({"p": payload}))
    except (TypeError, ValueError, RecursionError) as exc:
        # ValueError: NaN or Infinity (not JSON), or a string with a lone surrogate (not UTF-8).
        raise InvalidPayload(f"The payload must be standard JSON: {exc}.") from None
    if size > settings.MAX_PAYLOAD_BYTES:
        raise PayloadTooLarge(
            f"The payload is {size} bytes encoded; the limit is {settings.MAX_PAYLOAD_BYTES}."
        )


# Envelope types by stream kind: what a client switches on.
# The frame type per stream kind; "*": an app's kinds (room:, a project's own).
_KINDS = {"user": "push", "broadcast": "broadcast", "ops": "ops", "*": "message"}


@dataclass(frozen=True)
class _Outgoing:
    """A message made ready for the broker: what `publish` and `publish_sync` share."""

    stream: str
    group: str
    body: str
    message_id: str
    idempotency: str | None
    policy: StreamPolicy


def _outgoing(stream: str, payload: Any, sender: str | None, idempotency: str | None) -> _Outgoing:
    group = groups.group_for_stream(stream)
    check_payload(payload)
    # 128 random bits as hex, as uuid4().hex gave (less its 6 fixed bits), at a third the cost.
    message_id = os.urandom(16).hex()
    envelope = protocol.envelope(
        kind=_KINDS.get(stream.partition(":")[0]) or _KINDS["*"],
        stream=stream,
        message_id=message_id,
        payload=payload,
        origin=settings.REPLICA_ID,
    )
    if sender is not None:
        envelope["sender"] = sender
    # Encoded once here; the publish script adds seq and epoch, and every replica writes the
    # resulting text to its sockets as it is.
    # With HISTORY_ENCRYPTION_KEYS, sealed: Redis and the archive keep it encrypted, and the
    # replicas open it before their sockets get it (realtime/sealing.py).
    body = sealing.seal_body(protocol.encode(envelope))
    return _Outgoing(stream, group, body, message_id, idempotency, _policy(stream))


# Each kind's StreamPolicy, made once (with the kind it was made for): making it per publish,
# with the five settings it reads, was a sixth of preparing a message. Forgotten when a
# setting changes (override_settings); a kind registered again is a new kind object.
_policies: dict[str, tuple[streams.StreamKind | None, StreamPolicy]] = {}


def _policy(stream: str) -> StreamPolicy:
    """What the stream's kind keeps (realtime/streams.py): a kind without history keeps none
    (max_len 0), and its messages are still numbered; an archived kind's messages are queued
    for the database in the same script, and written there later (realtime/archive.py): the
    publish itself never waits for the database."""
    name = stream.partition(":")[0]
    registered = streams.kind_named(name)
    cached = _policies.get(name)
    if cached is not None and cached[0] is registered:
        return cached[1]
    kind = streams.policy_for(stream)
    policy = StreamPolicy(
        max_len=kind.history_maxlen if kind.history else 0,
        max_age_ms=int(kind.history_max_age_secs * 1000),
        idempotency_ttl_secs=settings.IDEMPOTENCY_TTL_SECS,
        archive=kind.archive,
        archive_queue_max_len=settings.ARCHIVE_QUEUE_MAXLEN,
    )
    _policies[name] = (registered, policy)
    return policy


def _forget_policies(**kwargs: object) -> None:
    _policies.clear()


setting_changed.connect(_forget_policies)


def _broker_args(out: _Outgoing) -> dict[str, Any]:
    return {
        "stream": out.stream,
        "group": out.group,
        "body": out.body,
        "message_id": out.message_id,
        "idempotency": out.idempotency,
        "policy": out.policy,
    }


def _unavailable(out: _Outgoing, exc: Exception) -> RealtimeUnavailable:
    # The details (which Redis, why) go to the log; callers show the message to users, and a
    # Redis URL can carry a password.
    logger.warning(
        "publish failed stream=%s replica=%s error=%r", out.stream, settings.REPLICA_ID, exc
    )
    return RealtimeUnavailable(UNAVAILABLE_MESSAGE)


def _result(out: _Outgoing, appended: Appended, started: float) -> PublishResult:
    metrics.PUBLISH_SECONDS.observe(time.perf_counter() - started)
    origin = settings.REPLICA_ID
    logger.debug("published stream=%s seq=%s replica=%s", out.stream, appended.seq, origin)
    if appended.archive_queue > ARCHIVE_QUEUE_WARN_FRACTION * out.policy.archive_queue_max_len:
        _warn_archive_queue(appended.archive_queue, out.policy.archive_queue_max_len)
    return PublishResult(
        stream=out.stream,
        id=appended.message_id,
        origin=origin,
        seq=appended.seq,
        epoch=appended.epoch,
        replicas=appended.receivers,
        sockets=appended.sockets,
        duplicate=appended.duplicate,
    )


async def publish(
    *, stream: str, payload: Any, sender: str | None = None, idempotency: str | None = None
) -> PublishResult:
    """Publish `payload` to `stream` (user:<id>, broadcast, room:<slug> or a registered kind's).

    `idempotency` is a key already scoped to its publisher (see `idempotency_key`): a
    repeated key publishes nothing and returns the first publish's seq, so retries are safe.
    """
    out = _outgoing(stream, payload, sender, idempotency)
    started = time.perf_counter()
    try:
        # Bounded by the broker: Redis answers within REDIS_TIMEOUT_SECS or the call fails.
        appended = await broker.current().publish(**_broker_args(out))
    except (BrokerUnavailable, TimeoutError) as exc:
        raise _unavailable(out, exc) from exc
    return _result(out, appended, started)


async def publish_many(messages: list[tuple[str, Any, str | None]]) -> list[PublishResult]:
    """`publish` for several (stream, payload, idempotency) messages, their results in the
    order given: each Redis shard's in one script call, each message numbered and stored as a
    publish of its own would be, a stream's messages in the order given. Raises
    RealtimeUnavailable if any shard does not answer (the others' messages may have gone out:
    idempotency keys make a retry of the whole batch safe)."""
    outs = [
        _outgoing(stream, payload, None, idempotency) for stream, payload, idempotency in messages
    ]
    started = time.perf_counter()
    try:
        appended = await broker.current().publish_many([_broker_args(out) for out in outs])
    except (BrokerUnavailable, TimeoutError) as exc:
        raise _unavailable(outs[0], exc) from exc
    return [_result(out, each, started) for out, each in zip(outs, appended, strict=True)]


def publish_sync(
    *, stream: str, payload: Any, sender: str | None = None, idempotency: str | None = None
) -> PublishResult:
    """`publish` for sync code: a Django view, an admin action, a management command, a task
    queue worker, a WSGI process. The same script through a blocking Redis client on the
    calling thread: no event loop is started and no thread is handed the call, so it costs
    about what the publish itself costs (docs/performance.md). Raises RuntimeError inside an
    event loop (it would block it): use `publish` there."""
    _refuse_in_event_loop("publish_sync")
    out = _outgoing(stream, payload, sender, idempotency)
    started = time.perf_counter()
    try:
        appended = broker.current().publish_sync(**_broker_args(out))
    except BrokerUnavailable as exc:
        raise _unavailable(out, exc) from exc
    return _result(out, appended, started)


def _refuse_in_event_loop(name: str) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError(
        f"{name}() blocks, and this thread runs an event loop: await the async function instead."
    )


def _warn_archive_queue(length: int, cap: int) -> None:
    global _archive_queue_warned_at
    now = time.monotonic()
    if now - _archive_queue_warned_at < ARCHIVE_QUEUE_WARN_EVERY_SECS:
        return
    _archive_queue_warned_at = now
    logger.warning(
        "archive queue holds %d of at most %d messages (ARCHIVE_QUEUE_MAXLEN): the archivers are "
        "not keeping up, or none runs (they start with a replica's first socket), or the "
        "database refuses writes; past the cap the oldest messages are lost to the archive "
        "replica=%s",
        length,
        cap,
        settings.REPLICA_ID,
    )


def idempotency_key(scope: str, key: str) -> str:
    """The broker's key for a publisher's own message id: `scope` names the publisher (a user and
    stream, a token, a chat row), so two publishers' ids never collide."""
    return broker.current().idempotency_key(scope, key)


async def push_to_user(
    *, user_id: int, payload: Any, idempotency: str | None = None
) -> PublishResult:
    """Send `payload` to every socket of one user, on whichever replica it lives."""
    return await publish(
        stream=groups.user_stream(user_id), payload=payload, idempotency=idempotency
    )


async def broadcast(*, payload: Any, idempotency: str | None = None) -> PublishResult:
    """Send `payload` to every connected socket on every replica."""
    return await publish(stream=groups.BROADCAST_STREAM, payload=payload, idempotency=idempotency)


async def publish_ephemeral(*, stream: str, frame: dict[str, Any]) -> None:
    """Fan `frame` out to the sockets on `stream` now, without a seq and without history.

    For what is stale within seconds (typing, presence changes): a socket that misses it
    loses nothing worth replaying, and a page re-reads presence when it reconnects.
    """
    group = groups.group_for_stream(stream)
    text = protocol.encode({**frame, "stream": stream, "origin": settings.REPLICA_ID})
    layer = get_channel_layer()
    try:
        await asyncio.wait_for(
            layer.group_send(group, {"type": "rt.ephemeral", "stream": stream, "frame": text}),  # type: ignore[union-attr]
            timeout=settings.REDIS_TIMEOUT_SECS,
        )
    except (BrokerUnavailable, TimeoutError) as exc:
        logger.warning("ephemeral publish failed stream=%s error=%r", stream, exc)
        raise RealtimeUnavailable(UNAVAILABLE_MESSAGE) from exc


def push_to_user_sync(
    *, user_id: int, payload: Any, idempotency: str | None = None
) -> PublishResult:
    """`push_to_user` for sync code (see publish_sync)."""
    return publish_sync(
        stream=groups.user_stream(user_id), payload=payload, idempotency=idempotency
    )


def broadcast_sync(*, payload: Any, idempotency: str | None = None) -> PublishResult:
    """`broadcast` for sync code (see publish_sync)."""
    return publish_sync(stream=groups.BROADCAST_STREAM, payload=payload, idempotency=idempotency)
