"""What every domain function needs besides its session: the settings, the keys and the clock."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from ..config_schema import Config
from .cards import PrefixList
from .crypto import Vault


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class Rules:
    config: Config
    vault: Vault
    clock: Callable[[], dt.datetime] = utcnow
    prefixes: PrefixList = field(init=False)
    zone: ZoneInfo = field(init=False)
    hours: tuple[dt.time, dt.time] = field(init=False)

    def __post_init__(self) -> None:
        self.prefixes = PrefixList(self.config.enrollment.card_prefixes)
        self.zone = ZoneInfo(self.config.callback.timezone)
        start, _, end = self.config.callback.calling_hours.partition("-")
        self.hours = (dt.time.fromisoformat(start), dt.time.fromisoformat(end))

    def now(self) -> dt.datetime:
        return self.clock()

    def in_calling_hours(self, when: dt.datetime) -> bool:
        local = when.astimezone(self.zone).time()
        return self.hours[0] <= local < self.hours[1]

    def next_call_time(self, earliest: dt.datetime) -> dt.datetime:
        """`earliest`, or the start of the next calling window when it falls outside one (PRODUCT §1.5)."""
        local = earliest.astimezone(self.zone)
        start, end = self.hours
        if start <= local.time() < end:
            return earliest
        day = local.date() if local.time() < start else local.date() + dt.timedelta(days=1)
        return dt.datetime.combine(day, start, tzinfo=self.zone).astimezone(dt.UTC)
