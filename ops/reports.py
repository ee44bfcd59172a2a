"""The ops publisher: every replica reports its stats to the staff-only `ops` stream.

About once a second (OPS_INTERVAL_SECS) each replica publishes one message through the ordinary
publish path: its open connections, frames in and out per second, Redis' answer to a PING, and
HAProxy's view of every replica (read from HAProxy's read-only stats page). The cluster view is
a page subscribed to that stream, so it shows the realtime system from inside it: a replica that
stops reporting is a replica in trouble, whatever HAProxy says.

Every replica reports HAProxy's view of all of them, not only of itself, because a replica that
is down cannot say so; the page takes the freshest view it has.

Daphne sends no ASGI lifespan events, so the task starts with the first request the replica
serves (`with_ops_publisher`); HAProxy's health check makes that happen within a second.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import logging
import time
import urllib.error
import urllib.request
from typing import Any

from django.conf import settings

from realtime import broker, drain, groups, metrics, publish
from realtime.asgi_types import ASGIApp, Receive, Scope, Send
from realtime.broker import BrokerUnavailable
from realtime.stats import replica_stats

logger = logging.getLogger(__name__)

# A stats page or Redis slower than this is reported as such, not waited for: the report
# must go out about every second even when something is stuck.
PROBE_TIMEOUT_SECS = 0.5

HaproxyStates = dict[str, dict[str, Any]]


def parse_haproxy_csv(text: str, *, backend: str = "replicas") -> HaproxyStates:
    """`show stat` CSV -> {"d1": {"status": "UP", "check": "L7OK", "sessions": 3}, ...}."""
    rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
    states: HaproxyStates = {}
    for row in rows:
        if row.get("pxname") != backend or row.get("svname") in ("FRONTEND", "BACKEND", None):
            continue
        states[row["svname"]] = {
            "status": display_status(row.get("status", "")),
            "check": row.get("check_status", ""),
            "sessions": int(row.get("scur") or 0),
        }
    return states


def parse_haproxy_addresses(text: str, *, backend: str = "replicas") -> dict[str, str]:
    """`show stat` CSV -> {"d1": "10.0.0.11:8001", ...}: where each replica listens."""
    rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
    return {
        row["svname"]: row["addr"]
        for row in rows
        if row.get("pxname") == backend
        and row.get("svname") not in ("FRONTEND", "BACKEND", None)
        and row.get("addr")
    }


def display_status(raw: str) -> str:
    """HAProxy's status words as an operator reads them: UP, draining, DOWN, maint.

    "UP 1/2" (going down) and "DOWN 1/2" (coming up) keep their direction; DRAIN means the
    server takes no new clients but keeps the ones it has."""
    if raw.startswith("DRAIN") or raw.startswith("NOLB"):
        return "draining"
    if raw.startswith("MAINT"):
        return "maint"
    return raw or "unknown"


def haproxy_states(stats_url: str, *, user: str = "", password: str = "") -> HaproxyStates:
    """HAProxy's view of the replicas, from its stats page (blocking: run it in a thread)."""
    return parse_haproxy_csv(_stats_csv(stats_url, user=user, password=password))


def _stats_csv(stats_url: str, *, user: str = "", password: str = "") -> str:
    """The stats page's CSV (blocking). With a password, the request logs in with basic auth.
    The credentials go in a header only, never in the URL, which errors and logs may show."""
    request = urllib.request.Request(stats_url.rstrip("/") + "/;csv")
    if password:
        credentials = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_unredirected_header("Authorization", f"Basic {credentials}")
    try:
        with urllib.request.urlopen(request, timeout=PROBE_TIMEOUT_SECS) as answer:
            return str(answer.read().decode())
    except urllib.error.HTTPError as refused:
        refused.close()  # it holds the connection (401: wrong credentials) until collected
        raise


def configured_haproxy_states() -> HaproxyStates:
    """haproxy_states() for this replica's HAPROXY_STATS_URL, with its credentials."""
    return haproxy_states(
        settings.HAPROXY_STATS_URL,
        user=settings.HAPROXY_STATS_USER,
        password=settings.HAPROXY_STATS_PASSWORD,
    )


def configured_haproxy_addresses() -> dict[str, str]:
    """Each replica's own address, from this replica's HAPROXY_STATS_URL (blocking)."""
    return parse_haproxy_addresses(
        _stats_csv(
            settings.HAPROXY_STATS_URL,
            user=settings.HAPROXY_STATS_USER,
            password=settings.HAPROXY_STATS_PASSWORD,
        )
    )


