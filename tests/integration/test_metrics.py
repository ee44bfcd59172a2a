"""GET /metrics: the replica's numbers in Prometheus' text format, moved by what really happened
(sockets, connects and refusals, publishes, deliveries by kind, replays, Redis shards), and
readable only from this host, by staff, or with METRICS_TOKEN."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser, User
from django.test import AsyncClient
from prometheus_client.parser import text_string_to_metric_families
from pytest_django.fixtures import Settings

from realtime import publish
from realtime.consumers import RealtimeConsumer
from realtime.layer import StreamChannelLayer
from tests.integration.conftest import a_user, open_socket

pytestmark = pytest.mark.django_db(transaction=True)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(client: AsyncClient | None = None, **headers: Any) -> tuple[int, Samples]:
    answer = await (client or AsyncClient()).get("/metrics", headers=headers)
    if answer.status_code != 200:
        return answer.status_code, {}
    assert answer["Content-Type"].startswith("text/plain; version=")  # the text format
    samples: Samples = {}
    for family in text_string_to_metric_families(answer.content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return 200, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_the_numbers_follow_sockets_connects_publishes_and_deliveries(
    layer: StreamChannelLayer,
) -> None:
    _, before = await scrape()
    alice, _ = await open_socket(a_user(61))
    bob, _ = await open_socket(a_user(62, "bob"))
    anonymous = WebsocketCommunicator(RealtimeConsumer.as_asgi(), "/ws/")
    anonymous.scope["user"] = AnonymousUser()
    await anonymous.connect()
    await anonymous.receive_from()
    for n in range(3):
        await publish.push_to_user(user_id=61, payload=n)
    await publish.broadcast(payload="all")
    assert len(await alice.receive_many(4)) == 4 and (await bob.receive())["payload"] == "all"
    await alice.send({"type": "ping", "id": "p"})
    assert (await alice.receive())["type"] == "pong"
    status, after = await scrape()
    assert status == 200

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("switchboard_sockets") == 2
    assert grew("switchboard_connects_total", result="accepted") == 2
    assert grew("switchboard_connects_total", result="unauthorized") == 1
    assert grew("switchboard_deliveries_total", kind="user") == 3  # alice's socket, 3 pushes
    assert grew("switchboard_deliveries_total", kind="broadcast") == 2  # both sockets
    assert grew("switchboard_publish_seconds_count") == 4
    assert grew("switchboard_delivery_lag_seconds_count") == 4  # once per message, not socket
    assert grew("switchboard_frames_in_total") >= 1
    assert value(after, "switchboard_redis_up", shard="0") == 1
    assert value(after, "switchboard_redis_subscribed", shard="0") == 1
    assert value(after, "switchboard_backlogged_sockets") == 0
    assert value(after, "process_resident_memory_bytes") > 0
    for socket in (alice, bob):
        await socket.close()
    await anonymous.disconnect()
    _, closed = await scrape()
    assert value(closed, "switchboard_sockets") == value(before, "switchboard_sockets")


async def test_a_resume_counts_as_replayed(layer: StreamChannelLayer) -> None:
    sent = [await publish.push_to_user(user_id=63, payload=n) for n in range(5)]
    _, before = await scrape()
    position = {"user:63": {"epoch": sent[0].epoch, "seq": 0}}
    socket, _ = await open_socket(a_user(63), "?resume=" + quote(json.dumps(position)))
    frames = await socket.receive_many(5)
    assert [f["payload"] for f in frames if f["type"] == "push"][-5:] == [0, 1, 2, 3, 4]
    _, after = await scrape()
    assert (
        value(after, "switchboard_replayed_total") - value(before, "switchboard_replayed_total")
        == 5
    )
    await socket.close()


async def test_only_this_host_staff_or_the_metrics_token_may_read_them(
    layer: StreamChannelLayer, settings: Settings
) -> None:
    # Through HAProxy (it always sets X-Forwarded-For), as anybody: as if there were no page.
    proxied = {"X-Forwarded-For": "203.0.113.9"}
    assert (await scrape(**proxied))[0] == 404
    settings.METRICS_TOKEN = "scrape-secret-" + "x" * 20
    assert (await scrape(**proxied, Authorization="Bearer wrong"))[0] == 404
    assert (await scrape(**proxied, Authorization=f"Bearer {settings.METRICS_TOKEN}"))[0] == 200
    settings.METRICS_TOKEN = ""
    assert (await scrape(**proxied, Authorization="Bearer "))[0] == 404  # no token: none
    user = await User.objects.acreate(username="metrics-user")
    client = AsyncClient()
    await client.aforce_login(user)
    assert (await scrape(client, **proxied))[0] == 404
    staff = await User.objects.acreate(username="metrics-staff", is_staff=True)
    await client.aforce_login(staff)
    assert (await scrape(client, **proxied))[0] == 200
