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
    frames_replayed: int = 0  # sent again from history: resumes, gap repairs, catch-ups
    # The fast path's socket writes, and the frames that shared a write with an earlier one.
    socket_writes: int = 0
    frames_coalesced: int = 0
    # Frames not written because their socket was backlogged; fetched from history once drained.
    frames_deferred: int = 0
    # Full garbage collections, run on a timer (realtime/gc_policy.py), and the last one's pause.
    gc_full_collections: int = 0
    gc_full_pause_ms: int = 0
    # Client frames refused by a socket's frame rate (realtime/limits.py), and frames whose
    # handling failed with an unexpected exception (answered internal_error, socket kept).
    frames_rate_limited: int = 0
    internal_errors: int = 0
    # History read for replays and not yet written to its socket (bounded per socket by
    # REPLAY_BATCH_BYTES), now and at its highest since the replica started.
    replay_bytes_in_flight: int = 0
    replay_bytes_in_flight_max: int = 0
    # Replays slowed down by their socket's replay budget (SOCKET_REPLAY_BYTES_PER_MIN).
    replays_paced: int = 0
    # The history archive (realtime/archive.py): messages this process's archiver wrote to the
    # database, its failed rounds (Redis or the database; retried), and frames replayed from it.
    archived_messages: int = 0
    archive_failures: int = 0
    frames_from_archive: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


replica_stats = ReplicaStats()
