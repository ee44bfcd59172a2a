"""realtime/metrics.py's LoopHistogram: what Prometheus scrapes of it is what prometheus-client's
own Histogram shows for the same observations (the series, the buckets a value on a bound
falls in, the sum), at half its cost per observation."""

from __future__ import annotations

import threading

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.registry import Collector

from realtime.metrics import LoopHistogram

pytestmark = pytest.mark.unit

BUCKETS = (0.001, 0.01, 0.1, 1.0)
# Below the first bound, on bounds (counted in that bound's bucket), between, past the last.
VALUES = [0.0, 0.0005, 0.001, 0.002, 0.01, 0.05, 0.1, 0.1, 0.99, 1.0, 3.5, 120.0]


class _One(Collector):
    def __init__(self, histogram: LoopHistogram) -> None:
        self.histogram = histogram

    def collect(self):  # type: ignore[no-untyped-def]
        yield self.histogram.metric()


def _exposition(registry: CollectorRegistry) -> list[str]:
    text = generate_latest(registry).decode()
    # prometheus-client adds a _created sample (when the histogram was made): a time, not a count.
    return [line for line in text.splitlines() if "_created" not in line]


def test_the_exposition_is_prometheus_clients_for_the_same_observations() -> None:
    theirs_registry, ours_registry = CollectorRegistry(), CollectorRegistry()
    theirs = Histogram("t_seconds", "Help.", buckets=BUCKETS, registry=theirs_registry)
    ours = LoopHistogram("t_seconds", "Help.", buckets=BUCKETS)
    ours_registry.register(_One(ours))
    for value in VALUES:
        theirs.observe(value)
        ours.observe(value)
    assert _exposition(ours_registry) == _exposition(theirs_registry)
    lines = _exposition(ours_registry)
    assert 't_seconds_bucket{le="0.001"} 3.0' in lines  # 0.0, 0.0005 and 0.001 itself
    assert 't_seconds_bucket{le="+Inf"} 12.0' in lines
    assert "t_seconds_count 12.0" in lines


def test_observations_from_threads_land_in_their_bucket_and_the_sum() -> None:
    histogram = LoopHistogram("t_seconds", "Help.", buckets=BUCKETS)

    def observe() -> None:
        for _ in range(5_000):
            histogram.observe(0.005)

    threads = [threading.Thread(target=observe) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sum(histogram.counts) == 20_000
    assert histogram.counts[1] == 20_000  # all in le=0.01
    assert histogram.sum == pytest.approx(100.0)
