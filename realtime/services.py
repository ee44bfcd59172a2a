"""Writes. Keyword-only arguments, named <noun>_<verb>."""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime

from django.contrib.auth.models import User

from realtime.broker import Queued
from realtime.models import ApiToken, ArchivedMessage

TOKEN_PREFIX = "sb_"


def token_digest(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def api_token_issue(*, name: str, created_by: User | None = None) -> tuple[ApiToken, str]:
    """Create a token and return it with its secret, which is not stored and cannot be shown
    again."""
    raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(
        name=name, prefix=raw[:10], digest=token_digest(raw), created_by=created_by
    )
    return token, raw


def archived_messages_write(*, messages: list[Queued]) -> None:
    """Archive `messages` in one INSERT (a few on SQLite, whose statements take at most 999
    parameters); a message archived before (a redelivered queue entry) is skipped, not
    duplicated: the unique (stream, epoch, seq) drops it."""
    ArchivedMessage.objects.bulk_create(
        [
            ArchivedMessage(
                stream=message.stream,
                epoch=message.epoch,
                seq=message.seq,
                frame=message.frame,
                created_at=datetime.fromtimestamp(message.published_ms / 1000, tz=UTC),
            )
            for message in messages
        ],
        ignore_conflicts=True,
    )
