"""What the operator's console shows of the daemon's links, sampled every second: the AMI link and each
SMPP bind, up or down and since when; for a bind, the window in use and the submits per second over the
last seconds."""

from __future__ import annotations

import datetime as dt
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .ivr.ami_client import AmiClient
from .smpp.service import SmppService

SAMPLE_SECONDS = 1.0
TPS_SAMPLES = 10  # the throughput is averaged over this many samples


@dataclass
class LinkState:
    kind: str  # ami | smpp
    name: str
    up: bool
    since: float  # the clock's seconds when it came up or went down (or when the daemon started)
    window_used: int | None = None
    window: int | None = None
    tps: float | None = None
    max_tps: float | None = None
    _submits: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=TPS_SAMPLES + 1))


class LinkWatch:
    def __init__(self, clock: Any, ami: AmiClient | None, smpp: SmppService | None) -> None:
        self.clock = clock
        self.ami = ami
        self.smpp = smpp
        self._states: dict[tuple[str, str], LinkState] = {}

    def _note(self, kind: str, name: str, up: bool, now: float) -> LinkState:
        state = self._states.get((kind, name))
        if state is None:
            state = self._states[(kind, name)] = LinkState(kind, name, up, now)
        elif state.up != up:
            state.up, state.since = up, now
        return state

    def sample(self) -> None:
        now = self.clock.seconds()
        if self.ami is not None:
            self._note("ami", "AMI", self.ami.ready, now)
        if self.smpp is not None:
            for bind in self.smpp.binds:
                state = self._note("smpp", bind.config.name, bind.bound, now)
                state.window_used, state.window = bind.in_flight, bind.window
                state.max_tps = bind.config.max_tps
                state._submits.append((now, bind.submitted))
                first, count = state._submits[0]
                state.tps = (bind.submitted - count) / (now - first) if now > first else 0.0

    def details(self) -> list[dict[str, Any]]:
        """One entry per link, as of now."""
        self.sample()
        return [
            {
                "kind": s.kind,
                "name": s.name,
                "state": "up" if s.up else "down",
                "since": dt.datetime.fromtimestamp(s.since, dt.UTC).isoformat(),
                "window_used": s.window_used,
                "window": s.window,
                "tps": s.tps,
                "max_tps": s.max_tps,
            }
            for s in self._states.values()
        ]
