"""A payment's SMS handed to this process's SMPP worker in the create transaction (core/handoff.py): the
row is claimed exactly as outbox.claim would claim it, so the crash policy (recover, leases) holds."""

from __future__ import annotations

import re

import pytest
from domain_helpers import active_cardholder, merchant, sent_tokens
from sqlalchemy import select

from idtronic_tel.core import handoff, outbox
from idtronic_tel.core.errors import PaymentRefused
from idtronic_tel.core.models import SmsMessage
from idtronic_tel.core.ports import Recovered

BODY = {"amount": 4990, "currency": "EUR", "reference": "order-1"}


def _row(core, sms_id):  # type: ignore[no-untyped-def]
    return core.raw(lambda s: s.execute(select(SmsMessage).where(SmsMessage.id == sms_id)).scalar_one())


def test_create_claims_its_sms_for_the_worker_and_a_crash_sends_it_again(core, clock):  # type: ignore[no-untyped-def]
    shop = merchant(core)
    identifier = active_cardholder(core, clock)
    sent_tokens(core)  # nothing else queued
    body = {**BODY, "identifier": identifier}
    status, answer, sms = core(handoff.create_claimed, shop, body, "key-1", "digest", "w1", 40.0)
    assert status == 201 and answer["sms"] == "queued"
    assert sms is not None and sms.destination == "+33611223344" and sms.purpose == "payment"
    assert re.search(r"code \d{6} pour payer 49,90 EUR", sms.text)
    row = _row(core, sms.sms_id)
    assert (row.state, row.claimed_by, row.payment_id) == ("sending", "w1", answer["id"])
    assert (row.lease_until - row.claimed_at).total_seconds() == 40.0
    assert core(outbox.claim, "w2", 10, 40.0) == []  # claimed once
    # The same request again (Idempotency-Key): the same answer, nothing new to hand over.
    assert core(handoff.create_claimed, shop, body, "key-1", "digest", "w1", 40.0) == (201, answer, None)
    # w1 died before writing it: its restart sends it again (counted), as for any claim.
    assert core(outbox.recover, "w1") == Recovered(resent=1)
    (again,) = core(outbox.claim, "w1", 10, 40.0)
    assert (again.sms_id, again.text, again.resends) == (sms.sms_id, sms.text, 1)


def test_a_refused_create_claims_nothing(core, clock):  # type: ignore[no-untyped-def]
    shop = merchant(core)
    with pytest.raises(PaymentRefused):
        core(handoff.create_claimed, shop, {**BODY, "identifier": "0" * 10}, None, "d", "w1", 40.0)
