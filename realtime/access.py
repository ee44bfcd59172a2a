"""Access that changes while sockets are open, and the sockets told about it.

What a socket may read is checked when it subscribes. Without more, a user who lost staff kept
the ops stream, a member removed from a private room kept reading it, and a deactivated user
kept their socket, each until they reconnected. Now those changes send `rt.recheck` to the
sockets concerned, on any replica: to the user's group when a user changes (staff, active,
password); the apps that own streams call `recheck` / `recheck_sync` for their own changes
(chat/access.py: private-room memberships, a room made private or deleted). The consumer then
checks its streams again with a fresh copy of its user, leaves the ones it may no longer read
(error `access_revoked`), and closes the socket (4401) of a user who is no longer active or
whose password changed since the socket logged in.

A login session that ends (logout, or its row deleted by the admin, `clearsessions` or a
password change's flush) sends `rt.recheck` with the session's digest to the user's sockets;
the one opened with that session closes with 4401 (expiry is found by realtime/session_watch.py).

The signals fire inside the admin's and the views' saves; a Redis outage is logged and never
fails the save (the sockets then keep their streams until they reconnect, as before).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.auth import get_user_model, user_logged_out
from django.db import transaction
from django.db.models.signals import post_delete, post_save, pre_save

from realtime import groups
from realtime.broker import REDIS_FAILURES, BrokerUnavailable
from realtime.protocol import CLOSE_UNAUTHORIZED
from realtime.selectors import StreamDenied, stream_check_readable
from realtime.session_watch import session_digest

logger = logging.getLogger(__name__)

RECHECK = "rt.recheck"


async def recheck(
    *,
    user_ids: Sequence[int] = (),
    room_slugs: Sequence[str] = (),
    streams: Sequence[str] = (),
    ended_session: str = "",
) -> None:
    """Tell the sockets of these users (all their streams), and those reading these streams (or
    rooms), to check their access again and leave what they may no longer read: call it when
    a permission changes (`streams=["order:42"]` for a project's own kind). With
    `ended_session` (a session key), the users' sockets opened with it close instead."""
    layer: Any = get_channel_layer()
    user_event = (
        {"type": RECHECK, "ended_session": session_digest(ended_session)}
        if ended_session
        else {"type": RECHECK}
    )
    streams = [*streams, *(groups.room_stream(slug) for slug in room_slugs)]
    messages = [(groups.user_stream(uid), user_event) for uid in user_ids] + [
        (stream, {"type": RECHECK, "stream": stream}) for stream in streams
    ]
    sends = [layer.group_send(groups.group_for_stream(s), message) for s, message in messages]
    try:
        await asyncio.wait_for(asyncio.gather(*sends), timeout=settings.REDIS_TIMEOUT_SECS)
    except (BrokerUnavailable, *REDIS_FAILURES) as exc:
        # (REDIS_FAILURES: a channel layer other than ours, e.g. channels_redis, raises them raw.)
        logger.warning(
            "access change not sent to sockets (users=%s streams=%s): %r", user_ids, streams, exc
        )


recheck_sync = async_to_sync(recheck)


def recheck_on_commit(**kwargs: Any) -> None:
    """`recheck` once the current transaction commits (at once outside one). Signals of a
    changed permission fire inside the transaction that changes it: told then, a replica
    could check before the commit, read the old rows and keep the access it should lose."""
    transaction.on_commit(lambda: recheck_sync(**kwargs), robust=True)


# --- what a socket does when told ------------------------------------------------------------


async def recheck_socket(session: Any, event: dict[str, Any]) -> None:
    """`rt.recheck` reached a socket (delivery/session.py): check its streams again with a fresh
    copy of its user and leave what it may no longer read. An event naming an ended session
    (logout, deletion) closes only the socket opened with it."""
    if "ended_session" in event:
        if event["ended_session"] == session.session_digest:
            await session.session_ended()
        return
    user = await get_user_model()._default_manager.filter(pk=session.user.pk).afirst()
    if user is None or not user.is_active or user.get_session_auth_hash() != session.auth_hash:
        # Deactivated, deleted, or the password changed: Django logs the session out on its next
        # request; the socket goes now, and the client must log in again.
        await session.send_error("access_revoked", "Your login is no longer valid; log in again.")
        await session.close(CLOSE_UNAUTHORIZED)
        return
    session.user = user
    own = (groups.user_stream(user.pk), groups.BROADCAST_STREAM)
    streams = [event["stream"]] if event.get("stream") else list(session.cursors)
    for stream in streams:
        if stream in own or stream not in session.cursors:
            continue
        try:
            await database_sync_to_async(stream_check_readable)(user=user, stream=stream)
        except StreamDenied as exc:
            logger.info("access revoked user=%s stream=%s", user.username, stream)
            await session.leave(stream)
            await session.send_error(
                "access_revoked", f"You may no longer read {stream}: {exc.message}", stream=stream
            )


# --- what triggers it ---------------------------------------------------------------------------

# Fields of a user whose change can take a stream away: losing staff or being deactivated, and
# a new password (Django ends the user's other sessions then; their sockets end too).
_ACCESS_FIELDS = ("is_staff", "is_active", "password")


def _user_about_to_change(sender: Any, instance: Any, **kwargs: Any) -> None:
    instance._sb_access_before = None
    update_fields = kwargs.get("update_fields")
    untouched = update_fields is not None and not set(update_fields) & set(_ACCESS_FIELDS)
    if instance.pk is None or untouched:
        return  # a new user, or a save that cannot touch access (a login's last_login)
    before = sender._default_manager.filter(pk=instance.pk).values(*_ACCESS_FIELDS).first()
    instance._sb_access_before = before


def _user_changed(sender: Any, instance: Any, created: bool, **kwargs: Any) -> None:
    before = getattr(instance, "_sb_access_before", None)
    if created or before is None:
        return
    lost_a_flag = any(before[f] and not getattr(instance, f) for f in ("is_staff", "is_active"))
    if lost_a_flag or before["password"] != instance.password:
        recheck_on_commit(user_ids=[instance.pk])


def _session_deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
    """A session row deleted: logout's flush, the admin, `clearsessions`, a password change."""
    try:
        user_id = instance.get_decoded().get("_auth_user_id")
    except Exception:  # a row that no longer decodes (another SECRET_KEY): no socket has it
        return
    if user_id is not None:
        recheck_sync(user_ids=[int(user_id)], ended_session=instance.session_key)


def _logged_out(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    """Logout with a session engine that keeps no rows (cache): the delete signal never fires."""
    key = getattr(request.session, "session_key", None)
    if user is not None and key and not hasattr(request.session, "get_model_class"):
        recheck_sync(user_ids=[user.pk], ended_session=key)


def connect_signals() -> None:
    from importlib import import_module

    store = import_module(settings.SESSION_ENGINE).SessionStore
    if hasattr(store, "get_model_class"):
        post_delete.connect(
            _session_deleted, sender=store.get_model_class(), dispatch_uid="sb-session-deleted"
        )
    user_logged_out.connect(_logged_out, dispatch_uid="sb-logged-out")
    user_model = get_user_model()
    pre_save.connect(_user_about_to_change, sender=user_model, dispatch_uid="sb-access-user-pre")
    post_save.connect(_user_changed, sender=user_model, dispatch_uid="sb-access-user")
