"""A payment's SMS handed straight to this process's SMPP worker (issue 11 §2): create_payment as the API
calls it (the reactor side) and create_claimed (its transaction).

The create transaction claims the SMS it just queued for the local worker (SENDING, claimed_by, a lease:
exactly what outbox.claim would have written), so that after the commit the worker can write the
submit_sm at once instead of waiting for its next claim transaction. The row stays the durable record:
a crash before the submit_sm leaves it SENDING under this worker's name, which the restarted daemon's
recover() (or, once the lease ran out, another daemon's recover_stale()) sends again, as for any claim.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Table, bindparam, update
from sqlalchemy.orm import Session
from twisted.logger import Logger

from . import payments, views
from .errors import PaymentRefused
from .merchants import MerchantAuth
from .models import SmsMessage
from .ports import OutgoingSms, SmsState
from .rules import Rules

if TYPE_CHECKING:
    from .facade import Core

log = Logger()

_sms = cast(Table, SmsMessage.__table__)
_CLAIM_FRESH = (
    update(_sms)
    .where(_sms.c.payment_id == bindparam("b_payment"), _sms.c.state == SmsState.QUEUED.value)
    .values(
        state=SmsState.SENDING.value,
        claimed_by=bindparam("b_worker"),
        claimed_at=bindparam("b_now"),
        lease_until=bindparam("b_lease"),
    )
    .returning(
        _sms.c.id, _sms.c.destination, _sms.c.body_enc, _sms.c.expires_at, _sms.c.purpose, _sms.c.resends
    )
)


def create_claimed(
    s: Session,
    rules: Rules,
    merchant: MerchantAuth,
    body: dict[str, Any],
    idempotency_key: str | None,
    request_digest: str,
    worker: str,
    lease: float,
) -> tuple[int, views.Payment, OutgoingSms | None]:
    """payments.create, then its SMS claimed for `worker` in the same transaction (None: nothing queued
    for it any more, e.g. an idempotent replay whose SMS already left)."""
    status, answer = payments.create(s, rules, merchant, body, idempotency_key, request_digest)
    if status != 201:
        return status, answer, None
    now = rules.now()
    row = (
        s.connection()
        .execute(
            _CLAIM_FRESH,
            {
                "b_payment": answer.id,
                "b_worker": worker,
                "b_now": now,
                "b_lease": now + dt.timedelta(seconds=lease),
            },
        )
        .first()
    )
    if row is None:
        return status, answer, None
    sms = OutgoingSms(
        sms_id=row.id,
        destination=row.destination,
        text=rules.vault.decrypt("sms", row.body_enc),
        expires_at=row.expires_at,
        purpose=row.purpose,
        resends=row.resends,
    )
    return status, answer, sms


async def create_payment(
    core: Core, merchant: MerchantAuth, body: dict[str, Any], idempotency_key: str | None
) -> tuple[int, views.Payment]:
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    taker = core.sms_taker if core.sms_taker is not None and core.sms_taker.reserve() else None
    started = core.reactor.seconds()
    try:
        for _ in range(2):
            try:
                if taker is None:
                    status, answer = await core._run(payments.create, merchant, body, idempotency_key, digest)
                    core.sms_signal.fire()
                    return status, answer
                status, answer, sms = await core._run(
                    create_claimed, merchant, body, idempotency_key, digest, taker.worker, taker.lease
                )
            except payments.IdempotentReplay:
                continue  # the concurrent twin committed: the second pass replays its answer
            except PaymentRefused as refused:
                log.info(
                    "payment refused for merchant {merchant}: cardholder {reason}",
                    merchant=merchant.id,
                    reason=refused.reason,
                )
                raise
            taker.deliver(sms, started)
            taker = None
            return status, answer
        raise AssertionError("an Idempotency-Key race did not resolve")
    finally:
        if taker is not None:
            taker.deliver(None, 0.0)  # nothing committed: give the reserved room back
