"""The broker: everything Switchboard keeps in or sends through Redis goes through here.

  keys.py          every key and channel name
  lua/*.lua        the scripts, run by scripts.py (NOSCRIPT handled there, once)
  frames.py        the stream frame format: one encoder, one decoder
  errors.py        BrokerUnavailable, the one "Redis is not answering" error
  autopipeline.py  one connection per event loop and shard for script calls, written together
  redis_broker.py  RedisBroker: connections (one pool per event loop, a blocking client per
                   thread for sync code), streams, marks, the
                   archive queue, membership counts, limit counters, and the primitives
                   presence uses

The broker in use belongs to the default channel layer (realtime/layer.py builds it from the
layer's `hosts` and `prefix`), so a test that points the layer at its own Redis and prefix
points everything at them.
"""

from __future__ import annotations

from typing import Any

from channels.layers import get_channel_layer

from realtime.broker.errors import REDIS_FAILURES, BrokerUnavailable
from realtime.broker.redis_broker import (
    Appended,
    Position,
    Queued,
    QueuedBatch,
    RedisBroker,
    StreamPolicy,
)

__all__ = [
    "REDIS_FAILURES",
    "Appended",
    "BrokerUnavailable",
    "Position",
    "Queued",
    "QueuedBatch",
    "RedisBroker",
    "StreamPolicy",
    "current",
]


def current() -> RedisBroker:
    """The broker of the default channel layer."""
    layer: Any = get_channel_layer()
    broker = getattr(layer, "broker", None)
    if broker is None:
        raise RuntimeError(
            f"CHANNEL_LAYERS['default'] is {type(layer).__name__}, which has no broker: "
            "Switchboard needs realtime.layer.StreamChannelLayer there."
        )
    return broker  # type: ignore[no-any-return]
