"""The broker's automatic pipeline (realtime/broker/autopipeline.py) on a real Redis: calls made
together share one connection and keep their order, and a connection Redis dropped is replaced
without the callers noticing."""

from __future__ import annotations

import asyncio

import pytest

from realtime import publish
from realtime.broker import BrokerUnavailable
from realtime.layer import StreamChannelLayer
from tests.integration.conftest import eventually

pytestmark = pytest.mark.django_db(transaction=True)


async def test_publishes_made_together_go_out_in_order_on_one_connection(
    layer: StreamChannelLayer,
) -> None:
    await publish.push_to_user(user_id=77, payload="warm")  # connected, the script loaded
    results = await asyncio.gather(
        *(publish.push_to_user(user_id=77, payload=n) for n in range(50))
    )
    # Queued in one turn of the loop, written in one go, numbered in the order they were made.
    assert [r.seq for r in results] == list(range(2, 52))
    pipeline = layer.broker.autopipeline(layer.broker.shard_of("user:77"))
    assert pipeline.connection is not None and not pipeline.waiting


async def test_a_connection_redis_dropped_is_replaced_on_the_next_call(
    layer: StreamChannelLayer,
) -> None:
    first = await publish.push_to_user(user_id=78, payload="before")
    redis = layer.broker.redis("user:78")
    # Every connection of ours is dropped, as when Redis restarts (our own client's, too).
    await redis.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "no")
    after = await publish.push_to_user(user_id=78, payload="after")
    assert after.seq == first.seq + 1


async def test_a_redis_that_answers_nothing_fails_the_call_as_unavailable(
    layer: StreamChannelLayer, monkeypatch: pytest.MonkeyPatch
) -> None:
    await publish.push_to_user(user_id=79, payload="warm")
    redis = layer.broker.redis("user:79")
    monkeypatch.setattr("django.conf.settings.REDIS_TIMEOUT_SECS", 1)
    await redis.execute_command("CLIENT", "PAUSE", "1500", "ALL")
    with pytest.raises(BrokerUnavailable):
        await publish.push_to_user(user_id=79, payload="paused")
    # Nothing is left hanging: once Redis answers again, so does the next call. The paused
    # publish was written, so Redis may still run it when the pause ends: 2 or 3.
    seqs: list[int] = []

    async def answered() -> bool:
        try:
            seqs.append((await publish.push_to_user(user_id=79, payload="back")).seq)
        except BrokerUnavailable:
            return False
        return True

    await eventually(answered, timeout=6)
    assert seqs and seqs[0] in (2, 3)
