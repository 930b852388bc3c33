"""The failure budget (docs/rules.md §4): one counter per cardholder shared by every channel."""

from __future__ import annotations

from sqlalchemy.orm import Session

from . import audit
from .models import Cardholder
from .rules import Rules


def record_failure(s: Session, rules: Rules, holder: Cardholder, channel: str) -> bool:
    """Count one failure; returns True when this failure locked the cardholder."""
    holder.failures += 1
    holder.updated_at = rules.now()
    if not holder.locked and holder.failures >= rules.settings.budget.max_consecutive_failures:
        holder.locked = True
        holder.lock_reason = f"{holder.failures} consecutive failures"
        audit.record(
            s, rules, "system", "cardholder.lock", f"cardholder:{holder.identifier}", channel=channel
        )
        return True
    return False


def record_success(rules: Rules, holder: Cardholder) -> None:
    """A success resets the counter; issuing a new code never does (NIST SP 800-63B)."""
    holder.failures = 0
    holder.updated_at = rules.now()
