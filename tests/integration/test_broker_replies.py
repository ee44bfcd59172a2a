"""Reading replies a socket read at a time (realtime/broker/replies.py) on a real Redis: every
reply that has come is handed out at once and in order, error replies as values (the call's,
not the connection's), and a connection Redis closed is raised, never read as "no replies"."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from realtime.broker.replies import read_replies
from realtime.groups import group_for_stream
from realtime.layer import StreamChannelLayer
from realtime.publish import publish
from tests.integration.conftest import eventually

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
async def connection(layer: StreamChannelLayer) -> AsyncIterator[Any]:
    """A connection of the broker's pool, all the test's own."""
    pool = layer.broker.redis(0).connection_pool
    connection = await pool.get_connection()
    await connection.connect()
    yield connection
    await connection.disconnect()
    await pool.release(connection)


async def _read(connection: Any, count: int) -> list[list[Any]]:
    """Reads until `count` replies have come: the batches they came in."""
    batches: list[list[Any]] = []
    while sum(map(len, batches)) < count:
        batches.append(await asyncio.wait_for(read_replies(connection), timeout=5))
    return batches


async def test_pipelined_replies_come_in_order_with_error_replies_as_values(
    connection: Any,
) -> None:
    commands = [("SET", "{rr}:s", "text"), ("INCR", "{rr}:s"), ("GET", "{rr}:s")]
    commands += [("INCR", "{rr}:n")] * 200
    await connection.send_packed_command(connection.pack_commands(commands), check_health=False)
    replies = [reply for batch in await _read(connection, len(commands)) for reply in batch]
    assert len(replies) == len(commands)
    assert replies[0] in (b"OK", "OK", True)
    # The INCR of a string fails alone: a value in its place, not raised, and the replies
    # after it are still there, in order.
    assert isinstance(replies[1], ResponseError)
    assert replies[2] == b"text"
    assert replies[3:] == list(range(1, 201))


async def test_replies_that_came_together_are_handed_out_together(connection: Any) -> None:
    await connection.send_packed_command(
        connection.pack_commands([("PING",)] * 50), check_health=False
    )
    # Redis answers 50 PINGs in one write of ~350 bytes: once they are in, one call hands them
    # all out.
    first = await asyncio.wait_for(read_replies(connection), timeout=5)
    rest = await _read(connection, 50 - len(first)) if len(first) < 50 else []
    assert sum(map(len, [first, *rest])) == 50
    assert len(rest) <= 1  # at most one more read: not a call per reply


async def test_a_connection_redis_closed_is_raised(
    layer: StreamChannelLayer, connection: Any
) -> None:
    reading = asyncio.ensure_future(read_replies(connection))
    await layer.broker.redis(0).execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
    with pytest.raises((RedisConnectionError, OSError)):
        await asyncio.wait_for(reading, timeout=5)


async def test_a_burst_of_messages_reaches_a_subscriber_whole_and_in_order(
    layer: StreamChannelLayer,
) -> None:
    """The layer's subscription connection reads them a batch at a time: 300 publishes made
    at once arrive as 300 frames, in seq order, on a channel of the group."""
    channel = await layer.new_channel()
    await layer.group_add(group_for_stream("user:91"), channel)
    results = await asyncio.gather(
        *(publish(stream="user:91", payload={"n": n}) for n in range(300))
    )
    seqs = sorted(r.seq for r in results)
    got = [await asyncio.wait_for(layer.receive(channel), timeout=5) for _ in range(300)]
    assert [m["seq"] for m in got] == seqs
    assert [m["stream"] for m in got] == ["user:91"] * 300


async def test_a_cancelled_read_closes_its_connection(connection: Any) -> None:
    """asyncio.run (and async_to_sync) cancel what is left when their loop ends: a read
    waiting then leaves its connection closed, as redis-py's own reads do, not open with
    nobody to close it (a ResourceWarning in whichever test came next)."""
    reading = asyncio.ensure_future(read_replies(connection))
    stream = connection._reader

    async def waiting_on_the_socket() -> bool:
        return stream._waiter is not None  # (asyncio.StreamReader's: a read is waiting)

    await eventually(waiting_on_the_socket)
    assert not reading.done() and connection.is_connected
    reading.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reading
    assert not connection.is_connected


async def test_pushes_that_answer_nothing_are_never_taken_for_a_reply(connection: Any) -> None:
    """With RESP3 a server may push notices on any connection (a managed Redis' MIGRATING or
    MOVING, client-side caching's invalidations): redis-py handles them, and the reply after
    one is the next caller's, not the notice."""
    push = b">4\r\n$9\r\nMIGRATING\r\n:1\r\n:15\r\n$1\r\n1\r\n"
    assert connection._parser._hiredis_PushNotificationType is not None, "redis-py speaks RESP3"
    connection._parser._reader.feed(push + b":42\r\n" + push)
    await connection.send_packed_command(connection.pack_command("PING"), check_health=False)
    replies = [reply for batch in await _read(connection, 2) for reply in batch]
    assert replies[0] == 42
    assert replies[1] in (b"PONG", "PONG", True)
    assert len(replies) == 2


async def test_a_subscriber_gets_its_messages_and_not_other_pushes(connection: Any) -> None:
    assert connection._parser._hiredis_PushNotificationType is not None, "redis-py speaks RESP3"
    message = b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$4\r\ndata\r\n"
    notice = b">4\r\n$9\r\nMIGRATING\r\n:1\r\n:15\r\n$1\r\n1\r\n"
    connection._parser._reader.feed(notice + message + notice + message)
    replies = await asyncio.wait_for(read_replies(connection, pubsub=True), timeout=5)
    assert [list(reply) for reply in replies] == [[b"message", b"ch", b"data"]] * 2
