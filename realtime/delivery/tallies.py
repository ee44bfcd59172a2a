"""The delivery ledger's counts for streams many sockets read (a room, an app's own kinds): how
many sockets each message was delivered to and how many acknowledged it, on every replica.

A user stream's ledger keeps marks (how far its one reader got: marks.py); a room has many
readers, so each replica counts, per message, the sockets it handed it to (once per message, in
the hub's fan-out) and the acks its sockets sent, and adds them to the stream's tally in Redis
(`<p>:{<stream>}:tally`, broker/keys.py) every TALLY_FLUSH_SECS, a pipeline per shard. Replays
are not counted as deliveries (the ledger says "delivered live"); an ack counts every message up
to its seq that the socket had not acknowledged, at most ACK_SPAN of them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict

from realtime import broker, streams
from realtime.broker import BrokerUnavailable

TALLY_FLUSH_SECS = 0.5
# An ack of seq N after a long silence counts at most this many messages before it: the ledger
# shows the newest LEDGER_ROWS (100), and a tally per message beyond that is never read.
ACK_SPAN = 200


def tallied(stream: str) -> bool:
    """Streams of a registered kind (rooms, a project's kinds): the core's user, broadcast and
    ops streams are not tallied (a user stream has its marks)."""
    return streams.kind_of(stream) is not None


class Tallies:
    def __init__(self) -> None:
        # (stream, epoch, seq, "d" | "a") -> count since the last flush
        self.pending: defaultdict[tuple[str, str, int, str], int] = defaultdict(int)
        self.timer: asyncio.TimerHandle | None = None

    def delivered(self, stream: str, epoch: str, seq: int, sockets: int) -> None:
        self._add((stream, epoch, seq, "d"), sockets)

    def acked(self, stream: str, epoch: str, seqs: range) -> None:
        for seq in seqs[-ACK_SPAN:]:
            self._add((stream, epoch, seq, "a"), 1)

    def _add(self, key: tuple[str, str, int, str], count: int) -> None:
        self.pending[key] += count
        if self.timer is None:
            self.timer = asyncio.get_running_loop().call_later(TALLY_FLUSH_SECS, self._flush)

    def _flush(self) -> None:
        self.timer = None
        counts, self.pending = self.pending, defaultdict(int)
        task = asyncio.ensure_future(self._write(counts))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _write(self, counts: dict[tuple[str, str, int, str], int]) -> None:
        with contextlib.suppress(BrokerUnavailable):
            await broker.current().tally_many(
                [(s, e, seq, field, n) for (s, e, seq, field), n in counts.items()]
            )


_tallies: dict[asyncio.AbstractEventLoop, Tallies] = {}


def tallies() -> Tallies:
    loop = asyncio.get_running_loop()
    found = _tallies.get(loop)
    if found is None:
        for old in [other for other in _tallies if other.is_closed()]:
            del _tallies[old]  # tests run many loops; a replica has one
        found = _tallies[loop] = Tallies()
    return found
