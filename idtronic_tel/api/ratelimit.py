"""In-memory token buckets for the API's per-key and per-address limits.

Each daemon keeps its own buckets: with N daemons behind a load balancer a client gets at most N times
the configured rate, which the README states. The per-cardholder token limit of docs/rules.md §4 is not
here: it is counted in the database, so it holds across daemons."""

from __future__ import annotations

import math
from collections.abc import Callable


class RateLimiter:
    def __init__(self, rate_per_second: float, burst: float, clock: Callable[[], float]) -> None:
        self._rate = rate_per_second
        self._burst = max(1.0, burst)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last refill)

    def take(self, key: str) -> float:
        """0 when allowed; else the seconds to wait (for Retry-After)."""
        now = self._clock()
        tokens, last = self._buckets.get(key, (self._burst, now))
        tokens = min(self._burst, tokens + (now - last) * self._rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            if len(self._buckets) > 100_000:
                self._forget_full(now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return math.ceil((1.0 - tokens) / self._rate)

    def _forget_full(self, now: float) -> None:
        """Drop buckets that have refilled: they carry no information."""
        self._buckets = {
            k: (t, last)
            for k, (t, last) in self._buckets.items()
            if t + (now - last) * self._rate < self._burst
        }


def per_minute(count: int, clock: Callable[[], float]) -> RateLimiter:
    """`count` per minute on average, with up to half a minute's worth at once."""
    return RateLimiter(count / 60.0, burst=max(1.0, count / 2.0), clock=clock)


def per_hour(count: int, clock: Callable[[], float]) -> RateLimiter:
    return RateLimiter(count / 3600.0, burst=float(count), clock=clock)
