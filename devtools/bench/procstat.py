"""CPU seconds and resident memory of processes, read from /proc (Linux only)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time `pid` has used so far, or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the command name (which may hold spaces): utime is 14th, stime 15th overall.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_bytes(pid: int) -> int | None:
    try:
        statm = Path(f"/proc/{pid}/statm").read_text().split()
    except OSError:
        return None
    return int(statm[1]) * PAGE_SIZE


@dataclass
class CpuWindow:
    """CPU seconds each named process used between `start()` and `stop()`.

    A process that dies in the window (W4 kills one) keeps the last reading taken while it was
    alive, so its share up to the kill still counts.
    """

    pids: dict[str, int]

    def start(self) -> None:
        self.first = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self.last = dict(self.first)

    def sample(self) -> None:
        for name, pid in self.pids.items():
            value = cpu_seconds(pid)
            if value is not None:
                self.last[name] = value

    def stop(self) -> dict[str, float]:
        self.sample()
        return {
            name: round((self.last[name] or 0.0) - (self.first[name] or 0.0), 3)
            for name in self.pids
            if self.first.get(name) is not None
        }
