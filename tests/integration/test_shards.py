"""Streams sharded over three real redis-servers: each stream lives whole on the shard its name
hashes to, sockets on streams of every shard receive in order, and one shard down stops only its
own streams (503 for their publishes) until it is back, when they carry on."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from asgiref.sync import sync_to_async
from channels.layers import channel_layers, get_channel_layer
from django.test import AsyncClient
from pytest_django.fixtures import Settings

from devtools.cluster import ManagedProcess, free_port, wait_until
from realtime import broker, publish
from realtime.broker import BrokerUnavailable
from realtime.broker.connections import shard_addresses
from realtime.layer import StreamChannelLayer
from realtime.services import api_token_issue
from tests.conftest import start_redis_server
from tests.integration.conftest import Socket, a_user, eventually, memberships_written, open_socket

pytestmark = pytest.mark.django_db(transaction=True)

# Users whose user streams live on shard 0, 1 and 2 of three (CRC16 slot ranges: pinned below).
USER_ON_SHARD = {0: 3, 1: 1, 2: 4}


@dataclass
class Shards:
    layer: StreamChannelLayer
    urls: list[str]
    servers: list[ManagedProcess]

    def client(self, shard: int) -> aioredis.Redis:
        return aioredis.from_url(self.urls[shard])


@pytest.fixture
async def shards(tmp_path: Path, settings: Settings) -> AsyncIterator[Shards]:
    """A layer over three redis-servers of this test's own (one may be stopped)."""
    servers = [start_redis_server(tmp_path / f"shard{n}") for n in range(3)]
    urls = [url for url, _ in servers]
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "realtime.layer.StreamChannelLayer",
            "CONFIG": {"hosts": urls, "prefix": f"t{uuid.uuid4().hex[:8]}", "node": "unit"},
        }
    }
    channel_layers.backends.clear()
    layer: Any = get_channel_layer()
    try:
        yield Shards(layer, urls, [process for _, process in servers])
    finally:
        await layer.flush()
        channel_layers.backends.clear()
        for _, process in servers:
            process.stop()


async def test_each_stream_lives_whole_on_the_shard_its_name_hashes_to(shards: Shards) -> None:
    the_broker = broker.current()
    # Stable: the shard is the stream's Redis Cluster slot (CRC16) among even slot ranges, so a
    # deployment keeps its layout across versions. These are pinned on purpose.
    assert [the_broker.shard_of(f"user:{u}") for u in (3, 1, 4)] == [0, 1, 2]
    assert the_broker.shard_of("broadcast") == 2 and the_broker.shard_of("room:b") == 0
    streams = [f"user:{n}" for n in range(1, 31)]
    for stream in streams:
        await publish.publish(
            stream=stream, payload=stream, idempotency=publish.idempotency_key("t", "k")
        )
    clients = [shards.client(n) for n in range(3)]
    keys = the_broker.keys
    per_shard = [0, 0, 0]
    for stream in streams:
        home = the_broker.shard_of(stream)
        per_shard[home] += 1
        for shard, client in enumerate(clients):
            here = await client.exists(
                keys.stream_meta(stream),
                keys.stream_log(stream),
                keys.idempotency(stream, publish.idempotency_key("t", "k")),
            )
            assert here == (3 if shard == home else 0), (stream, shard)
    assert min(per_shard) >= 5, per_shard  # 30 streams spread over all three
    for client in clients:
        await client.aclose()


async def test_sockets_on_streams_of_every_shard_receive_in_order(shards: Shards) -> None:
    sockets = {shard: (await open_socket(a_user(user)))[0] for shard, user in USER_ON_SHARD.items()}
    await memberships_written(shards.layer)
    for n in range(1, 11):  # interleaved over the three shards
        for shard, user in USER_ON_SHARD.items():
            result = await publish.push_to_user(user_id=user, payload=n)
            assert (result.seq, result.sockets) == (n, 1), shard
    await publish.broadcast(payload="all")
    for shard, user in USER_ON_SHARD.items():
        frames = await sockets[shard].receive_many(11)
        assert [(f["stream"], f["seq"], f["payload"]) for f in frames[:10]] == [
            (f"user:{user}", n, n) for n in range(1, 11)
        ]
        assert (frames[10]["stream"], frames[10]["payload"]) == ("broadcast", "all")
        assert await sockets[shard].nothing()
        await sockets[shard].close()


