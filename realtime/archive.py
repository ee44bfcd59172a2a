"""The history archive: the messages of archived streams (kinds registered with archive=True,
the chat's rooms) written to the database, after the publish and off its path.

Writing. The publish script queues such a message (`<prefix>:archive:queue` on the stream's
shard, broker/keys.py) in the same step as its history entry, so nothing is published without
being queued, and the publish never waits for the database. Each replica runs one archiver (per
event loop), started by its first socket (consumers.py). It reads the queue in the consumer
group `archivers`, so each entry goes to one replica, writes a batch in one INSERT through
database_sync_to_async (`services.archived_messages_write`) and then marks the entries done
(XACK and XDEL: the queue holds only what waits). At least once: an archiver that dies between
its write and the XACK, or whose database hangs, leaves its entries pending, and another takes
them over after ARCHIVE_CLAIM_IDLE_SECS (XAUTOCLAIM); a message written twice is still one row
(unique stream, epoch, seq). Redis unreachable (BrokerUnavailable) or a database error: logged,
retried with backoff; unwritten entries stay pending and are read again. With several Redis
shards the archiver reads each shard's queue in turn, and a shard that is down is retried with
backoff of its own while the others' queues keep moving.

Reading. A replay that reaches past the Redis window (delivery/session.py) and
GET /api/history read the rows (`selectors.archived_messages_read`) and send them as stored.
A message not archived yet when Redis dropped it (the archivers lag, or the queue's cap
dropped it) is a gap like any other: `recovered: false`, never silence.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

from channels.db import database_sync_to_async
from django.conf import settings
from django.db import DatabaseError

from realtime import broker, streams
from realtime.broker import BrokerUnavailable, QueuedBatch, RedisBroker
from realtime.services import archived_messages_write
from realtime.stats import replica_stats

logger = logging.getLogger(__name__)

# After a failed round the archiver waits ARCHIVE_POLL_SECS, doubled per failure up to this.
RETRY_CAP_SECS = 30.0
# Consumers of the group idle this long with nothing pending are forgotten: they were processes
# that ended (a restart names a new consumer), and the group's list would only grow.
FORGET_CONSUMERS_AFTER_SECS = 3600.0


class _BrokerClosed(Exception):
    """The broker this archiver was started with closed its connections for this loop."""


def consumer_name() -> str:
    """This process's consumer in the group: its replica and process id, so two processes of one
    replica (or a restart) never share pending entries by accident."""
    return f"{settings.REPLICA_ID}-{os.getpid()}"


class Archiver:
    """Moves the archive queue into the database for one event loop. `archive_once` and
    `claim_once` are single rounds (tests drive them); `run` repeats them until the loop's
    broker is closed."""

    def __init__(self, *, consumer: str, the_broker: RedisBroker) -> None:
        self.consumer = consumer
        self.broker = the_broker
        the_broker.redis()  # this loop's client, made now if nothing else has yet (_live)
        shards = range(the_broker.shard_count)
        # Read this consumer's own unwritten entries before new ones: at start (a restart that
        # kept its name, as a container's fixed pid does) and after a failed write; per shard.
        self.pending = set(shards)
        self.next_claim_at = dict.fromkeys(shards, 0.0)
        self.failures = dict.fromkeys(shards, 0)
        self.retry_at = dict.fromkeys(shards, 0.0)
        self.task: asyncio.Task[None] | None = None

    async def archive_once(self, shard: int | None = None) -> int:
        """Write one batch of a shard's queue (None: of each shard's in turn) to the database:
        this consumer's unwritten entries first, then new ones. How many messages were
        written."""
        if shard is None:
            return sum([await self.archive_once(i) for i in range(self.broker.shard_count)])
        count = settings.ARCHIVE_BATCH_MESSAGES
        pending = shard in self.pending
        batch = await self._live().archive_read(
            self.consumer, shard=shard, count=count, pending=pending
        )
        if pending and not batch.entry_ids:
            self.pending.discard(shard)
            batch = await self._live().archive_read(self.consumer, shard=shard, count=count)
        return await self._write(batch, shard)

    async def claim_once(self, shard: int | None = None) -> int:
        """Take over and write what other consumers read and left unwritten for
        ARCHIVE_CLAIM_IDLE_SECS (dead processes, hung databases), on one shard (None: each).
        How many messages."""
        if shard is None:
            return sum([await self.claim_once(i) for i in range(self.broker.shard_count)])
        idle_ms = int(settings.ARCHIVE_CLAIM_IDLE_SECS * 1000)
        written, start = 0, "0-0"
        while True:
            start, batch = await self._live().archive_claim(
                self.consumer,
                shard=shard,
                min_idle_ms=idle_ms,
                start=start,
                count=settings.ARCHIVE_BATCH_MESSAGES,
            )
            if batch.messages:
                logger.info(
                    "archiver took over %d unwritten message(s) consumer=%s replica=%s",
                    len(batch.messages),
                    self.consumer,
                    settings.REPLICA_ID,
                )
            written += await self._write(batch, shard)
            if start == "0-0":
                return written

    async def _write(self, batch: QueuedBatch, shard: int) -> int:
        if not batch.entry_ids:
            return 0
        if batch.messages:
            try:
                await database_sync_to_async(archived_messages_write)(messages=batch.messages)
            except BaseException:
                self.pending.add(shard)  # still pending in Redis: read them again next round
                raise
        await self._live().archive_done(batch.entry_ids, shard=shard)
        replica_stats.archived_messages += len(batch.messages)
        return len(batch.messages)

    def broker_open(self) -> bool:
        """Whether the broker this archiver was started with is still the one in use, with its
        connections for this loop (a layer replaced without a flush: tests)."""
        try:
            current = broker.current()
        except RuntimeError:  # the layer in settings has no broker any more
            return False
        return current is self.broker and self.broker.has_client()

    def _live(self) -> RedisBroker:
        """The broker, checked right before each call (each takes its client before its first
        await): a closed one would otherwise open new connections nobody closes."""
        if not self.broker_open():
            raise _BrokerClosed
        return self.broker

    async def run(self) -> None:
        logger.info("archiver started consumer=%s replica=%s", self.consumer, settings.REPLICA_ID)
        try:
            while self.broker_open():
                busy = False
                for shard in range(self.broker.shard_count):
                    if time.monotonic() >= self.retry_at[shard]:
                        written = await self._round(shard)
                        busy = busy or written >= settings.ARCHIVE_BATCH_MESSAGES
                if not busy:
                    # Caught up (or failing: each failing shard waits for its retry_at).
                    await asyncio.sleep(settings.ARCHIVE_POLL_SECS)
        except _BrokerClosed:
            pass
        logger.info("archiver stopped consumer=%s", self.consumer)

    async def _round(self, shard: int) -> int:
        """One round on one shard's queue: claims now and then, then a batch. How many messages
        it wrote; a failure is logged and puts the shard's next round off, doubling per failure
        in a row, up to RETRY_CAP_SECS."""
        written = 0
        try:
            if time.monotonic() >= self.next_claim_at[shard]:
                self.next_claim_at[shard] = time.monotonic() + settings.ARCHIVE_CLAIM_IDLE_SECS / 2
                written += await self.claim_once(shard)
                await self._live().archive_forget_consumers(
                    shard=shard, idle_ms=int(FORGET_CONSUMERS_AFTER_SECS * 1000)
                )
            written += await self.archive_once(shard)
            self.failures[shard] = 0
            return written
        except BrokerUnavailable as exc:
            what, trace = "Redis unavailable", False
            error: BaseException = exc
        except DatabaseError as exc:
            what, trace, error = "database error", False, exc
        except _BrokerClosed:
            raise
        except Exception as exc:  # never let the archiver die: the queue would only grow
            what, trace, error = "unexpected error", True, exc
        failures = self.failures[shard] = self.failures[shard] + 1
        self._failed(what, error, failures, trace=trace)
        delay = min(RETRY_CAP_SECS, settings.ARCHIVE_POLL_SECS * 2 ** min(failures, 10))
        self.retry_at[shard] = time.monotonic() + delay
        return written

    def _failed(self, what: str, exc: BaseException, failures: int, *, trace: bool = False) -> None:
        replica_stats.archive_failures += 1
        # Loud on the first failure and every tenth: a long outage logs, it does not flood.
        log = logger.warning if failures == 1 or failures % 10 == 0 else logger.debug
        log(
            "archiver round failed (%s, %d in a row; its messages stay queued and are retried): "
            "%r consumer=%s replica=%s",
            what,
            failures,
            exc,
            self.consumer,
            settings.REPLICA_ID,
            exc_info=trace,
        )


_archivers: dict[asyncio.AbstractEventLoop, Archiver] = {}


def start() -> None:
    """Run this event loop's archiver, if a stream kind keeps an archive and it does not run
    yet. Called for every socket (cheap after the first): a replica archives once it serves."""
    loop = asyncio.get_running_loop()
    running = _archivers.get(loop)
    if running is not None and running.task is not None and not running.task.done():
        return
    if not streams.archived_kinds():
        return
    for old in [other for other in _archivers if other.is_closed()]:
        del _archivers[old]  # tests run many loops; production has one per process
    archiver = _archivers[loop] = Archiver(consumer=consumer_name(), the_broker=broker.current())
    # The broker's task: its close() (a layer's flush) ends the archiver before its connections.
    archiver.task = archiver.broker.background(archiver.run(), name="archiver")


def running() -> Archiver | None:
    """This event loop's archiver, if one runs (tests, /healthz)."""
    archiver = _archivers.get(asyncio.get_running_loop())
    if archiver is None or archiver.task is None or archiver.task.done():
        return None
    return archiver
