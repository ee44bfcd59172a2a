"""Limits on what one client can make a replica (or the cluster) do: rates and counts.

Two kinds, each for what it protects:
- `TokenBucket`, in memory, per socket: frames, publishes, typing, replay bytes. A socket
  lives on one replica, so its own rates need no shared state and cost no round trip.
- `within_limit`, in Redis, per user across every replica: chat lines per minute. A user with
  ten sockets on three replicas still gets one budget.

Every limit is a setting with a documented default (project/settings.py, "Limits"); exceeding
one answers a clear error frame or status, and costs nobody else anything.
"""

from __future__ import annotations

import time

from django.conf import settings

from realtime import broker


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up. `take()` is O(1) and allocates nothing:
    it runs once per client frame."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, *, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = time.monotonic()

    def _refill(self, now: float) -> None:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def take(self, amount: float = 1.0, *, now: float | None = None) -> bool:
        """Spend `amount` if the bucket holds it; False (and nothing spent) if not."""
        self._refill(time.monotonic() if now is None else now)
        if self.tokens < amount:
            return False
        self.tokens -= amount
        return True

    def spend(self, amount: float, *, now: float | None = None) -> float:
        """Spend `amount` even into debt; the seconds until the bucket is out of debt (0 if it
        never went in). For costs known only after the fact, such as bytes already read."""
        self._refill(time.monotonic() if now is None else now)
        self.tokens -= amount
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


async def within_limit(key: str, *, limit: int, window_secs: float) -> bool:
    """Count one hit on `key` (shared by every replica); False once there were more than
    `limit` in the current window of `window_secs`. BrokerUnavailable propagates: a caller that
    cannot count refuses nothing silently and reports Redis as unavailable."""
    count = await broker.current().hit(key, window_ms=int(window_secs * 1000))
    return count <= limit


class SocketLimits:
    """One socket's budgets (settings "Limits"), made when it first sends or replays."""

    __slots__ = ("frames", "publishes", "replay", "replay_limited_told", "strikes", "typing")

    def __init__(self) -> None:
        self.frames = TokenBucket(
            rate=settings.SOCKET_FRAMES_PER_SEC, burst=settings.SOCKET_FRAME_BURST
        )
        # Refusals, forgiven at one a second: a socket that keeps sending past its rate runs out
        # of them and is closed.
        self.strikes = TokenBucket(rate=1.0, burst=settings.SOCKET_RATE_LIMIT_STRIKES)
        self.publishes = TokenBucket(
            rate=settings.SOCKET_PUBLISHES_PER_SEC, burst=settings.SOCKET_PUBLISH_BURST
        )
        self.typing = TokenBucket(
            rate=settings.SOCKET_TYPING_PER_SEC, burst=settings.SOCKET_TYPING_BURST
        )
        per_min = settings.SOCKET_REPLAY_BYTES_PER_MIN
        self.replay = TokenBucket(rate=per_min / 60, burst=per_min)
        self.replay_limited_told = False
