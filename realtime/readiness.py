"""Whether this replica should be given new clients now: what GET /readyz answers HAProxy.

Liveness (/healthz) says the process serves; readiness says it can serve well: every Redis
shard answers, this replica's subscription to each is up (without it, its sockets would hear
nothing), and its event loop is not running late (a replica that lags would answer new clients
slowly and its sockets late). HAProxy checks /readyz: a replica that is not ready gets no new
sockets or requests, while the sockets it has keep going; when no replica is ready (Redis down
for all), HAProxy falls back to the live ones, which answer 503 themselves (haproxy.cfg).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

from realtime import broker, drain, metrics
from realtime.stats import replica_stats

# A shard that does not answer PING this fast counts as down for readiness.
READY_REDIS_TIMEOUT_SECS = 0.5


async def problems(layer: Any) -> list[str]:
    """Why this replica is not ready (empty: it is). Starts the layer's subscriptions and the
    loop-lag watcher if nothing has yet: a replica that has served no socket yet must be able to
    become ready."""
    layer.start()
    metrics.watch_loop_lag()
    reasons = ["draining (realtime/drain.py)"] if drain.is_draining() else []
    for row in await broker.current().shard_health(timeout=READY_REDIS_TIMEOUT_SECS):
        if not row["reachable"]:
            reasons.append(f"Redis shard {row['shard']} does not answer ({row['error']})")
    for shard, subscribed in enumerate(layer.shards_connected()):
        if not subscribed:
            reasons.append(f"no subscription to Redis shard {shard} (yet)")
    if replica_stats.open_connections >= settings.MAX_SOCKETS_PER_REPLICA:
        reasons.append(f"at MAX_SOCKETS_PER_REPLICA ({settings.MAX_SOCKETS_PER_REPLICA})")
    lag, most = metrics.loop_lag_secs(), settings.READY_MAX_LOOP_LAG_SECS
    if lag > most:
        reasons.append(f"event loop {lag:.2f} s late (READY_MAX_LOOP_LAG_SECS {most})")
    return reasons
