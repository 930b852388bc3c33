"""The durable SMS outbox as seen by the SMPP worker (implements the steps of ports.SmsOutbox)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from . import suspension
from .models import Cardholder, SmsMessage, SmsPart
from .ports import OutgoingSms, SmsState
from .rules import Rules

FINAL = (SmsState.DELIVERED, SmsState.UNDELIVERABLE, SmsState.EXPIRED)


def claim(s: Session, rules: Rules, worker: str, limit: int) -> list[OutgoingSms]:
    if suspension.global_state(s)[0]:
        return []
    now = rules.now()
    s.execute(
        update(SmsMessage)
        .where(SmsMessage.state == SmsState.QUEUED, SmsMessage.expires_at <= now)
        .values(state=SmsState.EXPIRED, reason="token expired before sending", finished_at=now)
    )
    suspended_holders = select(Cardholder.id).where(Cardholder.suspended)
    rows = s.scalars(
        select(SmsMessage)
        .where(
            SmsMessage.state == SmsState.QUEUED,
            (SmsMessage.cardholder_id.is_(None)) | SmsMessage.cardholder_id.not_in(suspended_holders),
        )
        .order_by(SmsMessage.id)
        .limit(limit)
        .with_for_update(skip_locked=True)  # several daemons on PostgreSQL never claim the same row
    ).all()
    claimed = []
    for row in rows:
        row.state, row.claimed_by, row.claimed_at = SmsState.SENDING, worker, now
        claimed.append(
            OutgoingSms(
                sms_id=row.id,
                destination=row.destination,
                text=rules.vault.decrypt("sms", row.body_enc),
                expires_at=row.expires_at,
                purpose=row.purpose,
            )
        )
    return claimed


def _sending(s: Session, sms_id: int) -> SmsMessage | None:
    row = s.get(SmsMessage, sms_id, with_for_update=True)
    return row if row is not None and row.state == SmsState.SENDING else None


def mark_submitted(s: Session, rules: Rules, sms_id: int, message_ids: list[str], bind: str) -> None:
    row = _sending(s, sms_id)
    if row is None:
        return
    row.state, row.submitted_at, row.bind = SmsState.SUBMITTED, rules.now(), bind
    for number, message_id in enumerate(message_ids, start=1):
        s.add(SmsPart(sms_id=sms_id, part_no=number, message_id=message_id, state=SmsState.SUBMITTED))


def mark_retry(s: Session, rules: Rules, sms_id: int, reason: str) -> None:
    row = _sending(s, sms_id)
    if row is not None:
        row.state, row.claimed_by, row.claimed_at, row.reason = SmsState.QUEUED, None, None, reason


def finish(
    s: Session, rules: Rules, sms_id: int, state: SmsState, reason: str, in_doubt: bool = False
) -> None:
    row = _sending(s, sms_id)
    if row is None:
        return
    row.state, row.reason, row.in_doubt = state, reason, in_doubt
    if state == SmsState.SUBMITTED:
        row.submitted_at = rules.now()
    else:
        row.finished_at = rules.now()


def recover(s: Session, rules: Rules, worker: str) -> int:
    """At start-up: what this worker left on the wire when it stopped."""
    rows = s.scalars(
        select(SmsMessage).where(SmsMessage.state == SmsState.SENDING, SmsMessage.claimed_by == worker)
    ).all()
    return _in_doubt(rules, rows)


STALE_CLAIM_SECONDS = 300.0


def recover_stale(s: Session, rules: Rules) -> int:
    """Claims older than any send could take: their daemon died and did not come back (other daemons on
    the same database resolve them, with the same in-doubt policy)."""
    limit = rules.now() - dt.timedelta(seconds=STALE_CLAIM_SECONDS)
    rows = s.scalars(
        select(SmsMessage)
        .where(SmsMessage.state == SmsState.SENDING, SmsMessage.claimed_at < limit)
        .with_for_update(skip_locked=True)
    ).all()
    return _in_doubt(rules, rows)


def _in_doubt(rules: Rules, rows: Sequence[SmsMessage]) -> int:
    for row in rows:
        row.state, row.in_doubt, row.submitted_at = SmsState.SUBMITTED, True, rules.now()
        row.reason = "in doubt: the daemon stopped while the message was on the wire"
    return len(rows)


def apply_receipt(s: Session, rules: Rules, message_id: str, state: str) -> bool:
    part = s.scalar(
        select(SmsPart).where(SmsPart.message_id == message_id).order_by(SmsPart.id.desc()).limit(1)
    )
    if part is None:
        return False
    part.state = state
    row = s.get(SmsMessage, part.sms_id, with_for_update=True)
    assert row is not None
    states = {p.state for p in s.scalars(select(SmsPart).where(SmsPart.sms_id == row.id))}
    if SmsState.UNDELIVERABLE in states:
        row.state = SmsState.UNDELIVERABLE
    elif SmsState.EXPIRED in states:
        row.state = SmsState.EXPIRED
    elif states == {SmsState.DELIVERED}:
        row.state = SmsState.DELIVERED
    if row.state in FINAL:
        row.finished_at = rules.now()
    return True
