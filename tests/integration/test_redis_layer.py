"""The channel layer and the publish path against a real redis-server."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from channels.layers import channel_layers
from channels.testing import WebsocketCommunicator
from channels_redis.pubsub import RedisPubSubChannelLayer
from django.contrib.auth.models import User
from pytest_django.fixtures import Settings as SettingsWrapper

from realtime import publish
from realtime.cluster import free_port
from realtime.consumers import RealtimeConsumer


def pubsub_layers(url: str) -> dict:  # type: ignore[type-arg]
    return {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [url], "prefix": "sb"},
        }
    }


@pytest.fixture
def redis_layer(settings: SettingsWrapper, redis_url: str) -> Iterator[None]:
    settings.CHANNEL_LAYERS = pubsub_layers(redis_url)
    settings.REDIS_URL = redis_url
    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()


async def test_publish_from_one_layer_reaches_a_consumer_on_another(
    redis_layer: None, redis_url: str
) -> None:
    communicator = WebsocketCommunicator(RealtimeConsumer.as_asgi(), "/ws/")
    communicator.scope["user"] = User(pk=11, username="alice")
    assert (await communicator.connect())[0]
    assert json.loads(await communicator.receive_from(timeout=2))["type"] == "hello"
    # Another process's layer: its own connections to Redis, nothing shared in memory.
    other = RedisPubSubChannelLayer(hosts=[redis_url], prefix="sb")
    await other.group_send("user.11", {"type": "rt.deliver", "frame": '{"type":"push","n":1}'})
    assert json.loads(await communicator.receive_from(timeout=3)) == {"type": "push", "n": 1}
    await other.group_send("user.12", {"type": "rt.deliver", "frame": '{"type":"push","n":2}'})
    assert await communicator.receive_nothing(timeout=0.3)
    await communicator.disconnect()
    await other.flush()


async def test_publish_service_reaches_a_group_member_of_another_layer(
    redis_layer: None, redis_url: str
) -> None:
    listener = RedisPubSubChannelLayer(hosts=[redis_url], prefix="sb")
    channel = await listener.new_channel()
    await listener.group_add("user.5", channel)
    result = await publish.push_to_user(user_id=5, payload={"hello": "there"})
    message = await listener.receive(channel)
    assert message["type"] == "rt.deliver"
    frame = json.loads(message["frame"])
    assert frame["id"] == result.id and frame["payload"] == {"hello": "there"}
    await listener.flush()


async def test_publish_with_redis_unreachable_raises_a_clear_error(
    settings: SettingsWrapper,
) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    settings.CHANNEL_LAYERS = pubsub_layers(dead)
    settings.REDIS_URL = dead
    channel_layers.backends.clear()
    with pytest.raises(publish.RealtimeUnavailable, match="unreachable"):
        await publish.broadcast(payload=1)
    channel_layers.backends.clear()
