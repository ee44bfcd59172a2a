"""Reliable delivery under faults: replicas killed, Redis restarted, acks lost.

Every test counts what each client holds per stream against what the publishers were told, and
prints the counts (run pytest with -s to see them).
"""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from devtools.cluster import Cluster
from switchboard_client import RealtimeClient
from tests.cluster.helpers import sessions_for
from tests.conftest import manage
from tests.support.clients import WsClient, origin_of
from tests.support.harness import ConnectRateSampler, Harness, unique_prefix

pytestmark = pytest.mark.timeout(300)


async def test_fault_harness_two_replicas_killed_every_stream_exactly_once_in_order(
    healthy_cluster: Cluster,
) -> None:
    cluster = healthy_cluster
    harness = Harness(cluster, clients=100, rooms=3, prefix=unique_prefix("fault"))
    try:
        await harness.open_clients()
        targets = harness.plan(pushes=1600, broadcasts=100, room_messages=300)
        progress = harness.start_publishing(targets, via_manage=6)
        with ConnectRateSampler(cluster) as sampler:
            for victim, at in (("d1", 400), ("d2", 1100)):
                await progress.reached(at)
                await asyncio.to_thread(cluster.kill_replica, victim)
                await asyncio.to_thread(cluster.wait_server_status, victim, "DOWN", timeout=15)
                await asyncio.to_thread(cluster.start_replica, victim)
                await asyncio.to_thread(cluster.wait_server_status, victim, "UP", timeout=30)
        # Compare with the rolling restart's (tests/cluster/test_drain.py): killed, a replica's
        # clients all come back within their backoff, not in slots.
        print("replicas killed, peak connects per second:", sampler.peak_per_sec())
        await harness.publishing_done()
        await harness.wait_delivered(timeout=60)
        report = harness.verify()
        print("fault harness (2 replicas killed):", report.line())
        assert report.published == 2000
        assert report.expected_deliveries == 1600 + 100 * (100 + 300)
        assert (report.gaps, report.duplicates, report.reorders, report.mismatched) == (0, 0, 0, 0)
        assert report.received == report.expected_deliveries
        assert report.duplicates_dropped == 0
        # The kills really moved clients: the ones on d1 and d2 (two thirds) came back elsewhere.
        assert report.reconnects >= 60
    finally:
        await harness.close()


async def test_fault_harness_redis_restart_starts_new_epochs_and_delivers_all_after_it(
    healthy_cluster: Cluster,
) -> None:
    cluster = healthy_cluster
    harness = Harness(cluster, clients=60, rooms=3, prefix=unique_prefix("redis"))
    try:
        await harness.open_clients()
        targets = harness.plan(pushes=600, broadcasts=100, room_messages=300)
        progress = harness.start_publishing(targets)
        await progress.reached(400)
        await asyncio.to_thread(cluster.restart_redis)
        await harness.publishing_done()
        await harness.wait_delivered(timeout=60)
        report = harness.verify()
        print("fault harness (Redis restarted):", report.line())
        # In the live epoch: everything, once, in order.
        assert (report.gaps, report.duplicates, report.reorders, report.mismatched) == (0, 0, 0, 0)
        assert report.received == report.expected_deliveries
        # Every client was told that the broadcast and room streams it held lost their epoch.
        for client in harness.clients:
            lost = {
                e["stream"]
                for e in client.events
                if e["type"] == "resumed" and e["recovered"] is False and e["reason"] == "epoch"
            }
            assert {"broadcast", *harness.room_streams} <= lost, client.events[-5:]
        # No socket had to reconnect: the replicas resubscribed by themselves.
        assert report.reconnects == 0
    finally:
        await harness.close()


def room_with_writer_and_reader(cluster: Cluster, name: str) -> tuple[str, str, str]:
    """A new public room and two new users: (room stream, writer's session, reader's session)."""
    slug = f"{name}-{uuid.uuid4().hex[:6]}"
    manage(
        cluster,
        "shell",
        "-c",
        f"from chat.models import Room; Room.objects.create(slug='{slug}', title='{name}')",
    )
    writer_session, reader_session = sessions_for(cluster, 2, unique_prefix(name)).values()
    return f"room:{slug}", writer_session, reader_session


async def test_resent_publish_after_a_lost_ack_is_published_exactly_once(
    healthy_cluster: Cluster,
) -> None:
    cluster = healthy_cluster
    stream, writer_session, reader_session = room_with_writer_and_reader(cluster, "resend")
    slug = stream.split(":", 1)[1]
    origin = origin_of(cluster.url)
    reader = await RealtimeClient(
        cluster.ws_url,
        cookie=f"sessionid={reader_session}; SERVERID=d3",
        origin=origin,
        streams=[f"room:{slug}"],
    ).start()
    await reader.wait_for(lambda c: f"room:{slug}" in c.positions, what="the reader's subscription")

    # The first attempt: published on d1, but the socket dies before its ack is read.
    first = await WsClient.open(
        cluster.ws_url, cookie=f"sessionid={writer_session}; SERVERID=d1", origin=origin
    )
    await first.wait_type("hello")
    frame = {"type": "publish", "id": "msg-1", "stream": f"room:{slug}", "payload": {"n": 1}}
    await first.send_json(frame)
    await reader.wait_for(lambda c: len(c.received[f"room:{slug}"]) == 1, what="the first publish")
    await first.close()  # its ack (if it came) is never looked at: lost to the application

    # The client resends its unacknowledged message on a new connection, on another replica.
    writer = await RealtimeClient(
        cluster.ws_url, cookie=f"sessionid={writer_session}; SERVERID=d2", origin=origin
    ).start()
    ack = await writer.publish(f"room:{slug}", {"n": 1}, id="msg-1")
    assert (ack["seq"], ack["duplicate"]) == (1, True)
    second = await writer.publish(f"room:{slug}", {"n": 2}, id="msg-2")
    assert (second["seq"], second["duplicate"]) == (2, False)
    await reader.wait_for(lambda c: len(c.received[f"room:{slug}"]) >= 2, what="the second publish")
    assert reader.payloads(f"room:{slug}") == [{"n": 1}, {"n": 2}]
    await writer.close()
    await reader.close()


async def test_outbox_resends_across_dropped_connections_and_each_message_lands_once(
    healthy_cluster: Cluster,
) -> None:
    cluster = healthy_cluster
    stream, writer_session, reader_session = room_with_writer_and_reader(cluster, "outbox")
    origin = origin_of(cluster.url)
    reader = await RealtimeClient(
        cluster.ws_url, cookie=f"sessionid={reader_session}", origin=origin, streams=[stream]
    ).start()
    await reader.wait_for(lambda c: stream in c.positions, what="the reader's subscription")
    writer = await RealtimeClient(
        cluster.ws_url, cookie=f"sessionid={writer_session}", origin=origin
    ).start()
    sends = [asyncio.create_task(writer.publish(stream, {"n": n}, id=f"m{n}")) for n in range(60)]
    for _ in range(3):  # drop the connection while sends and acks are in flight
        await writer.drop()
        await writer.wait_connected(timeout=15)
    acks = await asyncio.gather(*sends)
    assert sorted(a["seq"] for a in acks) == list(range(1, 61))
    await reader.wait_for(lambda c: len(c.received[stream]) >= 60, what="60 messages")
    assert sorted(p["n"] for p in reader.payloads(stream)) == list(range(60))
    assert [f["seq"] for f in reader.received[stream]] == list(range(1, 61))
    print("outbox:", json.dumps({"resent": writer.stats.resent, "connects": writer.stats.connects}))
    assert writer.stats.connects == 4
    await writer.close()
    await reader.close()
