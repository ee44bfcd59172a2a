"""Publishing from any Django code (realtime/sending.py): sync and async, on commit, with the
caller's idempotency key; each reaches a real socket through the real layer and Redis."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from django.db import transaction

from realtime import sending
from realtime.layer import StreamChannelLayer
from tests.integration.conftest import open_socket

pytestmark = pytest.mark.django_db(transaction=True)


class Rollback(Exception):
    pass


async def test_sync_and_async_calls_reach_the_socket_with_their_seq(
    layer: StreamChannelLayer,
) -> None:
    user = await User.objects.acreate(username="sending-a")
    socket, _ = await open_socket(user)
    pushed = await sync_to_async(sending.push)(user, {"n": 1})  # as a view or a task would
    frame = await socket.receive()
    assert (frame["type"], frame["payload"], frame["seq"]) == ("push", {"n": 1}, pushed.seq)
    cast = await sending.abroadcast({"n": 2})
    frame = await socket.receive()
    assert (frame["type"], frame["payload"], frame["seq"]) == ("broadcast", {"n": 2}, cast.seq)
    await socket.close()


async def test_the_callers_idempotency_key_publishes_once(layer: StreamChannelLayer) -> None:
    user = await User.objects.acreate(username="sending-b")
    socket, _ = await open_socket(user)
    first = await sending.apush(user.pk, "once", idempotency_key="order-7-shipped")
    again = await sending.apush(user.pk, "once", idempotency_key="order-7-shipped")
    assert (again.seq, again.duplicate, first.duplicate) == (first.seq, True, False)
    assert (await socket.receive())["seq"] == first.seq
    assert await socket.nothing(), "the retry published nothing"
    await socket.close()


async def test_on_commit_sends_after_a_commit_and_never_after_a_rollback(
    layer: StreamChannelLayer,
) -> None:
    user = await User.objects.acreate(username="sending-c")
    socket, _ = await open_socket(user)

    def rolled_back() -> None:
        with transaction.atomic():
            User.objects.filter(pk=user.pk).update(first_name="x")
            sending.push_on_commit(user, "rolled back")
            raise Rollback

    def committed() -> None:
        with transaction.atomic():
            User.objects.filter(pk=user.pk).update(first_name="y")
            sending.push_on_commit(user, "committed")

    with pytest.raises(Rollback):
        await sync_to_async(rolled_back)()
    await sync_to_async(committed)()
    assert (await socket.receive())["payload"] == "committed"
    assert await socket.nothing(), "what was rolled back was never sent"
    await socket.close()
