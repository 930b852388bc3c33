"""Suspension of the whole service, one merchant or one cardholder (docs/rules.md §5)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from . import audit, views
from .errors import NotFound
from .models import Cardholder, Merchant, ServiceState
from .rules import Rules


def global_state(s: Session) -> tuple[bool, str]:
    row = s.get(ServiceState, 1)
    return (row.suspended, row.notice) if row else (False, "")


def suspend(
    s: Session, rules: Rules, notice: str, cardholder: str | None = None, merchant: str | None = None
) -> views.Suspension:
    _set(s, rules, True, notice, cardholder, merchant)
    return views.Suspension(True, notice, cardholder, merchant)


def resume(
    s: Session, rules: Rules, cardholder: str | None = None, merchant: str | None = None
) -> views.Suspension:
    _set(s, rules, False, "", cardholder, merchant)
    return views.Suspension(False, "", cardholder, merchant)


def _set(
    s: Session, rules: Rules, on: bool, notice: str, cardholder: str | None, merchant: str | None
) -> None:
    verb = "suspend" if on else "resume"
    if cardholder is not None:
        holder = s.scalar(select(Cardholder).where(Cardholder.identifier == cardholder))
        if holder is None:
            raise NotFound("no such cardholder")
        holder.suspended, holder.notice, holder.updated_at = on, notice, rules.now()
        audit.record(s, rules, "operator", verb, f"cardholder:{cardholder}")
    elif merchant is not None:
        shop = s.get(Merchant, merchant)
        if shop is None or not shop.active:
            raise NotFound("no such merchant")
        shop.suspended, shop.notice = on, notice
        audit.record(s, rules, "operator", verb, f"merchant:{merchant}")
    else:
        row = s.get(ServiceState, 1, with_for_update=True)
        if row is None:
            row = ServiceState(id=1)
            s.add(row)
        row.suspended, row.notice, row.changed_at = on, notice, rules.now()
        audit.record(s, rules, "operator", verb, "service", notice=notice)
