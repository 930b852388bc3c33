"""The failure budget (docs/rules.md §4): one counter per cardholder shared by every channel; exhausted, it
locks the cardholder for a while (longer each time), and an operator can still lock or unlock for good."""

from __future__ import annotations

import datetime as dt
from typing import Protocol

from sqlalchemy import ColumnElement, or_
from sqlalchemy.orm import Session

from . import audit, tokens
from .models import Cardholder, Challenge
from .rules import Rules


class LockState(Protocol):
    """A cardholder, or a row that selected its two lock columns."""

    @property
    def locked(self) -> bool: ...

    @property
    def locked_until(self) -> dt.datetime | None: ...


def is_locked(holder: LockState, now: dt.datetime) -> bool:
    """Locked by an operator, or inside a temporary lock; a temporary lock ends by itself."""
    return holder.locked or (holder.locked_until is not None and holder.locked_until > now)


def locked_clause(now: dt.datetime) -> ColumnElement[bool]:
    """`is_locked` in SQL."""
    return or_(Cardholder.locked.is_(True), Cardholder.locked_until > now)


def record_wrong_code(
    s: Session, rules: Rules, holder: Cardholder, challenge: Challenge | None, channel: str
) -> bool:
    """A wrong code counts only against a code that was sent and is still live: without one, a stranger
    could lock anyone by posting codes nobody ever received."""
    if challenge is None or not tokens.live_challenge(challenge, rules.now()):
        return False
    return record_failure(s, rules, holder, channel)


def record_failure(s: Session, rules: Rules, holder: Cardholder, channel: str) -> bool:
    """Count one failure; returns True when this failure locked the cardholder."""
    now = rules.now()
    if is_locked(holder, now):
        return False  # attempts are refused while locked: nothing to count
    holder.failures += 1
    holder.updated_at = now
    cfg = rules.settings.budget
    if holder.failures < cfg.max_consecutive_failures:
        return False
    seconds = min(cfg.lock_duration * cfg.lock_growth ** min(holder.lock_count, 64), cfg.max_lock_duration)
    holder.locked_until = now + dt.timedelta(seconds=seconds)
    holder.lock_count += 1
    holder.lock_reason = f"{holder.failures} consecutive failures"
    holder.failures = 0  # the lock is the penalty: when it ends, the cardholder starts afresh
    audit.record(
        s,
        rules,
        "system",
        "cardholder.lock",
        f"cardholder:{holder.identifier}",
        channel=channel,
        until=holder.locked_until.isoformat(),
    )
    text = cfg.lock_notice.format(duration=french_duration(seconds))
    tokens.queue_notice(s, rules, holder, text, holder.locked_until)
    return True


def record_success(rules: Rules, holder: Cardholder) -> None:
    """A success resets the counter and the lengthening of locks; issuing a new code never does (NIST
    SP 800-63B)."""
    holder.failures = 0
    holder.lock_count = 0
    holder.updated_at = rules.now()


def set_lock(rules: Rules, holder: Cardholder, locked: bool, reason: str) -> None:
    """The operator's lock (until unlocked) or unlock (ends any lock and resets the budget)."""
    holder.locked = locked
    holder.lock_reason = reason if locked else ""
    if not locked:
        holder.locked_until = None
        record_success(rules, holder)
    holder.updated_at = rules.now()


def french_duration(seconds: float) -> str:
    """'30 min', '2 h', '1 h 30 min', '2 j' for the SMS (rounded up to the minute)."""
    minutes = -(-int(seconds) // 60)
    days, rest = divmod(minutes, 1440)
    hours, minutes = divmod(rest, 60)
    parts = [f"{days} j"] if days else []
    parts += [f"{hours} h"] if hours else []
    parts += [f"{minutes} min"] if minutes else []
    return " ".join(parts) or "1 min"
