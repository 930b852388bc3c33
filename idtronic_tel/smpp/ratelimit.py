"""Per-bind throughput: a token bucket on `max_tps` that halves its rate when the SMSC throttles.

The operator's contract caps each bind at `max_tps`; the bucket never lets more out. When the SMSC answers
ESME_RTHROTTLED / ESME_RMSGQFUL anyway, the rate is halved (multiplicative decrease) and climbs back by a
small step per accepted message (additive increase), as TCP does with its congestion window.
"""

from __future__ import annotations

from typing import Final

from twisted.internet.interfaces import IReactorTime

# Tokens the bucket may hold: 20 ms worth of traffic, so a timer that fires a little late does not lose
# throughput, while a burst stays small enough for the cap to hold over any second.
_BURST_SECONDS: Final = 0.02
_MIN_RATE_FRACTION: Final = 0.01
_RECOVERY_STEPS: Final = 100  # accepted messages to climb from half rate back to max_tps
# Timestamps near 1.8e9 s have a resolution of ~2e-7 s, so a refill may fall a hair short of a whole token;
# without this slack the next wait would be shorter than the clock can represent (0.1 % of the cap at most).
_TOKEN_SLACK: Final = 1e-3


class TokenBucket:
    def __init__(self, max_rate: float, clock: IReactorTime) -> None:
        if max_rate <= 0:
            raise ValueError("max_tps must be positive")
        self.max_rate = max_rate
        self.rate = max_rate
        self.clock = clock
        self.capacity = max(2.0, max_rate * _BURST_SECONDS)
        self._tokens = self.capacity
        self._updated = clock.seconds()

    def _refill(self) -> None:
        now = self.clock.seconds()
        self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
        self._updated = now

    def wait_time(self) -> float:
        """Seconds until one token is there (0: now)."""
        self._refill()
        if self._tokens >= 1.0 - _TOKEN_SLACK:
            return 0.0
        return (1.0 - self._tokens) / self.rate

    def take(self) -> None:
        self._refill()
        self._tokens -= 1.0

    def throttled(self) -> None:
        """The SMSC said slow down: halve the rate and spend what the bucket holds."""
        self._refill()
        self.rate = max(self.max_rate * _MIN_RATE_FRACTION, self.rate / 2)
        self._tokens = min(self._tokens, 0.0)

    def accepted(self) -> None:
        if self.rate < self.max_rate:
            self._refill()
            self.rate = min(self.max_rate, self.rate + self.max_rate / (2 * _RECOVERY_STEPS))
