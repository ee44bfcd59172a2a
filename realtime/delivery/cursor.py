"""Where a socket is in one stream, and what to do with the next frame of it: a pure rule.

Within an epoch, frames are numbered 1, 2, 3… without holes (realtime/broker/lua/publish.lua).
So for a frame `seq` of a stream the socket stands at `last`:
  seq == last + 1  deliver it
  seq <= last      a duplicate (a replay overlapped the live frame): drop it
  seq >  last + 1  a gap: something was dropped on the way; repair it from history first
and a frame of another epoch means Redis lost the stream: start again from 0 in the new epoch
(telling the client it lost messages if it had any).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Decision(enum.Enum):
    DELIVER = "deliver"
    DUPLICATE = "duplicate"
    GAP = "gap"


@dataclass(slots=True)
class Cursor:
    epoch: str | None
    last: int

    def is_next(self, seq: int, epoch: str) -> bool:
        """The common case, checked first on every frame: the very next one, same epoch. Or the
        stream's very first frame, for a cursor placed while the stream had none (no epoch, at
        0): nothing to give up and nothing to tell, as `new_epoch` then `decide` would find. A
        user's first push since the socket opened is one, and took the slow path before."""
        if epoch == self.epoch:
            return seq == self.last + 1
        return seq == 1 and self.epoch is None and self.last == 0

    def new_epoch(self, epoch: str | None) -> bool:
        """Move to `epoch` (from 0) if it is not this cursor's; True when messages were lost
        by that (the cursor had a position the client now has to give up)."""
        if epoch == self.epoch:
            return False
        return self.restart(epoch)

    def restart(self, epoch: str | None) -> bool:
        """Start over at 0 in `epoch`; True when the cursor had a position to give up."""
        lost = self.epoch is not None or self.last > 0
        self.epoch, self.last = epoch, 0
        return lost

    def decide(self, seq: int) -> Decision:
        """Within the cursor's epoch: what a frame numbered `seq` is."""
        if seq <= self.last:
            return Decision.DUPLICATE
        if seq > self.last + 1:
            return Decision.GAP
        return Decision.DELIVER

    def move_forward(self, seq: int) -> None:
        """A client that says it has more than the cursor (a re-subscribe): never backwards."""
        self.last = max(self.last, seq)
