"""The durable SMS outbox as seen by the SMPP worker (implements the steps of ports.SmsOutbox).

Claims are leased (`lease_until`): the claiming worker renews the lease while it holds a message, and
never writes a part unless its lease outlasts the response to it (smpp/worker.py). So a claim whose lease
ran out belongs to a daemon that is gone, and its messages can be sent again without racing a live
submit_sm_resp. A restarted daemon finds its own claims (by its worker name, or as those of a dead
process of its host) at once.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from . import audit, suspension
from .models import Cardholder, SmsMessage, SmsPart
from .ports import MAX_RESENDS, OutgoingSms, Recovered, SmsState, nobody
from .rules import Rules

FINAL = (SmsState.DELIVERED, SmsState.UNDELIVERABLE, SmsState.EXPIRED)


def claim(s: Session, rules: Rules, worker: str, limit: int, lease: float) -> list[OutgoingSms]:
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
    lease_until = now + dt.timedelta(seconds=lease)
    claimed = []
    for row in rows:
        row.state, row.claimed_by, row.claimed_at, row.lease_until = (
            SmsState.SENDING,
            worker,
            now,
            lease_until,
        )
        claimed.append(
            OutgoingSms(
                sms_id=row.id,
                destination=row.destination,
                text=rules.vault.decrypt("sms", row.body_enc),
                expires_at=row.expires_at,
                purpose=row.purpose,
                resends=row.resends,
            )
        )
    return claimed


def renew(s: Session, rules: Rules, worker: str, sms_ids: list[int], lease: float) -> list[int]:
    if not sms_ids:
        return []
    held = s.scalars(
        update(SmsMessage)
        .where(
            SmsMessage.id.in_(sms_ids), SmsMessage.state == SmsState.SENDING, SmsMessage.claimed_by == worker
        )
        .values(lease_until=rules.now() + dt.timedelta(seconds=lease))
        .returning(SmsMessage.id)
    ).all()
    return list(held)


def _sending(s: Session, worker: str, sms_id: int, resends: int) -> SmsMessage | None:
    row = s.get(SmsMessage, sms_id, with_for_update=True)
    if row is None or row.state != SmsState.SENDING or row.claimed_by != worker:
        return None
    row.resends = max(row.resends, resends)
    return row


def mark_submitted(
    s: Session, rules: Rules, worker: str, sms_id: int, message_ids: list[str], bind: str, resends: int
) -> None:
    row = _sending(s, worker, sms_id, resends)
    if row is None:
        return
    row.state, row.submitted_at, row.bind, row.lease_until = SmsState.SUBMITTED, rules.now(), bind, None
    for number, message_id in enumerate(message_ids, start=1):
        s.add(SmsPart(sms_id=sms_id, part_no=number, message_id=message_id, state=SmsState.SUBMITTED))


def mark_retry(s: Session, rules: Rules, worker: str, sms_id: int, reason: str, resends: int) -> None:
    row = _sending(s, worker, sms_id, resends)
    if row is not None:
        row.state, row.claimed_by, row.claimed_at, row.lease_until = SmsState.QUEUED, None, None, None
        row.reason = reason


def finish(
    s: Session,
    rules: Rules,
    worker: str,
    sms_id: int,
    state: SmsState,
    reason: str,
    resends: int,
    in_doubt: bool = False,
) -> None:
    row = _sending(s, worker, sms_id, resends)
    if row is None:
        return
    row.state, row.reason, row.in_doubt, row.lease_until = state, reason, in_doubt, None
    if state == SmsState.SUBMITTED:
        row.submitted_at = rules.now()
    else:
        row.finished_at = rules.now()


def recover(s: Session, rules: Rules, worker: str, gone: Callable[[str], bool] = nobody) -> Recovered:
    """At start-up: what this worker's previous run left on the wire when it died, and what the workers
    `gone` says are dead left (a restarted daemon under a new name: workers.py)."""
    others = s.scalars(
        select(SmsMessage.claimed_by)
        .where(SmsMessage.state == SmsState.SENDING, SmsMessage.claimed_by != worker)
        .distinct()
    )
    names = [worker, *(name for name in others if name and gone(name))]
    rows = s.scalars(
        select(SmsMessage)
        .where(SmsMessage.state == SmsState.SENDING, SmsMessage.claimed_by.in_(names))
        .order_by(SmsMessage.id)
        .with_for_update()
    ).all()
    return _send_again(s, rules, worker, rows)


def recover_stale(s: Session, rules: Rules, worker: str, held: list[int]) -> Recovered:
    """Claims whose lease ran out and that `worker` does not hold (`held`): their daemon died and did not
    come back under its name, or a claim of this worker's own was committed while it saw an error and
    never took it in hand. A claim without a lease was left by a version before leases."""
    rows = s.scalars(
        select(SmsMessage)
        .where(
            SmsMessage.state == SmsState.SENDING,
            or_(SmsMessage.lease_until < rules.now(), SmsMessage.lease_until.is_(None)),
            ~((SmsMessage.claimed_by == worker) & SmsMessage.id.in_(held)),
        )
        .order_by(SmsMessage.id)
        .with_for_update(skip_locked=True)
    ).all()
    return _send_again(s, rules, worker, rows)


def _send_again(s: Session, rules: Rules, worker: str, rows: Sequence[SmsMessage]) -> Recovered:
    """Policy for a message its daemon may or may not have written before dying: send it again while its
    token is valid (a duplicate is harmless, a loss blocks the purchase), at most MAX_RESENDS times."""
    now = rules.now()
    resent = expired = in_doubt = 0
    for row in rows:
        left_by = row.claimed_by or ""
        row.lease_until = None
        if row.expires_at <= now:
            row.state, row.finished_at = SmsState.EXPIRED, now
            row.reason = f"token expired while left in flight by {left_by}"
            expired += 1
        elif row.resends >= MAX_RESENDS:
            row.state, row.in_doubt, row.submitted_at = SmsState.SUBMITTED, True, now
            row.reason = f"in doubt: left in flight by {left_by} after {row.resends} resends"
            in_doubt += 1
        else:
            row.state, row.claimed_by, row.claimed_at = SmsState.QUEUED, None, None
            row.resends += 1
            row.reason = f"sent again: left in flight by {left_by}, which stopped"
            resent += 1
        audit.record(
            s, rules, worker, "sms.crash-recovery", f"sms:{row.id}", left_by=left_by, outcome=row.state
        )
    return Recovered(resent, expired, in_doubt)


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