class RateMeter:
    """Turns the replica's ever-growing frame counters into per-second rates."""

    def __init__(self) -> None:
        self.at = time.monotonic()
        self.frames_in = replica_stats.frames_in
        self.frames_out = replica_stats.frames_out
        self.deliveries = sum(metrics.deliveries_by_kind.values())

    def sample(self) -> dict[str, float]:
        now = time.monotonic()
        elapsed = max(now - self.at, 1e-6)
        deliveries = sum(metrics.deliveries_by_kind.values())
        rates = {
            "in_per_sec": round((replica_stats.frames_in - self.frames_in) / elapsed, 1),
            "out_per_sec": round((replica_stats.frames_out - self.frames_out) / elapsed, 1),
            # The same counters /metrics exports (realtime/metrics.py), as the page shows them.
            "deliveries_per_sec": round((deliveries - self.deliveries) / elapsed, 1),
            "loop_lag_ms": round(metrics.loop_lag_secs() * 1000, 1),
            "replayed_total": replica_stats.frames_replayed,
            "gap_repairs_total": replica_stats.gaps_repaired,
            "frames_dropped_total": replica_stats.frames_dropped + replica_stats.frames_deferred,
        }
        self.at, self.frames_in, self.frames_out, self.deliveries = (
            now,
            replica_stats.frames_in,
            replica_stats.frames_out,
            deliveries,
        )
        return rates


async def redis_health() -> dict[str, Any]:
    started = time.perf_counter()
    try:
        await asyncio.wait_for(broker.current().ping(), PROBE_TIMEOUT_SECS)
    except (BrokerUnavailable, TimeoutError) as exc:
        return {"reachable": False, "error": exc.__class__.__name__, "latency_ms": None}
    return {
        "reachable": True,
        "error": None,
        "latency_ms": round((time.perf_counter() - started) * 1000, 2),
    }


async def haproxy_view() -> HaproxyStates | None:
    """HAProxy's view, or None when this replica cannot read it (not configured, or no answer)."""
    if not settings.HAPROXY_STATS_URL:
        return None
    try:
        return await asyncio.to_thread(configured_haproxy_states)
    except (OSError, ValueError) as exc:
        logger.debug("HAProxy stats unreadable at %s: %r", settings.HAPROXY_STATS_URL, exc)
        return None


async def ops_report(meter: RateMeter) -> dict[str, Any]:
    """One report: what the cluster view draws for this replica."""
    redis, haproxy = await asyncio.gather(redis_health(), haproxy_view())
    return {
        "replica": settings.REPLICA_ID,
        "at": int(time.time() * 1000),
        "connections": replica_stats.open_connections,
        **meter.sample(),
        "redis": redis,
        "haproxy": haproxy,
        # The cluster view's drain button reads it (realtime/drain.py).
        "draining": drain.is_draining(),
    }


async def publish_forever(interval_secs: float) -> None:
    meter = RateMeter()
    failing = False
    while True:
        await asyncio.sleep(interval_secs)
        try:
            report = await ops_report(meter)
            await publish.publish(stream=groups.OPS_STREAM, payload=report)
        except publish.RealtimeUnavailable as exc:
            # The view shows this replica as silent; the log says why once per outage, not
            # once a second.
            if not failing:
                logger.warning("ops reports paused replica=%s: %s", settings.REPLICA_ID, exc)
            failing = True
            continue
        except Exception:
            logger.exception("ops report failed")
            continue
        if failing:
            logger.info("ops reports resumed replica=%s", settings.REPLICA_ID)
            failing = False


_task: asyncio.Task[None] | None = None


def ensure_started() -> None:
    """Start this process's publisher on the running loop, once (again if it ever ended)."""
    global _task
    if settings.OPS_INTERVAL_SECS <= 0 or (_task is not None and not _task.done()):
        return
    _task = asyncio.get_running_loop().create_task(publish_forever(settings.OPS_INTERVAL_SECS))
    logger.info(
        "ops publisher started replica=%s every %ss",
        settings.REPLICA_ID,
        settings.OPS_INTERVAL_SECS,
    )


def with_ops_publisher(app: ASGIApp) -> ASGIApp:
    """Wrap the ASGI application so the first request of any kind starts the publisher."""

    async def application(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            ensure_started()
        await app(scope, receive, send)

    return application
