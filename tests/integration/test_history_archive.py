"""The history archive (realtime/archive.py): an archived kind's messages are queued by the
publish script, written to the database by the archivers (at least once, one row per message)
and replayed from there when a resume reaches past the Redis window, through the same protocol
(`resumed`, `recovered: true`, reason `archive`). Against the real Redis, layer, consumer and
database; the archivers are driven one round at a time (one test lets a socket's archiver run
on its own)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from channels.db import database_sync_to_async
from django.db import OperationalError
from pytest_django import DjangoDbBlocker
from pytest_django.fixtures import Settings

from realtime import archive, broker, publish, streams
from realtime.layer import StreamChannelLayer
from realtime.models import ArchivedMessage
from realtime.services import archived_messages_write
from realtime.stats import replica_stats
from tests.integration.conftest import Socket, a_user, open_socket
from tests.integration.test_server_api import api

pytestmark = pytest.mark.django_db(transaction=True)


def can_read(user: Any, stream: str) -> bool:
    return True


@pytest.fixture(autouse=True)
def kinds() -> Iterator[None]:
    """logbook: the last 100 in Redis, everything in the archive; memo: the last 100, no
    archive."""
    streams.register("logbook", key=r"[0-9]+", can_read=can_read, history_maxlen=100, archive=True)
    streams.register("memo", key=r"[0-9]+", can_read=can_read, history_maxlen=100)
    yield
    streams.forget("logbook")
    streams.forget("memo")


def resume_query(positions: dict[str, Any]) -> str:
    return "?resume=" + quote(json.dumps(positions))


async def rows(stream: str) -> list[int]:
    return [
        seq
        async for seq in ArchivedMessage.objects.filter(stream=stream)
        .order_by("seq")
        .values_list("seq", flat=True)
    ]


async def archive_until(archiver: archive.Archiver, stream: str, count: int) -> None:
    """Run archiver rounds until the archive holds `count` rows of `stream` (other archivers,
    such as the one a socket started, may write some of them)."""
    async with asyncio.timeout(10):
        while len(await rows(stream)) < count:
            if not await archiver.archive_once():
                await asyncio.sleep(0.02)  # the rest is in another archiver's hands


async def frames_until(socket: Socket, last: int) -> list[dict[str, Any]]:
    """Every frame the socket gets until it has had the message with seq `last` and a resumed
    frame (which may come before or after it)."""
    frames: list[dict[str, Any]] = []
    while not (
        any(frame["type"] == "resumed" for frame in frames)
        and any(frame["type"] != "resumed" and frame["seq"] == last for frame in frames)
    ):
        frames.append(await socket.receive())
    return frames


async def test_a_resume_past_the_redis_window_replays_the_rest_from_the_archive_once_in_order(
    layer: StreamChannelLayer, settings: Settings
) -> None:
    """The issue's test: Redis keeps 100, 300 are published and archived, a resume from seq 10
    gets 11.. once each, in order, told recovered: true, reason archive; a witness socket on the
    same process hears live messages meanwhile."""
    # Small replay batches (about 20 frames): the replay takes many database reads and loop turns.
    settings.REPLAY_BATCH_BYTES = 4096
    witness, _ = await open_socket(a_user(1201, "witness"))
    await witness.send({"type": "subscribe", "stream": "logbook:1"})
    assert (await witness.receive())["type"] == "subscribed"
    assert archive.running() is not None, "the first socket starts its replica's archiver"

    sent = [await publish.publish(stream="logbook:1", payload={"n": n}) for n in range(1, 301)]
    epoch = sent[0].epoch
    live = await witness.receive_many(300)
    assert [frame["seq"] for frame in live] == list(range(1, 301))
    window = await broker.current().read("logbook:1", after=0, limit=500)
    assert [seq for seq, _ in window] == list(range(201, 301)), "Redis keeps the last 100"
    await archive_until(
        archive.Archiver(consumer="test-archiver", the_broker=broker.current()), "logbook:1", 300
    )
    assert await rows("logbook:1") == list(range(1, 301))
    # Stored as sockets got them: the very frame text, seq and epoch included.
    stored = await ArchivedMessage.objects.aget(stream="logbook:1", seq=201)
    assert stored.frame == window[0][1]

    back, hello = await open_socket(
        a_user(1202, "back"), resume_query({"logbook:1": {"epoch": epoch, "seq": 10}})
    )
    assert hello["streams"]["logbook:1"] == {"epoch": epoch, "seq": 10}
    # Published while that replay runs: the witness hears them at once, the resumed socket
    # after its replay, each once.
    for n in range(301, 306):
        await publish.publish(stream="logbook:1", payload={"n": n})
    assert [frame["seq"] for frame in await witness.receive_many(5)] == list(range(301, 306))

    frames = await frames_until(back, 305)
    resumed = [frame for frame in frames if frame["type"] == "resumed"]
    assert len(resumed) == 1, resumed
    assert resumed[0]["recovered"] is True
    assert resumed[0]["reason"] == "archive"
    assert resumed[0]["epoch"] == epoch
    assert resumed[0]["replayed"] == resumed[0]["seq"] - 10 >= 290
    delivered = [frame for frame in frames if frame["type"] != "resumed"]
    assert [frame["seq"] for frame in delivered] == list(range(11, 306))
    assert [frame["payload"]["n"] for frame in delivered] == list(range(11, 306))
    assert {frame["epoch"] for frame in delivered} == {epoch}
    assert await back.nothing(), "nothing twice"
    assert await witness.nothing()

    # The API pages past the window too, in the same shape.
    answer = await api("GET", "/api/history?stream=logbook:1&after=10&limit=500")
    assert answer.status_code == 200, answer.content
    assert [message["seq"] for message in answer.json()["messages"]] == list(range(11, 306))
    page = await api("GET", "/api/history?stream=logbook:1&after=150&limit=20")
    assert [message["seq"] for message in page.json()["messages"]] == list(range(151, 171))
    for socket in (witness, back):
        await socket.close()


async def test_messages_not_archived_yet_when_redis_dropped_them_are_a_gap_said_once(
    layer: StreamChannelLayer, settings: Settings
) -> None:
    """The archive is behind (its archiver died holding 51..300): the resume gets 11..50 from
    the archive, is told recovered: false for 51..200, then gets 201..300; nothing silent."""
    settings.ARCHIVE_BATCH_MESSAGES = 50
    sent = [await publish.publish(stream="logbook:2", payload=n) for n in range(1, 301)]
    epoch = sent[0].epoch
    archiver = archive.Archiver(consumer="test-archiver", the_broker=broker.current())
    assert await archiver.archive_once() == 50
    died = await broker.current().archive_read("died-holding-them", shard=0, count=1000)
    assert [message.seq for message in died.messages] == list(range(51, 301))

    back, _ = await open_socket(
        a_user(1211), resume_query({"logbook:2": {"epoch": epoch, "seq": 10}})
    )
    frames = await frames_until(back, 300)
    kinds_and_seqs = [(frame["type"], frame["seq"]) for frame in frames]
    assert kinds_and_seqs == [
        *(("message", seq) for seq in range(11, 51)),
        ("resumed", 200),
        *(("message", seq) for seq in range(201, 301)),
    ]
    gap = frames[40]
    assert (gap["recovered"], gap["reason"], gap["epoch"]) == (False, "gap", epoch)
    assert await back.nothing(), "one answer to the resume: no recovered: true after the gap"
    await back.close()


async def test_a_kind_without_an_archive_still_says_recovered_false_past_the_window(
    layer: StreamChannelLayer,
) -> None:
    sent = [await publish.publish(stream="memo:1", payload=n) for n in range(1, 301)]
    assert not await layer.redis().exists(broker.current().keys.archive_queue())
    back, _ = await open_socket(
        a_user(1221), resume_query({"memo:1": {"epoch": sent[0].epoch, "seq": 10}})
    )
    gap = await back.receive()
    assert (gap["type"], gap["recovered"], gap["reason"], gap["seq"]) == (
        "resumed",
        False,
        "gap",
        200,
    )
    assert [frame["seq"] for frame in await back.receive_many(100)] == list(range(201, 301))
    assert await back.nothing()
    assert await rows("memo:1") == []
    await back.close()


async def test_a_message_written_twice_is_one_row_and_a_dead_archivers_messages_are_taken_over(
    layer: StreamChannelLayer, settings: Settings
) -> None:
    for n in range(1, 6):
        await publish.publish(stream="logbook:3", payload=n)
    the_broker = broker.current()
    # An archiver reads three, writes them, and dies before it marks them done.
    dead = await the_broker.archive_read("dead-archiver", shard=0, count=3)
    assert [message.seq for message in dead.messages] == [1, 2, 3]
    await database_sync_to_async(archived_messages_write)(messages=dead.messages)
    assert await rows("logbook:3") == [1, 2, 3]

    live = archive.Archiver(consumer="live-archiver", the_broker=the_broker)
    assert await live.archive_once() == 2, "the dead one's entries are not handed out again"
    assert await rows("logbook:3") == [1, 2, 3, 4, 5]
    # Once they have been pending long enough, another archiver takes them over and writes them
    # again: still one row each.
    settings.ARCHIVE_CLAIM_IDLE_SECS = 0
    assert await live.claim_once() == 3
    assert await rows("logbook:3") == [1, 2, 3, 4, 5]
    assert await ArchivedMessage.objects.filter(stream="logbook:3").acount() == 5
    assert await live.claim_once() == 0
    # Nothing waits: the queue is empty, nothing pending, and the dead consumer is forgotten.
    assert await the_broker.archive_backlog() == 0
    queue = the_broker.keys.archive_queue()
    assert (await layer.redis().xpending(queue, "archivers"))["pending"] == 0
    assert await the_broker.archive_forget_consumers(shard=0, idle_ms=0) == [
        "dead-archiver",
        "live-archiver",
    ]


async def test_an_archiver_whose_database_write_fails_keeps_its_messages_and_writes_them_later(
    layer: StreamChannelLayer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for n in range(1, 4):
        await publish.publish(stream="logbook:4", payload=n)
    archiver = archive.Archiver(consumer="flaky-archiver", the_broker=broker.current())
    assert await archiver.archive_once() == 3  # its own pending read first: none; then the new

    await publish.publish(stream="logbook:4", payload=4)

    def database_down(**_: Any) -> None:
        raise OperationalError("database is down")

    monkeypatch.setattr(archive, "archived_messages_write", database_down)
    with pytest.raises(OperationalError):
        await archiver.archive_once()
    assert await broker.current().archive_backlog() == 1, "still queued"
    monkeypatch.undo()
    assert await archiver.archive_once() == 1  # read again from its own pending entries
    assert await rows("logbook:4") == [1, 2, 3, 4]
    assert await broker.current().archive_backlog() == 0


async def test_publishing_to_an_archived_stream_never_touches_the_database(
    layer: StreamChannelLayer, django_db_blocker: DjangoDbBlocker
) -> None:
    """Off the hot path: with every database connection refused (in any thread), publishing
    works and queues the message for the archivers."""
    # pytest-django's blocker refuses a connection in every thread, the ones database calls
    # from async code run in included (CaptureQueriesContext would see this thread's only).
    with django_db_blocker.block():
        results = [await publish.publish(stream="logbook:5", payload=n) for n in range(1, 21)]
    assert [result.seq for result in results] == list(range(1, 21))
    assert await broker.current().archive_backlog() == 20
    assert await rows("logbook:5") == []


async def test_the_archive_queue_is_capped_and_publishers_warn_near_the_cap(
    layer: StreamChannelLayer,
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Nobody archives: the queue stops growing near ARCHIVE_QUEUE_MAXLEN (approximately: Redis
    trims whole nodes of 100), and publishers say so."""
    settings.ARCHIVE_QUEUE_MAXLEN = 200
    monkeypatch.setattr(publish, "_archive_queue_warned_at", float("-inf"))
    with caplog.at_level("WARNING", logger="realtime.publish"):
        for n in range(1, 501):
            await publish.publish(stream="logbook:6", payload=n)
    assert 200 <= await broker.current().archive_backlog() <= 300
    warnings = [r for r in caplog.records if "archive queue holds" in r.getMessage()]
    assert len(warnings) == 1, "once a minute at most"


