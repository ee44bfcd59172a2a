"""Per-process counters a replica reports on /healthz (and later on the cluster view).

Plain integers: Daphne runs one event loop per process, and only that loop touches them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ReplicaStats:
    open_connections: int = 0
    connections_total: int = 0
    frames_in: int = 0
    frames_out: int = 0
    errors_sent: int = 0
    frames_dropped: int = 0  # by a full per-socket queue; fetched from history afterwards
    duplicates_dropped: int = 0
    gaps_repaired: int = 0
    # The fast path's socket writes, and the frames that shared a write with an earlier one.
    socket_writes: int = 0
    frames_coalesced: int = 0
    # Frames not written because their socket was backlogged; fetched from history once drained.
    frames_deferred: int = 0
    # Full garbage collections, run on a timer (realtime/gc_policy.py), and the last one's pause.
    gc_full_collections: int = 0
    gc_full_pause_ms: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


replica_stats = ReplicaStats()
