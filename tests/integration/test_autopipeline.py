"""The broker's automatic pipeline (realtime/broker/autopipeline.py) on a real Redis: calls made
together share one connection and keep their order, and a connection Redis dropped is replaced
without the callers noticing."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest
from redis.exceptions import ResponseError

from realtime import publish
from realtime.broker import BrokerUnavailable
from realtime.broker.autopipeline import AutoPipeline
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
    monkeypatch.setattr(layer.broker, "timeout", 1)  # REDIS_TIMEOUT_SECS when it was made
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


async def test_every_error_reply_of_a_batch_is_retrieved_and_the_first_raised(
    layer: StreamChannelLayer,
) -> None:
    key = "{ap-errors}:s"
    pipeline = layer.broker.autopipeline(layer.broker.shard_of(key))
    await layer.broker.redis(key).set(key, "text")
    loop = asyncio.get_running_loop()
    unretrieved: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: unretrieved.append(context))
    try:
        with pytest.raises(ResponseError, match="WRONGTYPE"):
            await pipeline.call_many([("HGET", key, "f"), ("GET", key), ("LLEN", key)])
        gc.collect()  # a future whose exception nobody retrieved says so when it is freed
        assert unretrieved == []
        assert await pipeline.call("GET", key) == b"text"  # the connection is fine
    finally:
        loop.set_exception_handler(None)


async def test_a_caller_that_gives_up_leaves_the_replies_to_come_to_nobody(
    layer: StreamChannelLayer,
) -> None:
    pipeline = layer.broker.autopipeline(0)
    redis = layer.broker.redis(0)
    key = "{ap-gone}:s"
    await redis.set(key, "text")
    loop = asyncio.get_running_loop()
    unretrieved: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: unretrieved.append(context))
    try:
        await redis.execute_command("CLIENT", "PAUSE", "300", "ALL")
        with pytest.raises(TimeoutError):
            batch = [("HGET", key, "f"), ("INCR", "{ap-gone}:n"), ("HGET", key, "f")]
            await asyncio.wait_for(pipeline.call_many(batch), timeout=0.05)
        # Its replies (two errors) come after the pause and are dropped, none of them left
        # unretrieved; the next call gets its own reply.
        assert await asyncio.wait_for(pipeline.call("INCR", "{ap-gone}:n"), timeout=5) == 2
        assert not pipeline.waiting
        gc.collect()
        assert unretrieved == []
    finally:
        loop.set_exception_handler(None)


async def test_a_connect_whose_callers_all_gave_up_gives_its_connection_back_on_close(
    layer: StreamChannelLayer, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = layer.broker.redis(0).connection_pool
    pipeline = AutoPipeline(pool, timeout=lambda: 5.0)
    asked, let_go = asyncio.Event(), asyncio.Event()
    handed: list[Any] = []
    get_connection = pool.get_connection

    async def slow_connection(*args: Any, **kwargs: Any) -> Any:
        asked.set()
        await let_go.wait()
        handed.append(await get_connection(*args, **kwargs))
        return handed[-1]

    monkeypatch.setattr(pool, "get_connection", slow_connection)
    caller = asyncio.ensure_future(pipeline.call("PING"))
    await asyncio.wait_for(asked.wait(), timeout=5)
    caller.cancel()  # the caller gives up while the connect is under way
    closing = asyncio.ensure_future(pipeline.close())
    let_go.set()
    await asyncio.wait_for(closing, timeout=5)
    assert len(handed) == 1 and handed[0] not in pool._in_use_connections
    assert pipeline.connection is None


async def test_calls_redis_leaves_unanswered_past_the_timeout_fail_together_before_it_answers(
    layer: StreamChannelLayer,
) -> None:
    pool = layer.broker.redis(0).connection_pool
    pipeline = AutoPipeline(pool, timeout=lambda: 0.3)
    assert await pipeline.call("PING") == b"PONG"
    await layer.broker.redis(0).execute_command("CLIENT", "PAUSE", "1500", "ALL")
    loop = asyncio.get_running_loop()
    started = loop.time()
    outcomes = await asyncio.gather(
        pipeline.call_many([("PING",), ("PING",)]),
        pipeline.call("PING"),
        return_exceptions=True,
    )
    # Both failed with the connection, at its deadline: well before the pause ends.
    assert [type(outcome) for outcome in outcomes] == [TimeoutError, TimeoutError]
    assert loop.time() - started < 1.2
    assert pipeline.connection is None and not pipeline.waiting

    async def answers() -> bool:
        try:
            return bool(await pipeline.call("PING") == b"PONG")
        except TimeoutError:
            return False

    await eventually(answers, timeout=8)  # a fresh connection once Redis is back
    await pipeline.close()


async def test_a_connection_failed_by_its_deadline_leaves_the_next_one_its_own_deadlines(
    layer: StreamChannelLayer,
) -> None:
    """The reader of a connection the deadline failed takes no late reply as the next
    connection's: a second stall is timed out as the first was, never waited on for good."""
    pipeline = AutoPipeline(layer.broker.redis(0).connection_pool, timeout=lambda: 0.3)
    redis = layer.broker.redis(0)
    loop = asyncio.get_running_loop()
    for _ in range(2):
        assert await pipeline.call("PING") == b"PONG"
        await redis.execute_command("CLIENT", "PAUSE", "700", "ALL")
        started = loop.time()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(pipeline.call("PING"), timeout=5)
        assert loop.time() - started < 0.65
        assert (pipeline.written, pipeline.answered) == (0, 0)

        async def answers() -> bool:
            try:
                return bool(await pipeline.call("PING") == b"PONG")
            except TimeoutError:
                return False

        await eventually(answers, timeout=5)
        assert pipeline.answered <= pipeline.written
    await pipeline.close()


async def test_a_call_whose_deadline_passed_is_not_sent(layer: StreamChannelLayer) -> None:
    pipeline = layer.broker.autopipeline(0)
    assert await pipeline.call("PING") == b"PONG"
    key = "{ap-late}:n"
    with pytest.raises(TimeoutError):
        await pipeline.call("INCR", key, deadline=pipeline.deadline() - 10)
    assert await pipeline.call("INCR", key) == 1  # the late one never ran
