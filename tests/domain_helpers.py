"""Building blocks for domain tests: enroll and activate a cardholder, read the token of an SMS."""

from __future__ import annotations

import re

from idtronic_tel.core import callbacks, enrollment, merchants, outbox
from idtronic_tel.core.cards import luhn_check_digit
from idtronic_tel.core.merchants import MerchantAuth
from idtronic_tel.core.ports import CallOutcome, DigitsVerdict
from idtronic_tel.core.states import EndReason

FIRST8 = "49761234"
LAST8 = "5678901" + luhn_check_digit("49761234" + "5678901")
PAN = FIRST8 + LAST8
IDENTITY = {
    "last_name": "Martin",
    "first_name": "Claire",
    "birth_date": "1985-04-12",
    "mobile": "06 11 22 33 44",
}


def enroll(core, **overrides) -> str:  # type: ignore[no-untyped-def]
    fields = {**IDENTITY, "card_first8": FIRST8, **overrides}
    return core(enrollment.enroll, fields, "web", "cardholder")["identifier"]


def answer_call(core, digits: str = LAST8) -> DigitsVerdict:  # type: ignore[no-untyped-def]
    """The next due callback is dialed, answered, and `digits` keyed once."""
    jobs = core(callbacks.claim_due, "w1", 10)
    assert jobs, "no callback due"
    job = jobs[0]
    core(callbacks.mark_originated, job.attempt_id, "cb-" + job.attempt_id)
    core(callbacks.apply_outcome, job.attempt_id, CallOutcome.ANSWERED, "")
    call = core(callbacks.start_call, job.attempt_id)
    assert call is not None
    verdict = core(callbacks.check_card_digits, job.attempt_id, digits)
    core(callbacks.end_call, job.attempt_id, EndReason.COMPLETED)
    return verdict


def active_cardholder(core, clock, **overrides) -> str:  # type: ignore[no-untyped-def]
    identifier = enroll(core, **overrides)
    clock.advance(11)
    assert answer_call(core) == "accepted"
    return identifier


def merchant(core, name: str = "Boutique Exemple", domain: str | None = None) -> MerchantAuth:  # type: ignore[no-untyped-def]
    added = core(merchants.add, name, domain)
    auth = core(merchants.authenticate, added["api_key"])
    assert auth is not None
    return auth


def sent_tokens(core) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    """Claim every queued SMS; (destination, token or '') for each."""
    out = []
    for sms in core(outbox.claim, "test-worker", 100, 40.0):
        match = re.search(r"code (\d{6})", sms.text)
        out.append((sms.destination, match.group(1) if match else ""))
        core(outbox.mark_submitted, "test-worker", sms.sms_id, [f"ID{sms.sms_id:06d}"], "test", 0)
    return out
