"""Each replica's numbers in Prometheus' text format, on GET /metrics (views.metrics).

The hot paths keep counting in plain integers (realtime/stats.py: one event loop per process
touches them, no lock), and a collector reads them when Prometheus scrapes: a prometheus-client
Counter takes a lock on every inc(), which would cost each delivery to each socket. The two
histograms are observed once per publish and once per message a replica fans out (not per
socket), into plain counts too (LoopHistogram). Gauges that need a question
(is each Redis shard answering, how many sockets are held back) are asked by the view just
before it renders. Process metrics (CPU, memory, open files)
and Python's GC come from prometheus-client's own collectors.

  switchboard_sockets                       open sockets (WebSocket and SSE)
  switchboard_connects_total{result}        "accepted", or the code a refusal was sent with
  switchboard_frames_in_total / _out_total  client frames read / frames written to sockets
  switchboard_deliveries_total{kind}        stream frames handed to this replica's sockets, by
                                            the stream's kind (user, broadcast, room, …)
  switchboard_publish_seconds               publishes from this process, Redis round trip
  switchboard_delivery_lag_seconds          a message's sent_at to its fan-out on this replica
  switchboard_replayed_total                frames sent again from history (resume, gap, lag)
  switchboard_gap_repairs_total             gaps seen in a stream and repaired from history
  switchboard_backlogged_sockets            sockets whose client reads too slowly right now
  switchboard_frames_dropped_total          frames a full queue dropped (fetched again later)
  switchboard_frames_deferred_total         frames not written to a backlogged socket (ditto)
  switchboard_redis_up{shard}               1 if the shard answered PING within a second
  switchboard_redis_subscribed{shard}       1 if this replica's subscription to it is up
  switchboard_event_loop_lag_seconds        the event loop's worst lateness over ~5 s
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import math
import re
import threading
import time
from collections import defaultdict, deque
from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from realtime.stats import replica_stats

__all__ = ["CONTENT_TYPE_LATEST", "render"]

# How often the loop-lag watcher wakes, and how many of its samples the gauge covers (~5 s).
LAG_INTERVAL_SECS = 0.5
LAG_SAMPLES = 10

REGISTRY = CollectorRegistry(auto_describe=True)
for _collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
    REGISTRY.register(_collector)


class LoopHistogram:
    """A histogram read by the collector when Prometheus scrapes.

    prometheus-client's Histogram takes a lock for each of its two values (the bucket and the
    sum), through a Python object each: 1.0 µs an observation against 0.5 µs here (one lock
    around a bisect into plain counts), twice per pushed message (its publish and its fan-out;
    docs/performance.md, the eighth round). The lock is kept so that sync publishers' threads
    and the event loop never race on a count, whatever the interpreter's GIL does.
    """

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...]) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = (*buckets, math.inf)
        self.counts = [0] * len(self.bounds)
        self.sum = 0.0
        self.lock = threading.Lock()

    def observe(self, value: float) -> None:
        # A value equal to a bound is counted in that bound's bucket (Prometheus' "le").
        index = bisect.bisect_left(self.bounds, value)
        with self.lock:
            self.counts[index] += 1
            self.sum += value

    def metric(self) -> HistogramMetricFamily:
        with self.lock:  # a consistent snapshot
            counts, total = list(self.counts), self.sum
        return HistogramMetricFamily(
            self.name,
            self.documentation,
            buckets=[
                (floatToGoString(bound), count)
                for bound, count in zip(self.bounds, itertools.accumulate(counts), strict=True)
            ],
            sum_value=total,
        )


PUBLISH_SECONDS = LoopHistogram(
    "switchboard_publish_seconds",
    "Publishes from this process: the publish script's round trip to Redis.",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
DELIVERY_LAG_SECONDS = LoopHistogram(
    "switchboard_delivery_lag_seconds",
    "From a message's sent_at (its publisher's clock) to its fan-out to this replica's sockets.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)

# Plain counters, bumped on the event loop (no lock), read by the collector.
deliveries_by_kind: defaultdict[str, int] = defaultdict(int)
connect_results: defaultdict[str, int] = defaultdict(int)


_SENT_AT = re.compile(r"\d+")


def fanned_out(stream: str, sockets: int, frame: str) -> None:
    """One message handed to `sockets` local sockets (the hub calls this once per message)."""
    deliveries_by_kind[stream.partition(":")[0]] += sockets
    # sent_at is the envelope's last number field (protocol.envelope puts the payload before
    # it), so a search from the end finds it in a few characters, without parsing the JSON.
    at = frame.rfind('"sent_at":')
    if at < 0:
        return
    digits = _SENT_AT.match(frame, at + 10)  # in C: a loop over the digits here was not cheap
    if digits is not None:
        DELIVERY_LAG_SECONDS.observe(max(0.0, time.time() - int(digits.group()) / 1000))


# --- the event loop's lateness -----------------------------------------------------------------

_lag_samples: deque[float] = deque(maxlen=LAG_SAMPLES)
_lag_watchers: dict[asyncio.AbstractEventLoop, asyncio.Task[None]] = {}


def watch_loop_lag() -> None:
    """Measure this event loop's lateness from now on (once per loop; cheap to call again)."""
    loop = asyncio.get_running_loop()
    task = _lag_watchers.get(loop)
    if task is None or task.done():
        for other in [other for other in _lag_watchers if other.is_closed()]:
            del _lag_watchers[other]  # tests run many loops; a replica has one
        _lag_watchers[loop] = loop.create_task(_watch_lag(), name="loop-lag")


