"""The broker against a real Redis: the frame its Lua script builds is the one frames.py decodes,
scripts come back after Redis forgets them, and Redis trouble is one error."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from devtools.cluster import free_port
from realtime import broker, protocol, publish
from realtime.broker import BrokerUnavailable, RedisBroker, StreamPolicy, frames, scripts
from realtime.layer import StreamChannelLayer

pytestmark = pytest.mark.django_db(transaction=True)

POLICY = StreamPolicy(max_len=100, max_age_ms=60_000, idempotency_ttl_secs=60)


async def test_the_publish_scripts_frame_is_what_the_decoder_and_clients_read(
    layer: StreamChannelLayer,
) -> None:
    the_broker = broker.current()
    envelope = protocol.envelope(
        kind="message",
        stream="room:codec",
        message_id="m1",
        payload={"text": 'hé \u2028 "q"'},
        origin="unit",
    )
    body = protocol.encode(envelope)
    pubsub = the_broker.redis().pubsub()
    await pubsub.subscribe(the_broker.keys.group_channel("room.codec"))
    try:
        appended = await the_broker.publish(
            stream="room:codec",
            group="room.codec",
            body=body,
            message_id="m1",
            idempotency=None,
            policy=POLICY,
        )
        async with asyncio.timeout(5):
            while (
                message := await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
            ) is None:
                pass
    finally:
        await pubsub.aclose()
    data = message["data"]
    assert frames.is_frame_message(data)
    stream, seq, epoch, frame = frames.decode_message(data)
    assert (stream, seq, epoch) == ("room:codec", appended.seq, appended.epoch)
    # What Lua built is exactly what the Python encoder would, and standard JSON.
    assert frame == frames.with_position(body, seq=seq, epoch=epoch)
    assert data == frames.encode_message(stream, seq, epoch, frame)
    parsed = protocol.loads(frame)
    assert parsed == {"seq": seq, "epoch": epoch, **envelope}
    assert next(iter(parsed)) == "seq"  # seq first: clients and the bench read it cheaply
    # The history entry is the same frame.
    assert await the_broker.read("room:codec", after=0) == [(seq, frame)]
    assert json.loads(frame)["payload"] == {"text": 'hé \u2028 "q"'}


async def test_a_stream_s_keys_share_one_hash_tag(layer: StreamChannelLayer) -> None:
    keys = broker.current().keys
    for stream in ("room:lobby", "user:42", "broadcast"):
        tagged = {keys.stream_meta(stream), keys.stream_log(stream)}
        assert {key.split("{", 1)[1].split("}", 1)[0] for key in tagged} == {stream}


async def test_scripts_are_loaded_again_after_redis_forgets_them(layer: StreamChannelLayer) -> None:
    the_broker = broker.current()
    await the_broker.publish(
        stream="room:flushed",
        group="room.flushed",
        body='{"type":"message"}',
        message_id="a",
        idempotency=None,
        policy=POLICY,
    )
    await the_broker.redis().script_flush()
    appended = await the_broker.publish(
        stream="room:flushed",
        group="room.flushed",
        body='{"type":"message"}',
        message_id="b",
        idempotency=None,
        policy=POLICY,
    )
    assert appended.seq == 2
    assert await the_broker.redis().script_exists(*(s.sha for s in scripts.ALL)) == [True] * len(
        scripts.ALL
    )


async def test_redis_trouble_is_one_error_type() -> None:
    dead = RedisBroker(f"redis://127.0.0.1:{free_port()}/0", prefix=f"t{uuid.uuid4().hex[:6]}")
    try:
        for call in (
            dead.ping(),
            dead.heads(["room:x"]),
            dead.read("room:x", after=0),
            dead.hit("k", window_ms=1000),
            dead.publish(
                stream="room:x",
                group="room.x",
                body="{}",
                message_id="m",
                idempotency=None,
                policy=POLICY,
            ),
        ):
            with pytest.raises(BrokerUnavailable):
                await call
    finally:
        await dead.close()


async def test_marks_in_one_call_each_land_only_in_their_own_epoch_and_never_go_down(
    layer: StreamChannelLayer,
) -> None:
    the_broker = broker.current()
    epochs = {}
    for user_id in (801, 802, 803):
        for n in range(3):
            epochs[user_id] = (await publish.push_to_user(user_id=user_id, payload=n)).epoch
    await the_broker.mark_many([("user:801", "acked", epochs[801], 3)])
    await the_broker.mark_many(
        [
            ("user:801", "delivered", epochs[801], 2),
            ("user:802", "delivered", "an-epoch-redis-lost", 3),  # must not land
            ("user:803", "delivered", epochs[803], 3),
            ("user:801", "acked", epochs[801], 1),  # lower than the mark: never lowers it
        ]
    )
    marks = {
        user_id: (ledger["delivered"], ledger["acked"])
        for user_id in (801, 802, 803)
        if (ledger := await the_broker.ledger(f"user:{user_id}", count=1))
    }
    assert marks == {801: (2, 3), 802: (0, 0), 803: (3, 0)}