async def test_sync_publishes_go_to_each_streams_shard_and_arrive_in_order(
    shards: Shards,
) -> None:
    sockets = {shard: (await open_socket(a_user(user)))[0] for shard, user in USER_ON_SHARD.items()}
    await memberships_written(shards.layer)

    def publish_from_sync_code() -> list[int]:
        return [
            publish.push_to_user_sync(user_id=user, payload=n).seq
            for n in range(1, 6)
            for user in USER_ON_SHARD.values()
        ]

    assert await sync_to_async(publish_from_sync_code)() == [n for n in range(1, 6) for _ in "abc"]
    for shard, user in USER_ON_SHARD.items():
        frames = await sockets[shard].receive_many(5)
        assert [(f["stream"], f["seq"]) for f in frames] == [
            (f"user:{user}", n) for n in range(1, 6)
        ]
        await sockets[shard].close()


async def test_channels_and_plain_groups_cross_layers_on_every_shard(shards: Shards) -> None:
    """Another replica's layer over the same shards: send() to its channel goes through the
    shard its process id hashes to, and a plain group through its name's shard."""
    other = StreamChannelLayer(hosts=shards.urls, prefix=shards.layer.prefix, node="other")
    channel = await other.new_channel()
    plain_groups = ["chat.a", "chat.b", "chat.c", "chat.d", "chat.e", "chat.f"]
    on = {shards.layer.broker.shard_of(g.replace(".", ":", 1)) for g in plain_groups}
    assert on == {0, 1, 2}, "the groups below cover every shard"
    for group in plain_groups:
        await other.group_add(group, channel)
    for n, group in enumerate(plain_groups):
        await shards.layer.group_send(group, {"type": "rt.note", "n": n})
        await shards.layer.send(channel, {"type": "rt.direct", "n": n})
    got = [await other.receive(channel) for _ in range(2 * len(plain_groups))]
    notes = [m["n"] for m in got if m["type"] == "rt.note"]
    directs = [m["n"] for m in got if m["type"] == "rt.direct"]
    assert sorted(notes) == directs == list(range(len(plain_groups)))
    await other.flush()


async def api_publish(stream: str, payload: Any) -> Any:
    _, secret = await sync_to_async(api_token_issue)(name=f"svc-{uuid.uuid4().hex[:6]}")
    return await AsyncClient().post(
        "/api/publish",
        json.dumps({"stream": stream, "payload": payload}),
        content_type="application/json",
        headers={"Authorization": f"Bearer {secret}"},
    )


async def test_one_shard_down_stops_only_its_streams_then_they_recover(shards: Shards) -> None:
    victim_user, witness_users = USER_ON_SHARD[0], [USER_ON_SHARD[1], USER_ON_SHARD[2]]
    victim, _ = await open_socket(a_user(victim_user))
    witnesses: list[Socket] = [(await open_socket(a_user(u)))[0] for u in witness_users]
    for user in [victim_user, *witness_users]:
        await publish.push_to_user(user_id=user, payload="before")
    for socket in [victim, *witnesses]:
        assert (await socket.receive())["payload"] == "before"

    shards.servers[0].stop()
    await eventually(_async(lambda: shards.layer.shards_connected() == [False, True, True]))
    # The other shards' streams keep delivering, in order, to their sockets.
    for n in range(1, 6):
        for user in witness_users:
            assert (await publish.push_to_user(user_id=user, payload=n)).seq == n + 1
    for socket in witnesses:
        assert [f["payload"] for f in await socket.receive_many(5)] == [1, 2, 3, 4, 5]
    # The down shard's streams refuse, clearly: the API answers 503, nothing is half sent.
    with pytest.raises(BrokerUnavailable):
        await publish.push_to_user(user_id=victim_user, payload="lost")
    answer = await api_publish(f"user:{victim_user}", "lost")
    assert answer.status_code == 503 and answer.json()["error"] == "redis_unavailable"
    assert "127.0.0.1" not in answer.content.decode()  # which Redis failed is for the log
    assert (await api_publish(f"user:{witness_users[0]}", 6)).status_code == 200
    assert (await witnesses[0].receive())["payload"] == 6

    # Back (empty: it kept nothing): the layer resubscribes, and the stream starts a new epoch.
    shards.servers[0].start()
    await eventually(_async(lambda: all(shards.layer.shards_connected())), timeout=10)
    result = await publish.push_to_user(user_id=victim_user, payload="after")
    assert result.seq == 1
    frames = []
    while not frames or frames[-1].get("payload") != "after":
        frames.append(await victim.receive())
    # Nothing silent: the lost position is announced (new epoch) before the new message.
    told = [f for f in frames if f["type"] == "resumed"]
    assert told and all(f["recovered"] is False and f["reason"] == "epoch" for f in told)
    assert frames[-1]["seq"] == 1 and frames[-1]["epoch"] == result.epoch
    for socket in witnesses:
        assert await socket.nothing()  # no resync, no error: they never noticed
    for socket in [victim, *witnesses]:
        await socket.close()