async def _watch_lag() -> None:
    while True:
        expected = time.perf_counter() + LAG_INTERVAL_SECS
        await asyncio.sleep(LAG_INTERVAL_SECS)
        _lag_samples.append(max(0.0, time.perf_counter() - expected))


def loop_lag_secs() -> float:
    """The worst lateness among the last samples (0 before the first)."""
    return max(_lag_samples, default=0.0)


# --- rendering ------------------------------------------------------------------------------


class _Live:
    """What the view learns at scrape time, handed to the collector for this one render."""

    shards_up: list[bool] = []
    shards_subscribed: list[bool] = []
    backlogged_sockets: int = 0


class _SwitchboardCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        stats = replica_stats
        yield PUBLISH_SECONDS.metric()
        yield DELIVERY_LAG_SECONDS.metric()
        yield _gauge("switchboard_sockets", "Open sockets.", stats.open_connections)
        connects = CounterMetricFamily(
            "switchboard_connects",
            "Socket connects, by result: accepted, or the refusal's code.",
            labels=["result"],
        )
        for result, count in sorted(
            {"accepted": stats.connections_total, **connect_results}.items()
        ):
            connects.add_metric([result], count)
        yield connects
        yield _counter("switchboard_frames_in", "Client frames read.", stats.frames_in)
        yield _counter("switchboard_frames_out", "Frames written to sockets.", stats.frames_out)
        deliveries = CounterMetricFamily(
            "switchboard_deliveries",
            "Stream frames handed to this replica's sockets, by stream kind.",
            labels=["kind"],
        )
        for kind, count in sorted(deliveries_by_kind.items()):
            deliveries.add_metric([kind], count)
        yield deliveries
        yield _counter(
            "switchboard_replayed", "Frames sent again from history.", stats.frames_replayed
        )
        yield _counter(
            "switchboard_gap_repairs", "Stream gaps repaired from history.", stats.gaps_repaired
        )
        yield _counter(
            "switchboard_frames_dropped",
            "Frames a full per-socket queue dropped (fetched from history afterwards).",
            stats.frames_dropped,
        )
        yield _counter(
            "switchboard_frames_deferred",
            "Frames not written to a backlogged socket (fetched from history once it drains).",
            stats.frames_deferred,
        )
        yield _gauge(
            "switchboard_backlogged_sockets",
            "Sockets whose client reads too slowly right now.",
            _Live.backlogged_sockets,
        )
        up = GaugeMetricFamily(
            "switchboard_redis_up", "1 if the Redis shard answers.", labels=["shard"]
        )
        for shard, answered in enumerate(_Live.shards_up):
            up.add_metric([str(shard)], 1.0 if answered else 0.0)
        yield up
        subscribed = GaugeMetricFamily(
            "switchboard_redis_subscribed",
            "1 if this replica's subscription connection to the shard is up.",
            labels=["shard"],
        )
        for shard, live in enumerate(_Live.shards_subscribed):
            subscribed.add_metric([str(shard)], 1.0 if live else 0.0)
        yield subscribed
        yield _gauge(
            "switchboard_event_loop_lag_seconds",
            "The event loop's worst lateness over the last ~5 s.",
            loop_lag_secs(),
        )
        yield _counter("switchboard_errors_sent", "Error frames sent.", stats.errors_sent)
        yield _counter(
            "switchboard_frames_rate_limited",
            "Client frames refused by a socket's rate limit.",
            stats.frames_rate_limited,
        )
        yield _counter(
            "switchboard_internal_errors",
            "Client frames whose handling failed unexpectedly.",
            stats.internal_errors,
        )
        yield _counter(
            "switchboard_archived_messages",
            "Messages this replica's archiver wrote to the database.",
            stats.archived_messages,
        )


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


REGISTRY.register(_SwitchboardCollector())


def render(*, shards_up: list[bool], shards_subscribed: list[bool], backlogged: int) -> bytes:
    """The text exposition, with what the caller asked just now."""
    _Live.shards_up, _Live.shards_subscribed = shards_up, shards_subscribed
    _Live.backlogged_sockets = backlogged
    return generate_latest(REGISTRY)


def backlogged_sockets(sinks: Any) -> int:
    """How many of a hub's sessions have a backlogged writer now."""
    count = 0
    for sink in sinks:
        writer = getattr(sink, "writer", None)
        if writer is not None and writer.backlogged():
            count += 1
    return count
