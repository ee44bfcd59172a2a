"""Publishing from any Django code (realtime/sending.py): sync and async, on commit, with the
caller's idempotency key; each reaches a real socket through the real layer and Redis."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading

import pytest
from asgiref.sync import sync_to_async
from channels.layers import channel_layers
from django.contrib.auth.models import User
from django.db import transaction
from django.test.utils import override_settings
from pytest_django.fixtures import Settings

from devtools.cluster import free_port
from realtime import sending
from realtime.layer import StreamChannelLayer
from realtime.publish import RealtimeUnavailable
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


async def test_sync_publishing_uses_no_event_loop_and_no_other_thread(
    layer: StreamChannelLayer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sync functions run the publish script on the caller's thread through a blocking
    client: a loop started or a thread handed the call would be a cost on every publish."""
    user = await User.objects.acreate(username="sending-sync")
    socket, _ = await open_socket(user)
    caller: list[int] = []

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the sync publish started an event loop or handed off its call")

    def from_sync_code() -> list[int]:
        caller.append(threading.get_ident())
        with monkeypatch.context() as patched:
            patched.setattr(asyncio, "new_event_loop", refuse)
            patched.setattr(asyncio, "run", refuse)
            patched.setattr(concurrent.futures.ThreadPoolExecutor, "submit", refuse)
            patched.setattr(threading.Thread, "start", refuse)
            # async_to_sync under a running loop hands the call to that loop's thread:
            patched.setattr(asyncio.BaseEventLoop, "call_soon_threadsafe", refuse)
            return [
                sending.push(user, {"n": 1}).seq,
                sending.publish(f"user:{user.pk}", {"n": 2}, idempotency_key="k").seq,
                sending.publish(f"user:{user.pk}", {"n": 2}, idempotency_key="k").seq,  # a retry
                sending.broadcast({"n": 3}).seq,
            ]

    seqs = await sync_to_async(from_sync_code, thread_sensitive=False)()
    assert seqs[:3] == [1, 2, 2]
    frames = await socket.receive_many(3)
    assert [(f["stream"], f["payload"]) for f in frames] == [
        (f"user:{user.pk}", {"n": 1}),
        (f"user:{user.pk}", {"n": 2}),
        ("broadcast", {"n": 3}),
    ]
    assert frames[2]["seq"] == seqs[3]
    assert await socket.nothing(), "the retried key published nothing"
    with pytest.raises(RuntimeError, match="event loop"):
        sending.push(user, "inside a loop it would block the loop")
    await socket.close()


async def test_sync_publishing_loads_the_script_again_after_redis_forgot_it(
    layer: StreamChannelLayer,
) -> None:
    user = await User.objects.acreate(username="sending-noscript")
    socket, _ = await open_socket(user)
    await sync_to_async(sending.push)(user, "before")
    await layer.broker.redis(f"user:{user.pk}").script_flush()
    await sync_to_async(sending.push)(user, "after")
    frames = await socket.receive_many(2)
    assert [(f["seq"], f["payload"]) for f in frames] == [(1, "before"), (2, "after")]
    await socket.close()


async def test_sync_publishing_with_redis_gone_raises_realtime_unavailable_without_address(
    settings: Settings,
) -> None:
    port = free_port()  # nobody listens there
    dead = f"redis://127.0.0.1:{port}/0"
    layers = {
        "default": {
            "BACKEND": "realtime.layer.StreamChannelLayer",
            "CONFIG": {"hosts": [dead], "prefix": "tdead"},
        }
    }
    with override_settings(CHANNEL_LAYERS=layers):
        channel_layers.backends.clear()
        try:
            with pytest.raises(RealtimeUnavailable) as caught:
                await sync_to_async(sending.broadcast)("nobody hears this")
        finally:
            channel_layers.backends.clear()
    assert "127.0.0.1" not in str(caught.value) and str(port) not in str(caught.value)
