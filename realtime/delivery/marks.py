"""The delivery ledger's `delivered` marks, written per process in batches.

A socket notes how far it has delivered a user stream; every DELIVERED_MARK_SECS the streams
that moved are written together, one script call (per shard) for each MARKS_PER_CALL, rather
than a call per socket and stream (which, under a push storm, cost as many round trips as the
pushes).
"""

from __future__ import annotations

import asyncio
import contextlib

from realtime import broker
from realtime.broker import BrokerUnavailable

DELIVERED_MARK_SECS = 0.5
MARKS_PER_CALL = 100


class DeliveredMarks:
    def __init__(self) -> None:
        self.pending: dict[str, tuple[str, int]] = {}  # stream -> (epoch, seq)
        self.timer: asyncio.TimerHandle | None = None

    def note(self, stream: str, epoch: str, seq: int) -> None:
        noted = self.pending.get(stream)
        if noted is None or noted[0] != epoch or seq > noted[1]:
            self.pending[stream] = (epoch, seq)
        if self.timer is None:
            self.timer = asyncio.get_running_loop().call_later(DELIVERED_MARK_SECS, self._flush)

    def _flush(self) -> None:
        self.timer = None
        marks, self.pending = self.pending, {}
        task = asyncio.ensure_future(self._write(list(marks.items())))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _write(self, marks: list[tuple[str, tuple[str, int]]]) -> None:
        for start in range(0, len(marks), MARKS_PER_CALL):
            batch = marks[start : start + MARKS_PER_CALL]
            with contextlib.suppress(BrokerUnavailable):
                await broker.current().mark_many(
                    [(s, "delivered", epoch, seq) for s, (epoch, seq) in batch]
                )


_delivered_marks: dict[asyncio.AbstractEventLoop, DeliveredMarks] = {}


def delivered_marks() -> DeliveredMarks:
    loop = asyncio.get_running_loop()
    marks = _delivered_marks.get(loop)
    if marks is None:
        # One loop per process in production; tests run many, so closed ones are dropped.
        for old in [other for other in _delivered_marks if other.is_closed()]:
            del _delivered_marks[old]
        marks = _delivered_marks[loop] = DeliveredMarks()
    return marks
