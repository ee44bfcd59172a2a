"""Publishing from any Django code: a view, a model's save, a task, a management command.

    from realtime import sending

    sending.push(request.user, {"toast": "Saved"})             # sync code (views, tasks)
    await sending.apublish("order:42", {"status": "shipped"})  # async code
    sending.publish_on_commit(f"order:{order.pk}", {...})       # once the transaction commits

Each returns the publish's PublishResult (stream, seq, epoch, duplicate), or for the
`_on_commit` ones None (the publish happens later, or never if the transaction rolls back).
`idempotency_key` is yours: the same key on the same stream publishes once, so a retried task
does not send twice. The sync functions are for sync code only: they run the publish script
through a blocking Redis client on the calling thread (no event loop, no thread hand-off), and
called inside an event loop they raise RuntimeError (use the `a` ones there). A stream of a
kind nobody registered raises InvalidStreamName; Redis unreachable raises RealtimeUnavailable.
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import transaction

from realtime import groups
from realtime import publish as publishing
from realtime.publish import PublishResult

logger = logging.getLogger(__name__)


async def apublish(stream: str, payload: Any, *, idempotency_key: str = "") -> PublishResult:
    """Publish `payload` to `stream` (any kind: user:<id>, broadcast, room:<slug>, your own)."""
    return await publishing.publish(
        stream=stream, payload=payload, idempotency=_scoped(stream, idempotency_key)
    )


def publish(stream: str, payload: Any, *, idempotency_key: str = "") -> PublishResult:
    """`apublish` for sync code."""
    return publishing.publish_sync(
        stream=stream, payload=payload, idempotency=_scoped(stream, idempotency_key)
    )


def _scoped(stream: str, idempotency_key: str) -> str | None:
    groups.group_for_stream(stream)  # a bad name fails before the key is made
    if not idempotency_key:
        return None
    return publishing.idempotency_key(f"app:{stream}", idempotency_key)


async def apush(user: Any, payload: Any, *, idempotency_key: str = "") -> PublishResult:
    """To every socket of one user (a user object or its id), wherever it is connected."""
    user_id = user if isinstance(user, int) else user.pk
    return await apublish(groups.user_stream(user_id), payload, idempotency_key=idempotency_key)


async def abroadcast(payload: Any, *, idempotency_key: str = "") -> PublishResult:
    """To every connected socket on every replica."""
    return await apublish(groups.BROADCAST_STREAM, payload, idempotency_key=idempotency_key)


def push(user: Any, payload: Any, *, idempotency_key: str = "") -> PublishResult:
    """`apush` for sync code."""
    user_id = user if isinstance(user, int) else user.pk
    return publish(groups.user_stream(user_id), payload, idempotency_key=idempotency_key)


def broadcast(payload: Any, *, idempotency_key: str = "") -> PublishResult:
    """`abroadcast` for sync code."""
    return publish(groups.BROADCAST_STREAM, payload, idempotency_key=idempotency_key)


def publish_on_commit(
    stream: str, payload: Any, *, idempotency_key: str = "", using: str | None = None
) -> None:
    """Publish once the current transaction commits (at once outside one); never if it rolls
    back, so no socket hears of a row that does not exist. A failure then is logged, not
    raised: the transaction is committed already."""
    groups.group_for_stream(stream)  # a bad name fails now, in the caller's code
    transaction.on_commit(
        lambda: publish(stream, payload, idempotency_key=idempotency_key),
        using=using,
        robust=True,
    )


def push_on_commit(
    user: Any, payload: Any, *, idempotency_key: str = "", using: str | None = None
) -> None:
    user_id = user if isinstance(user, int) else user.pk
    publish_on_commit(
        groups.user_stream(user_id), payload, idempotency_key=idempotency_key, using=using
    )


def broadcast_on_commit(
    payload: Any, *, idempotency_key: str = "", using: str | None = None
) -> None:
    publish_on_commit(
        groups.BROADCAST_STREAM, payload, idempotency_key=idempotency_key, using=using
    )
