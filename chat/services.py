"""Chat rooms and messages: the services (writes) and selectors (reads) the chat pages use.

A message is a database row first and a stream message second: `message_post` commits the row,
then (transaction.on_commit) publishes it on `room:<slug>` and writes the seq it got back onto
the row. So any message whose seq a reader has seen has a committed row, which is what lets a
page render history from the database and then resume the live stream with no gap and no
duplicate (see `room_snapshot`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.db.models import Q, QuerySet

from chat.models import ChatMessage, Room
from realtime import broker, groups, limits, publish
from realtime.broker import BrokerUnavailable
from realtime.protocol import InvalidFrame
from realtime.selectors import StreamDenied, stream_check_readable

logger = logging.getLogger(__name__)

MAX_TEXT_CHARS = 2000
# Rows a room page renders; older ones are a scroll-back feature this page does not have.
HISTORY_ROWS = 50
# Rows one catch-up request returns: a client that missed more reloads the page.
CATCH_UP_ROWS = 200


class ChatError(ValueError):
    """A chat action that cannot be done; the message says why and what to do."""


# --- rooms ---------------------------------------------------------------------------------------


def rooms_visible(*, user: User) -> QuerySet[Room]:
    """Rooms the user may open: public ones, private ones they belong to (all, for staff)."""
    rooms = Room.objects.all()
    if not user.is_staff:
        rooms = rooms.filter(Q(is_private=False) | Q(members=user)).distinct()
    return rooms.order_by("slug")


def rooms_joined(*, user: User) -> QuerySet[Room]:
    return Room.objects.filter(members=user).order_by("slug")


def room_get_readable(*, user: User, slug: str) -> Room:
    """The room, or StreamDenied (unknown, malformed or private)."""
    try:
        stream = groups.room_stream(slug)
    except groups.InvalidStreamName as exc:
        raise StreamDenied("bad_stream", str(exc)) from None
    stream_check_readable(user=user, stream=stream)
    return Room.objects.get(slug=slug)


def room_create(*, user: User, slug: str, title: str, is_private: bool) -> Room:
    slug = slug.strip().lower()
    if not groups.is_room_slug(slug):
        raise ChatError("Room names use lower-case letters, digits and hyphens (at most 50).")
    limit = settings.MAX_ROOMS_PER_USER
    if not user.is_staff and Room.objects.filter(created_by=user).count() >= limit:
        raise ChatError(
            f"You have created {limit} rooms, the most one user may; ask staff for more."
        )
    if Room.objects.filter(slug=slug).exists():
        raise ChatError(f"There is already a room {slug!r}; pick another name.")
    room = Room.objects.create(
        slug=slug, title=title.strip()[:100] or slug, is_private=is_private, created_by=user
    )
    room.members.add(user)
    logger.info("room created slug=%s private=%s by=%s", slug, is_private, user.get_username())
    return room


def room_join(*, user: User, room: Room) -> None:
    """Add the user to the room's members (it then shows under "your rooms")."""
    room.members.add(user)


def room_leave(*, user: User, room: Room) -> None:
    room.members.remove(user)


def room_invite(*, user: User, room: Room, username: str) -> User:
    """A member adds someone to a (private) room."""
    from realtime.selectors import user_get_by_username

    if not user.is_staff and not room.members.filter(pk=user.pk).exists():
        raise ChatError("Only members may invite others.")
    invited = user_get_by_username(username=username.strip())
    if invited is None:
        raise ChatError(f"There is no user {username.strip()[:150]!r}.")
    room.members.add(invited)
    return invited


# --- messages ------------------------------------------------------------------------------------


def message_payload(message: ChatMessage) -> dict[str, Any]:
    """What the stream carries for a chat row (and what the catch-up endpoint returns)."""
    return {
        "kind": "chat",
        "id": message.pk,
        "user": message.user.get_username(),
        "user_id": message.user_id,
        "text": message.text,
        "created_at": message.created_at.isoformat(),
        "client_id": message.client_id or None,
    }


def message_post(
    *, user: User, room: Room, text: str, client_id: str = ""
) -> tuple[ChatMessage, bool]:
    """Store a message and publish it after the commit. Returns (row, duplicate).

    A repeated `client_id` (a resend after a reconnect) returns the first row and publishes
    nothing new — unless that row's publish never happened (Redis was down), which is retried.
    """
    text = text.strip()
    if not text:
        raise ChatError("Say something: the message is empty.")
    if len(text) > MAX_TEXT_CHARS:
        raise ChatError(f"Messages may be at most {MAX_TEXT_CHARS} characters.")
    if client_id:
        # Per room: the same client id in another room is another message.
        prior = ChatMessage.objects.filter(user=user, room=room, client_id=client_id).first()
        if prior is not None:
            if prior.seq is None:
                _announce(prior)
            return prior, True
    try:
        with transaction.atomic():
            message = ChatMessage.objects.create(
                room=room, user=user, text=text, client_id=client_id
            )
            transaction.on_commit(lambda: _announce(message))
    except IntegrityError:
        # The same client_id raced in from two sockets: the other one won.
        return ChatMessage.objects.get(user=user, room=room, client_id=client_id), True
    return message, False