def _async(check: Any) -> Any:
    async def wrapped() -> bool:
        return bool(check())

    return wrapped


async def test_shards_can_be_sentinel_groups_found_through_the_same_sentinels(
    tmp_path: Path,
) -> None:
    """REDIS_SENTINEL_MASTER=shard0,shard1: one shard per group, every group's primary found
    through one set of sentinels."""
    primaries = [start_redis_server(tmp_path / f"primary{n}") for n in range(2)]
    sentinel_port = free_port()
    config = tmp_path / "sentinel.conf"
    lines = [f"port {sentinel_port}", "bind 127.0.0.1", f"dir {tmp_path}"]
    for n, (url, _) in enumerate(primaries):
        port = url.rsplit(":", 1)[1].split("/")[0]
        lines += [
            f"sentinel monitor shard{n} 127.0.0.1 {port} 1",
            f"sentinel down-after-milliseconds shard{n} 1000",
        ]
    config.write_text("\n".join(lines) + "\n")
    sentinel = ManagedProcess(
        name="sentinel",
        argv=["redis-server", str(config), "--sentinel"],
        env=dict(os.environ),
        log_path=tmp_path / "sentinel.log",
        port=sentinel_port,
    )
    sentinel.start()
    wait_until(partial(_sentinel_knows, sentinel_port, 2), timeout=15, what="the sentinel")
    layer = StreamChannelLayer(
        hosts=["redis:///0"],
        prefix=f"sg{uuid.uuid4().hex[:6]}",
        node="unit",
        sentinels=[f"127.0.0.1:{sentinel_port}"],
        sentinel_master="shard0, shard1",
    )
    try:
        assert [a.sentinel_master for a in layer.broker.shards] == ["shard0", "shard1"]
        streams = [f"user:{n}" for n in range(1, 21)]
        for stream in streams:
            await layer.broker.publish(
                stream=stream,
                group=stream.replace(":", ".", 1),
                body=json.dumps({"type": "message", "stream": stream, "payload": 1}),
                message_id=uuid.uuid4().hex,
                idempotency=None,
                policy=broker.StreamPolicy(max_len=10, max_age_ms=60_000, idempotency_ttl_secs=60),
            )
        for n, (url, _) in enumerate(primaries):
            client = aioredis.from_url(url)
            found = {k.decode() async for k in client.scan_iter(f"{layer.prefix}:*:meta")}
            mine = {
                layer.broker.keys.stream_meta(s) for s in streams if layer.broker.shard_of(s) == n
            }
            assert found == mine and mine, n
            await client.aclose()
    finally:
        await layer.flush()
        sentinel.stop()
        for _, process in primaries:
            process.stop()


def _sentinel_knows(port: int, masters: int) -> bool:
    try:
        return len(redis.Redis(port=port, socket_timeout=1).sentinel_masters()) == masters
    except redis.RedisError:
        return False


def test_a_shard_configuration_that_names_none_or_one_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="twice"):
        shard_addresses(["redis://a:6379/0", "redis://a:6379/0"])
    with pytest.raises(ValueError, match="twice"):
        shard_addresses(["redis:///0"], ["127.0.0.1:26379"], "s0,s0")
    with pytest.raises(ValueError, match="primary"):
        shard_addresses(["redis:///0"], ["127.0.0.1:26379"], "")
    with pytest.raises(ValueError, match="no Redis"):
        shard_addresses([])
