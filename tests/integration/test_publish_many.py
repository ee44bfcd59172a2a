"""publish.publish_many against a real Redis (and with SB_TEST_SHARDS=3, three): a batch's
messages are each numbered and stored as a publish of their own would be, a stream's in the
order given, across the script calls a large batch is cut into, once each with idempotency
keys."""

from __future__ import annotations

import pytest

from realtime import broker, publish
from realtime.broker.redis_broker import PUBLISH_MANY_CHUNK
from realtime.layer import StreamChannelLayer

pytestmark = pytest.mark.django_db(transaction=True)


async def test_a_batch_numbers_each_streams_messages_in_the_order_given(
    layer: StreamChannelLayer,
) -> None:
    await publish.push_to_user(user_id=501, payload="before")  # user:501 exists, at seq 1
    streams = ["user:501", "user:502", "room:many", "broadcast"]
    count = 2 * PUBLISH_MANY_CHUNK + 50  # three script calls on a shard that has them all
    messages = [(streams[n % 4], {"n": n}, None) for n in range(count)]

    results = await publish.publish_many(messages)

    assert [r.stream for r in results] == [stream for stream, _, _ in messages]
    for stream in streams:
        mine = [(r.seq, n) for n, r in enumerate(results) if r.stream == stream]
        first = 2 if stream == "user:501" else 1
        assert [seq for seq, _ in mine] == list(range(first, first + len(mine)))
        stored = await broker.current().read(stream, after=0, limit=1000)
        payloads = [frame for seq, frame in stored if seq >= first]
        for (_, n), frame in zip(mine, payloads, strict=True):
            assert f'"payload":{{"n":{n}}}' in frame
    assert len({r.id for r in results}) == count and not any(r.duplicate for r in results)


async def test_a_batch_sent_again_with_its_keys_publishes_nothing_twice(
    layer: StreamChannelLayer,
) -> None:
    messages = [(f"user:{510 + n % 3}", {"n": n}, f"token:batch#{n}") for n in range(9)]
    first = await publish.publish_many(messages)
    again = await publish.publish_many(messages)
    assert [(r.seq, r.epoch, r.id) for r in again] == [(r.seq, r.epoch, r.id) for r in first]
    assert all(r.duplicate for r in again) and not any(r.duplicate for r in first)
    for user_id in (510, 511, 512):
        stored = await broker.current().read(f"user:{user_id}", after=0, limit=100)
        assert [seq for seq, _ in stored] == [1, 2, 3]


async def test_a_batch_counts_the_sockets_each_message_reached(layer: StreamChannelLayer) -> None:
    other = StreamChannelLayer(
        hosts=[a.url for a in layer.broker.shards], prefix=layer.prefix, node="other"
    )
    channel = await other.new_channel()
    await other.group_add("user.520", channel)
    await other.memberships_written()
    results = await publish.publish_many([("user:520", 1, None), ("user:521", 2, None)])
    assert [(r.sockets, r.replicas) for r in results] == [(1, 1), (0, 0)]
    await other.flush()
