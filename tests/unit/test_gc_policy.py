"""The replica's garbage-collection policy: young generations as usual, full ones on a timer."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from realtime import gc_policy
from realtime.stats import replica_stats

pytestmark = pytest.mark.unit


@pytest.fixture
def thresholds() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.set_threshold(*before)


def test_automatic_full_collections_stop_and_the_young_ones_stay(thresholds: None) -> None:
    young, middle, _ = gc.get_threshold()
    gc_policy.take_over_full_collections()
    # CPython starts a full collection only once its generation-2 counter, one per middle
    # collection, passes this threshold.
    assert gc.get_threshold() == (young, middle, gc_policy.NEVER)


def test_a_timed_full_collection_frees_cycles_and_reports_itself() -> None:
    class Node:
        pass

    collections = replica_stats.gc_full_collections
    node = Node()
    node.self = node  # type: ignore[attr-defined]
    ref = weakref.ref(node)
    del node
    gc_policy.collect_full()
    assert ref() is None
    assert replica_stats.gc_full_collections == collections + 1
    assert replica_stats.gc_full_pause_ms >= 0
