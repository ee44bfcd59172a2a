"""When a replica runs Python's full garbage collections: on a timer, not whenever it is busy.

A full collection scans every object the collector tracks; with a thousand sockets open it holds
the event loop for 10-70 ms. CPython starts one whenever enough objects survived the younger
generations, which under steady fan-out was often enough that the p99 latency of pushes was
mostly those pauses: with automatic full collections off, the bench's pushes had p99 16-22 ms
instead of 21-57 ms, and broadcasts went ~10% faster (docs/performance.md). The young
generations are still collected as usual (they are cheap); full collections run every
GC_FULL_COLLECT_SECS instead, so reference cycles that outlived them (a closed socket's
protocol, transport and consumer) are freed within that interval.
"""

from __future__ import annotations

import gc
import time

from realtime.stats import replica_stats

# A threshold CPython's generation-2 counter never reaches: no automatic full collections.
NEVER = 2**30


def take_over_full_collections() -> None:
    """Leave the young generations' thresholds as they are; stop automatic full collections."""
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, NEVER)


def collect_full() -> None:
    """One full collection, timed, for the replica's stats (/healthz)."""
    started = time.perf_counter()
    gc.collect()
    replica_stats.gc_full_collections += 1
    replica_stats.gc_full_pause_ms = round((time.perf_counter() - started) * 1000)
