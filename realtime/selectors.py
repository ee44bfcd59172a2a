"""Reads. Keyword-only arguments, named <noun>_<verb>."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable

from asgiref.sync import async_to_sync
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User

from realtime import streams
from realtime.groups import InvalidStreamName, group_for_stream
from realtime.models import ApiToken, ArchivedMessage
from realtime.services import token_digest
from realtime.streams import StreamDenied

__all__ = ["StreamDenied"]  # here too: the place readers of streams have always imported it


def api_token_authenticate(*, raw: str) -> ApiToken | None:
    """The active token whose secret is `raw`, or None."""
    # The digest of a 256-bit random secret is looked up, never compared byte by byte.
    return ApiToken.objects.filter(digest=token_digest(raw), is_active=True).first()


def archived_messages_read(
    *, stream: str, epoch: str, after: int, before: int | None = None, limit: int
) -> list[tuple[int, str]]:
    """(seq, frame) of `stream`'s archived messages of `epoch` with after < seq < before (or to
    the end), oldest first, at most `limit`: one range scan of the unique index."""
    rows = ArchivedMessage.objects.filter(stream=stream, epoch=epoch, seq__gt=after)
    if before is not None:
        rows = rows.filter(seq__lt=before)
    return list(rows.order_by("seq").values_list("seq", "frame")[:limit])


def user_get_by_username(*, username: str) -> User | None:
    return get_user_model().objects.filter(username=username, is_active=True).first()


def user_ids_by_username(*, usernames: set[str]) -> dict[str, int]:
    """{username: id} of the active users among `usernames`, in one query."""
    rows = get_user_model().objects.filter(username__in=usernames, is_active=True)
    return dict(rows.values_list("username", "pk"))


def stream_check_readable(*, user: User, stream: str) -> None:
    """Raise StreamDenied unless `user` may read `stream`: their own user stream, broadcast,
    (staff only) the replicas' ops stream, and what the check registered for the stream's kind
    allows (rooms they may join, a project's own kinds: realtime/streams.py)."""
    try:
        group_for_stream(stream)
    except InvalidStreamName as exc:
        raise StreamDenied("bad_stream", str(exc)) from None
    kind, _, key = stream.partition(":")
    if kind == "broadcast":
        return
    if kind == "ops":
        if not user.is_staff:
            raise StreamDenied("forbidden_stream", "The ops stream is for staff only.")
        return
    if kind == "user":
        if int(key) != user.pk:
            raise StreamDenied(
                "forbidden_stream", f"You may read only your own user stream, user:{user.pk}."
            )
        return
    registered = streams.kind_of(stream)
    assert registered is not None  # group_for_stream() knows only registered kinds
    if not _allowed(registered[0].can_read, user, stream):
        raise StreamDenied("forbidden_stream", f"You may not read {stream}.")


def stream_check_writable(*, user: User, stream: str) -> None:
    """Raise StreamDenied unless `user` may publish to `stream` from a socket: broadcast for
    staff; never a user stream (those are for the server to push) nor ops; a kind's streams
    when its `can_publish` allows (and its `can_read`: one cannot write what one may not read;
    a kind without `can_publish` takes no publishes from sockets)."""
    stream_check_readable(user=user, stream=stream)
    if stream.startswith("user:"):
        raise StreamDenied("forbidden_stream", "User streams take pushes from the server only.")
    if stream == "ops":
        raise StreamDenied("forbidden_stream", "Only the replicas publish to the ops stream.")
    if stream == "broadcast":
        if not user.is_staff:
            raise StreamDenied("forbidden_stream", "Only staff may broadcast.")
        return
    registered = streams.kind_of(stream)
    assert registered is not None
    can_publish = registered[0].can_publish
    if can_publish is None or not _allowed(can_publish, user, stream):
        raise StreamDenied("forbidden_stream", f"You may not publish to {stream}.")


def _allowed(check: streams.Check, user: User, stream: str) -> bool:
    """Run a kind's check, sync or async (from sync code: the event loop runs an async one)."""
    answer = check(user, stream)
    if inspect.isawaitable(answer):
        answer = async_to_sync(_awaited)(answer)
    return answer is True


async def _awaited(answer: Awaitable[bool]) -> bool:
    return await answer
