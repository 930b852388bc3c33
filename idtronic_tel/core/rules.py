"""What every domain function needs besides its session: the settings, the keys and the clock."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from .cards import PrefixList
from .crypto import Vault
from .settings import CoreSettings


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class Rules:
    settings: CoreSettings
    vault: Vault
    clock: Callable[[], dt.datetime] = utcnow
    prefixes: PrefixList = field(init=False)
    zone: ZoneInfo = field(init=False)
    hours: tuple[int, int] = field(init=False)  # calling window in minutes of the local day; end may be 1440

    def __post_init__(self) -> None:
        self.prefixes = PrefixList(self.settings.enrollment.card_prefixes)
        self.zone = ZoneInfo(self.settings.callback.timezone)
        start, _, end = self.settings.callback.calling_hours.partition("-")
        self.hours = (_minutes(start), _minutes(end))

    def now(self) -> dt.datetime:
        return self.clock()

    def in_calling_hours(self, when: dt.datetime) -> bool:
        local = when.astimezone(self.zone)
        minute = local.hour * 60 + local.minute + local.second / 60
        return self.hours[0] <= minute < self.hours[1]

    def next_call_time(self, earliest: dt.datetime) -> dt.datetime:
        """`earliest`, or the start of the next calling window when it falls outside one
        (docs/rules.md §1.5)."""
        if self.in_calling_hours(earliest):
            return earliest
        local = earliest.astimezone(self.zone)
        start = dt.time(self.hours[0] // 60, self.hours[0] % 60)
        day = local.date() if local.time() < start else local.date() + dt.timedelta(days=1)
        return dt.datetime.combine(day, start, tzinfo=self.zone).astimezone(dt.UTC)


def _minutes(hhmm: str) -> int:
    hours, _, minutes = hhmm.partition(":")
    return int(hours) * 60 + int(minutes)