async def test_entries_the_cap_dropped_after_they_were_read_are_marked_done_not_retried(
    layer: StreamChannelLayer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for n in range(1, 4):
        await publish.publish(stream="logbook:7", payload=n)
    archiver = archive.Archiver(consumer="late-archiver", the_broker=broker.current())

    def database_down(**_: Any) -> None:
        raise OperationalError("database is down")

    monkeypatch.setattr(archive, "archived_messages_write", database_down)
    with pytest.raises(OperationalError):
        await archiver.archive_once()
    monkeypatch.undo()
    queue = broker.current().keys.archive_queue()
    entries = await layer.redis().xrange(queue)
    await layer.redis().xdel(queue, entries[1][0])  # what trimming at the cap does
    assert await archiver.archive_once() == 2
    assert await rows("logbook:7") == [1, 3]
    assert (await layer.redis().xpending(queue, "archivers"))["pending"] == 0
    assert await archiver.archive_once() == 0


async def test_the_archiver_a_socket_starts_archives_on_its_own_and_retries_a_failed_write(
    layer: StreamChannelLayer, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.ARCHIVE_POLL_SECS = 0.02
    writes: list[int] = []
    real_write = archive.archived_messages_write

    def down_once(**kwargs: Any) -> None:
        writes.append(len(kwargs["messages"]))
        if len(writes) == 1:
            raise OperationalError("database is down")
        real_write(**kwargs)

    monkeypatch.setattr(archive, "archived_messages_write", down_once)
    failures = replica_stats.archive_failures
    for n in range(1, 11):
        await publish.publish(stream="logbook:8", payload=n)
    socket, _ = await open_socket(a_user(1231))
    async with asyncio.timeout(10):
        # Polls the database: the archiver runs on its own and signals nothing.
        while await rows("logbook:8") != list(range(1, 11)):  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    assert writes[:2] == [10, 10], "the same ten again, from its own pending entries"
    assert replica_stats.archive_failures == failures + 1
    assert await broker.current().archive_backlog() == 0
    await socket.close()
