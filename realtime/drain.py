"""Draining a replica: its sockets move to the others in server-assigned slots, nothing lost.

A replica told to drain (POST /drain from its host or by staff, `manage.py cluster drain dX`,
SIGTERM) stops taking sockets at once: a new one is refused with 1012 and code `draining`, and
/readyz fails, so HAProxy sends new clients, cookie holders included, elsewhere. Then each of
its sockets gets `{"type": "reconnect", "after_ms": …}` with its own slot, spread evenly over
the window (DRAIN_WINDOW_SECS, 10 s by default): the clients leave one after another and resume
on other replicas from their positions, so a thousand sockets arrive there at a steady rate
instead of all in the same second, as after a crash. Sockets still open a moment after the
window (clients that ignore the frame) are closed with 1012 ("service restart"), after which
every client reconnects by itself. `undrain` takes the replica back.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.core import signing

logger = logging.getLogger(__name__)

# After the window, how long the last slot's client has to leave before it is closed for it.
GRACE_SECS = 1.0
CLOSE_SERVICE_RESTART = 1012


@dataclass
class DrainState:
    draining: bool = False
    since: float = 0.0
    window_secs: float = 0.0
    told: int = 0
    closed: int = 0
    closer: asyncio.Task[None] | None = field(default=None, repr=False)


state = DrainState()


def is_draining() -> bool:
    return state.draining


def sessions_here(layer: Any) -> list[Any]:
    """This process's open sessions (the hub's sinks that are sockets' sessions)."""
    return [s for s in layer.local_sinks() if getattr(s, "ready", False)]


async def start(layer: Any, *, window_secs: float | None = None) -> dict[str, Any]:
    """Drain now (again: slots for the sockets still here). How many sockets were told."""
    window = float(settings.DRAIN_WINDOW_SECS if window_secs is None else window_secs)
    state.draining, state.since, state.window_secs = True, time.monotonic(), window
    sessions = sessions_here(layer)
    random.shuffle(sessions)  # no user is always first or last
    window_ms = int(window * 1000)
    for index, session in enumerate(sessions):
        after_ms = window_ms * index // max(1, len(sessions))
        try:
            await session.send_frame(
                {
                    "type": "reconnect",
                    "after_ms": after_ms,
                    "reason": "draining",
                    "replica": settings.REPLICA_ID,
                }
            )
        except Exception:  # a socket closing meanwhile: it is leaving anyway
            logger.debug("drain: a socket could not be told", exc_info=True)
    state.told = len(sessions)
    if state.closer is not None:
        state.closer.cancel()
    state.closer = asyncio.get_running_loop().create_task(_close_stragglers(layer, window))
    logger.info(
        "draining replica=%s sockets=%d window_secs=%.1f",
        settings.REPLICA_ID,
        len(sessions),
        window,
    )
    return {
        "replica": settings.REPLICA_ID,
        "draining": True,
        "sockets": len(sessions),
        "window_secs": window,
    }


async def _close_stragglers(layer: Any, window: float) -> None:
    await asyncio.sleep(window + GRACE_SECS)
    stragglers = sessions_here(layer)
    for session in stragglers:
        try:
            await session.close(CLOSE_SERVICE_RESTART, "replica draining")
        except Exception:
            logger.debug("drain: closing a straggler failed", exc_info=True)
    state.closed = len(stragglers)
    logger.info("drained replica=%s stragglers_closed=%d", settings.REPLICA_ID, len(stragglers))


async def finished(layer: Any, *, timeout: float) -> bool:
    """Wait until no socket is left here (the window, then the stragglers' close)."""
    deadline = time.monotonic() + timeout
    while sessions_here(layer):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def stop() -> dict[str, Any]:
    """Take sockets again (undrain)."""
    state.draining = False
    if state.closer is not None:
        state.closer.cancel()
        state.closer = None
    logger.info("undrained replica=%s", settings.REPLICA_ID)
    return {"replica": settings.REPLICA_ID, "draining": False}


# A drain asked for by staff on another replica (the cluster view's button) arrives signed with
# the SECRET_KEY every replica shares, naming this replica, and is good for this long.
ORDER_SALT = "switchboard.drain"
ORDER_MAX_AGE_SECS = 30
ORDER_HEADER = "X-Switchboard-Drain"


def signed_order(replica: str, *, undo: bool) -> str:
    return signing.dumps({"replica": replica, "undo": undo}, salt=ORDER_SALT)


def order_valid(token: str, *, undo: bool) -> bool:
    """Whether `token` orders this replica to drain (or undrain, with `undo`) right now."""
    try:
        order = signing.loads(token, salt=ORDER_SALT, max_age=ORDER_MAX_AGE_SECS)
    except signing.BadSignature:
        return False
    return bool(order.get("replica") == settings.REPLICA_ID and order.get("undo") is undo)


def status() -> dict[str, Any]:
    return {
        "draining": state.draining,
        "window_secs": state.window_secs,
        "sockets_told": state.told,
        "stragglers_closed": state.closed,
    }