def _announce(message: ChatMessage) -> None:
    """Publish a committed row and record its stream position on it."""
    try:
        result = publish.publish_sync(
            stream=groups.room_stream(message.room.slug),
            payload=message_payload(message),
            sender=message.user.get_username(),
            # Keyed by the row: a retried announce of the same row is never published twice.
            idempotency=publish.idempotency_key("chat", str(message.pk)),
        )
    except publish.RealtimeUnavailable as exc:
        # The row stands; readers get it from the database (catch-up, reload), and a resend
        # of the same client id publishes it then.
        logger.warning("chat message %s stored but not published: %s", message.pk, exc)
        return
    ChatMessage.objects.filter(pk=message.pk).update(seq=result.seq, epoch=result.epoch)
    message.seq, message.epoch = result.seq, result.epoch


def messages_recent(*, room: Room, limit: int = HISTORY_ROWS) -> list[ChatMessage]:
    rows = ChatMessage.objects.filter(room=room).select_related("user").order_by("-id")[:limit]
    return list(reversed(rows))


def messages_after(*, room: Room, after_id: int, limit: int = CATCH_UP_ROWS) -> list[ChatMessage]:
    rows = ChatMessage.objects.filter(room=room, id__gt=after_id).select_related("user")
    return list(rows.order_by("id")[:limit])


@dataclass(frozen=True)
class RoomSnapshot:
    """What a room page renders: rows, and the stream position to resume from after them."""

    messages: list[ChatMessage]
    epoch: str | None
    seq: int | None  # None: Redis was unreachable; the page subscribes from the head instead


def room_snapshot(*, room: Room) -> RoomSnapshot:
    """History and resume position with no gap and no duplicate between them.

    The stream head is read *before* the rows. Every message up to that head was published
    after its row committed, so the rows read next include all of them; everything after the
    head arrives live (resumed from it). A row that is both rendered and then delivered is
    recognised by its id in the page and shown once.
    """
    try:
        stream = groups.room_stream(room.slug)
        head = async_to_sync(broker.current().heads)([stream])[stream]
        epoch, seq = head.epoch, head.seq
    except BrokerUnavailable as exc:
        logger.warning("room %s rendered without a stream position: %r", room.slug, exc)
        epoch, seq = None, None
    return RoomSnapshot(messages_recent(room=room), epoch, seq)


# --- from a socket -------------------------------------------------------------------------------


def is_typing(stream: str, payload: Any) -> bool:
    """A socket's typing frame (throttled apart from other publishes: it is ephemeral)."""
    return (
        stream.startswith("room:") and isinstance(payload, dict) and payload.get("kind") == "typing"
    )


async def socket_publish(
    *, user: User, stream: str, payload: Any, client_id: str
) -> dict[str, Any] | None:
    """Handle a socket's publish to a room when it is chat ("kind": "chat" | "typing").

    Returns the ack to send, or None when the payload is not chat (published as it is).
    """
    if not stream.startswith("room:") or not isinstance(payload, dict):
        return None
    kind = payload.get("kind")
    if kind == "typing":
        await publish.publish_ephemeral(  # RealtimeUnavailable: the socket says "unavailable"
            stream=stream, frame={"type": "typing", "user": user.get_username(), "user_id": user.pk}
        )
        return {"type": "ack", "stream": stream, "seq": None, "epoch": None, "duplicate": False}
    if kind != "chat":
        return None
    text = payload.get("text")
    if not isinstance(text, str):
        raise InvalidFrame("bad_payload", "A chat message needs 'text', a string.", client_id)
    per_min = settings.CHAT_LINES_PER_MIN
    try:
        within = await limits.within_limit(f"chat:{user.pk}", limit=per_min, window_secs=60)
    except BrokerUnavailable:
        # Not counted while Redis is away: the line is stored now (and published when Redis is
        # back), so it keeps its place among the room's lines; refusing it would reorder it.
        within = True
    if not within:
        raise InvalidFrame(
            "rate_limited",
            f"You may post {per_min} chat lines a minute; this one was not "
            "posted. Wait a little, then send it again.",
            client_id,
        )
    room = await database_sync_to_async(Room.objects.get)(slug=stream.partition(":")[2])
    try:
        message, duplicate = await database_sync_to_async(message_post)(
            user=user, room=room, text=text, client_id=client_id
        )
    except ChatError as exc:
        raise InvalidFrame("bad_payload", str(exc), client_id) from None
    if message.seq is None:
        # Stored but not announced (Redis down): the client keeps it and resends later.
        raise BrokerUnavailable("chat message stored but not published")
    return {
        "type": "ack",
        "stream": stream,
        "seq": message.seq,
        "epoch": message.epoch,
        "duplicate": duplicate,
        "message_id": message.pk,
    }


class ChatPublishHook:
    """The chat's socket publishes (publish_hooks.py): lines and typing in rooms."""

    def is_ephemeral(self, stream: str, payload: Any) -> bool:
        return is_typing(stream, payload)

    async def handle(
        self, *, user: Any, stream: str, payload: Any, client_id: str
    ) -> dict[str, Any] | None:
        return await socket_publish(user=user, stream=stream, payload=payload, client_id=client_id)
