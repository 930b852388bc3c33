"""No lockout by strangers, still PSD2-tight (issue 9 §4, docs/rules.md §4): a wrong code counts only
against a live code; five failures lock for a while (longer each time in a row); the operator's lock is
for good and unlock ends any lock. Injected clock, on SQLite and PostgreSQL; the issue's reproduction
over HTTP."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_twisted
import sqlalchemy as sa
from apiharness import OPERATOR_KEY, PAYMENT, ApiHarness, api_config
from conftest import BlockingCore, FakeClock, make_rules, test_config
from domain_helpers import FIRST8, LAST8, active_cardholder, enroll, merchant
from twisted.internet.defer import Deferred

from idtronic_tel.config_schema import BudgetConfig
from idtronic_tel.core import callbacks, enrollment, outbox, payments, profile
from idtronic_tel.core.budget import french_duration
from idtronic_tel.core.errors import Conflict, InvalidToken, NotPending, PaymentRefused
from idtronic_tel.core.facade import _counts
from idtronic_tel.core.merchants import MerchantAuth
from idtronic_tel.core.models import AuditEntry, Cardholder

BODY = {"amount": 4990, "currency": "EUR", "reference": "order-1"}
MINUTE = 60


def pay(core: BlockingCore, shop: MerchantAuth, identifier: str) -> dict[str, Any]:
    return core(payments.create, shop, {**BODY, "identifier": identifier}, None, "digest")[1]  # type: ignore[no-any-return]


def holder_of(core: BlockingCore, identifier: str) -> Cardholder:
    return core.raw(lambda s: s.scalar(sa.select(Cardholder).where(Cardholder.identifier == identifier)))  # type: ignore[no-any-return]


def refusal(core: BlockingCore, shop: MerchantAuth, identifier: str) -> tuple[Any, ...]:
    with pytest.raises(PaymentRefused) as err:
        pay(core, shop, identifier)
    return (err.value.code, err.value.message, tuple(err.value.extra))


def five_wrong_codes(core: BlockingCore, shop: MerchantAuth, identifier: str) -> None:
    """Two payments: three wrong codes fail the first, the second wrong code of the next is the 5th."""
    for wrong in (3, 2):
        created = pay(core, shop, identifier)
        for _ in range(wrong):
            with pytest.raises((InvalidToken, NotPending)):
                core(payments.confirm, shop, created["id"], "abcdef")


def queued_texts(core: BlockingCore) -> list[str]:
    sent = core(outbox.claim, "w", 100, 40.0)
    for sms in sent:
        core(outbox.mark_submitted, "w", sms.sms_id, [f"ID{sms.sms_id:06d}"], "test", 0)
    return [sms.text for sms in sent]


def locked_count(core: BlockingCore) -> int:
    return core.raw(lambda s: _counts(s, core.rules.now())["locked_cardholders"])  # type: ignore[no-any-return]


def test_codes_with_no_live_challenge_count_nothing(core, clock):  # type: ignore[no-untyped-def]
    identifier = active_cardholder(core, clock)
    shop = merchant(core)
    for _ in range(10):  # the reproduction: no challenge ever requested
        with pytest.raises(InvalidToken) as err:
            core(profile.open_session, identifier, "000000")
        assert err.value.message == "wrong or expired code"  # the answer to a wrong code: nothing leaks
    core(profile.request_challenge, identifier)
    clock.advance(301)  # expired: no code to guess any more
    for _ in range(10):
        with pytest.raises(InvalidToken):
            core(profile.open_session, identifier, "000000")
    holder = holder_of(core, identifier)
    assert (holder.failures, holder.locked, holder.locked_until) == (0, False, None)
    assert pay(core, shop, identifier)["status"] == "pending"


def test_five_wrong_codes_lock_for_a_while_then_it_resumes(core, clock):  # type: ignore[no-untyped-def]
    identifier = active_cardholder(core, clock)
    shop = merchant(core)
    queued_texts(core)
    core(profile.request_challenge, identifier)
    for _ in range(3):  # the third retires the code
        with pytest.raises(InvalidToken):
            core(profile.open_session, identifier, "abcdef")
    core(profile.request_challenge, identifier)
    with pytest.raises(InvalidToken):
        core(profile.open_session, identifier, "abcdef")
    assert holder_of(core, identifier).failures == 4
    created = pay(core, shop, identifier)
    with pytest.raises(InvalidToken) as err:  # the 5th failure locks: the payment fails with it
        core(payments.confirm, shop, created["id"], "abcdef")
    assert (err.value.extra["status"], err.value.extra["attempts_remaining"]) == ("failed", 0)
    holder = holder_of(core, identifier)
    assert holder.locked_until == clock.now + dt.timedelta(minutes=30) and not holder.locked
    assert (holder.failures, holder.lock_count) == (0, 1)
    # The cardholder is told, in French, with no code in the text.
    notices = [t for t in queued_texts(core) if "bloque" in t]
    assert notices == [
        "id-tronic : trop de codes errones, votre compte est bloque pendant 30 min. "
        "Si ce n'est pas vous, contactez votre banque."
    ]
    assert not re.search(r"\d{6}", notices[0])
    # Locked: the merchant's answer is the unknown cardholder's; no profile code leaves.
    assert refusal(core, shop, identifier) == refusal(core, shop, "1234567897")
    core(profile.request_challenge, identifier)
    assert queued_texts(core) == [] and locked_count(core) == 1
    clock.advance(30 * MINUTE - 1)
    assert refusal(core, shop, identifier) == refusal(core, shop, "1234567897")
    clock.advance(1)  # the lock ends by itself, with a fresh budget
    assert locked_count(core) == 0
    created = pay(core, shop, identifier)
    for _ in range(2):
        with pytest.raises(InvalidToken):
            core(payments.confirm, shop, created["id"], "abcdef")
    assert holder_of(core, identifier).failures == 2
    (audit,) = core.raw(
        lambda s: s.scalars(sa.select(AuditEntry.detail).where(AuditEntry.action == "cardholder.lock")).all()
    )
    assert "payment" in audit and "until" in audit


def test_repeat_locks_double_and_a_success_or_an_unlock_starts_over(core, clock):  # type: ignore[no-untyped-def]
    identifier = active_cardholder(core, clock)
    shop = merchant(core)
    for minutes in (30, 60, 120):
        five_wrong_codes(core, shop, identifier)
        assert holder_of(core, identifier).locked_until == clock.now + dt.timedelta(minutes=minutes)
        clock.advance(minutes * MINUTE)
    queued_texts(core)
    created = pay(core, shop, identifier)
    token = next(t for t in queued_texts(core) if "pour payer" in t).split()[3]
    assert core(payments.confirm, shop, created["id"], token)["status"] == "validated"
    five_wrong_codes(core, shop, identifier)  # a success in between: 30 minutes again
    assert holder_of(core, identifier).locked_until == clock.now + dt.timedelta(minutes=30)
    clock.advance(30 * MINUTE)
    five_wrong_codes(core, shop, identifier)
    assert holder_of(core, identifier).locked_until == clock.now + dt.timedelta(minutes=60)
    assert core(enrollment.lock, identifier, False, "") == {"identifier": identifier, "locked": False}
    assert pay(core, shop, identifier)["status"] == "pending"  # unlock ends the lock at once
    clock.advance(10 * MINUTE)
    five_wrong_codes(core, shop, identifier)  # and resets the lengthening
    assert holder_of(core, identifier).locked_until == clock.now + dt.timedelta(minutes=30)


@pytest.fixture
def capped(db_url: str, clock: FakeClock) -> Iterator[BlockingCore]:
    budget = BudgetConfig(lock_duration=3600, lock_growth=3, max_lock_duration=5 * 3600)
    blocking = BlockingCore(db_url, make_rules(test_config(budget=budget), clock))
    yield blocking
    blocking.close()


def test_lock_lengths_are_configured_and_capped(capped, clock):  # type: ignore[no-untyped-def]
    identifier = active_cardholder(capped, clock)
    shop = merchant(capped)
    for hours in (1, 3, 5, 5):
        five_wrong_codes(capped, shop, identifier)
        assert holder_of(capped, identifier).locked_until == clock.now + dt.timedelta(hours=hours)
        assert [t for t in queued_texts(capped) if f"bloque pendant {hours} h." in t]
        clock.advance(hours * 3600)


def test_operator_lock_is_for_good(core, clock):  # type: ignore[no-untyped-def]
    identifier = active_cardholder(core, clock)
    shop = merchant(core)
    five_wrong_codes(core, shop, identifier)
    core(enrollment.lock, identifier, True, "fraud")  # over a temporary lock: for good
    clock.advance(30 * 86400)
    assert refusal(core, shop, identifier) == refusal(core, shop, "1234567897")
    assert locked_count(core) == 1
    core(enrollment.lock, identifier, False, "")
    assert pay(core, shop, identifier)["status"] == "pending"


def test_a_locked_enrollment_may_ask_for_a_callback_once_the_lock_ends(core, clock):  # type: ignore[no-untyped-def]
    identifier = enroll(core)
    for entries in (3, 2):  # 3 wrong entries fail the call, the 2nd of the next call is the 5th
        if entries == 2:
            core(enrollment.request_callback, identifier)
        clock.advance(11)
        job = core(callbacks.claim_due, "w1", 10)[0]
        core(callbacks.start_call, job.attempt_id)
        verdicts = [core(callbacks.check_card_digits, job.attempt_id, "00000000") for _ in range(entries)]
    assert verdicts == ["retry", "locked"]
    with pytest.raises(Conflict):
        core(enrollment.request_callback, identifier)
    clock.advance(30 * MINUTE)
    assert core(enrollment.request_callback, identifier)["status"] == "awaiting_callback"


def test_french_durations() -> None:
    assert [french_duration(s) for s in (1800, 3600, 5400, 86400 + 60, 59)] == [
        "30 min",
        "1 h",
        "1 h 30 min",
        "1 j 1 min",
        "1 min",
    ]


# ---- over HTTP ------------------------------------------------------------------------------------------


@pytest.fixture
def harness(sqlite_url: str, clock: FakeClock) -> AsyncIterator[ApiHarness]:
    h = ApiHarness(sqlite_url, api_config(test_config()), clock=clock)
    yield h
    pytest_twisted.blockon(Deferred.fromCoroutine(h.stop()))


@pytest_twisted.ensureDeferred
async def test_http_strangers_cannot_lock_and_the_operator_still_can(
    harness: ApiHarness, clock: FakeClock
) -> None:
    h = harness
    _, key = await h.merchant()
    identifier = await h.active_cardholder(FIRST8, LAST8)
    for _ in range(5):  # the reproduction
        wrong = await h.call("POST", "/v1/profile/sessions", {"identifier": identifier, "token": "123456"})
        assert wrong.status == 422 and wrong.body["error"] == "invalid_token"
    created = await h.call("POST", "/v1/payments", {**PAYMENT, "identifier": identifier}, key)
    assert created.status == 201, created.body  # not locked

    admin = f"/v1/admin/cardholders/{identifier}"
    assert (await h.call("POST", admin + "/lock", {"reason": "fraud"}, OPERATOR_KEY)).body["locked"] is True
    clock.advance(30 * 86400)
    refused = await h.call("POST", "/v1/payments", {**PAYMENT, "identifier": identifier}, key)
    unknown = await h.call("POST", "/v1/payments", {**PAYMENT, "identifier": "1234567897"}, key)
    assert refused.status == unknown.status == 422 and refused.body == unknown.body
    assert (await h.call("POST", admin + "/unlock", None, OPERATOR_KEY)).body["locked"] is False
    again = await h.call("POST", "/v1/payments", {**PAYMENT, "identifier": identifier}, key)
    assert again.status == 201
