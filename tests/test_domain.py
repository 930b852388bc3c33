"""Domain rules of docs/rules.md §1-§6, on SQLite and PostgreSQL, without a reactor."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from domain_helpers import (
    FIRST8,
    IDENTITY,
    LAST8,
    active_cardholder,
    answer_call,
    enroll,
    merchant,
    sent_tokens,
)

from idtronic_tel.core import callbacks, enrollment, outbox, payments, profile, suspension
from idtronic_tel.core.errors import (
    Conflict,
    IdempotencyConflict,
    InvalidInput,
    InvalidToken,
    NotFound,
    NotPending,
    PaymentRefused,
    RateLimited,
    ResendLimit,
)
from idtronic_tel.core.models import AuditEntry, CallbackAttempt, Cardholder, SmsMessage
from idtronic_tel.core.ports import CallOutcome, DigitsVerdict, Recovered
from idtronic_tel.core.states import EndReason

BODY = {"amount": 4990, "currency": "EUR", "reference": "order-1"}


def pay(core, shop, identifier, key=None, **extra):  # type: ignore[no-untyped-def]
    return core(payments.create, shop, {**BODY, "identifier": identifier, **extra}, key, "digest")[1]


# ---- §1 enrollment ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("mobile", "01 45 67 89 00", "not a mobile number"),
        ("mobile", "hello", "not a phone number"),
        ("card_first8", "1234567", "exactly 8 digits"),
        ("card_first8", "60111111", "this card is not accepted by the service"),
        ("birth_date", "1985-13-01", "a date YYYY-MM-DD"),
        ("last_name", "", "1 to 100 printable characters"),
    ],
)
def test_enrollment_refuses_bad_fields(core, field, value, problem):  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidInput) as err:
        enroll(core, **{field: value})
    assert err.value.extra["fields"][field] == problem


def test_identifier_is_ten_digits_with_luhn_and_random(core):  # type: ignore[no-untyped-def]
    from idtronic_tel.core.cards import luhn_valid

    ids = {enroll(core) for _ in range(5)}
    assert len(ids) == 5
    assert all(len(i) == 10 and luhn_valid(i) for i in ids)


def test_callback_waits_first_delay_then_accepts_valid_card(core, clock):  # type: ignore[no-untyped-def]
    identifier = enroll(core)
    assert core(callbacks.claim_due, "w1", 10) == []  # first call after 10 s
    clock.advance(11)
    assert answer_call(core) == DigitsVerdict.ACCEPTED
    assert core(enrollment.status, identifier)["status"] == "active"

    def stored(s):  # type: ignore[no-untyped-def]
        return s.scalar(sa.select(Cardholder).where(Cardholder.identifier == identifier))

    holder = core.raw(stored)
    assert holder.first8_enc is None and holder.card_enc and holder.card_fingerprint
    assert FIRST8 not in repr(holder.card_enc) and core.rules.vault.decrypt("card", holder.card_enc).endswith(
        LAST8
    )


def test_three_wrong_entries_fail_and_budget_is_shared_across_calls(core, clock):  # type: ignore[no-untyped-def]
    identifier = enroll(core)
    clock.advance(11)
    job = core(callbacks.claim_due, "w1", 10)[0]
    core(callbacks.start_call, job.attempt_id)
    verdicts = [core(callbacks.check_card_digits, job.attempt_id, "00000000") for _ in range(3)]
    assert verdicts == ["retry", "retry", "failed"]
    assert core(enrollment.status, identifier)["status"] == "failed"
    core(enrollment.request_callback, identifier)
    clock.advance(11)
    job = core(callbacks.claim_due, "w1", 10)[0]
    core(callbacks.start_call, job.attempt_id)
    assert core(callbacks.check_card_digits, job.attempt_id, "00000000") == "retry"
    assert core(callbacks.check_card_digits, job.attempt_id, "00000000") == "locked"  # 5th failure
    with pytest.raises(Conflict):
        core(enrollment.request_callback, identifier)


def test_incomplete_entries_are_asked_again_without_touching_the_budget(core, clock):  # type: ignore[no-untyped-def]
    identifier = enroll(core)
    clock.advance(11)
    job = core(callbacks.claim_due, "w1", 10)[0]
    core(callbacks.start_call, job.attempt_id)
    verdicts = [
        core(callbacks.check_card_digits, job.attempt_id, keyed) for keyed in ("", "1234", "1234*678")
    ]
    assert verdicts == ["retry", "retry", "failed"]  # still at most 3 entries per call
    holder = core.raw(lambda s: s.scalar(sa.select(Cardholder).where(Cardholder.identifier == identifier)))
    assert holder.failures == 0 and not holder.locked
    assert core(enrollment.status, identifier)["status"] == "failed"  # a new callback may be asked for
    attempt = core.raw(lambda s: s.get(CallbackAttempt, job.attempt_id))
    assert (attempt.outcome, attempt.detail, attempt.entries_used) == ("failed", "no complete entry", 3)


def test_missing_prompt_fails_the_request_at_once_without_budget(core, clock):  # type: ignore[no-untyped-def]
    identifier = enroll(core)
    clock.advance(11)
    job = core(callbacks.claim_due, "w1", 10)[0]
    core(callbacks.start_call, job.attempt_id)
    core(callbacks.end_call, job.attempt_id, EndReason.PROMPT_MISSING)
    attempt = core.raw(lambda s: s.get(CallbackAttempt, job.attempt_id))
    assert (attempt.state, attempt.outcome) == ("ended", "prompt_missing")
    assert core(enrollment.status, identifier)["status"] == "failed"
    holder = core.raw(lambda s: s.scalar(sa.select(Cardholder).where(Cardholder.identifier == identifier)))
    assert holder.failures == 0
    clock.advance(3600)
    assert core(callbacks.claim_due, "w1", 10) == []  # no automatic retry: the installation is broken
    (audit,) = core.raw(
        lambda s: s.scalars(sa.select(AuditEntry.detail).where(AuditEntry.action == "callback.failed")).all()
    )
    assert "prompt file missing" in audit


def test_end_reasons_are_the_core_enum(core, clock):  # type: ignore[no-untyped-def]
    enroll(core)
    clock.advance(11)
    job = core(callbacks.claim_due, "w1", 10)[0]
    with pytest.raises(ValueError):
        core(callbacks.end_call, job.attempt_id, "finished")  # the old IVR word can never slip through


def test_busy_calls_are_retried_five_minutes_apart_then_fail(core, clock):  # type: ignore[no-untyped-def]
    identifier = enroll(core)
    clock.advance(11)
    for n in range(3):
        jobs = core(callbacks.claim_due, "w1", 10)
        assert [j.attempt_no for j in jobs] == [n + 1]
        assert core(callbacks.claim_due, "w1", 10) == []  # one live call per request
        core(callbacks.apply_outcome, jobs[0].attempt_id, CallOutcome.BUSY, "Reason 5")
        clock.advance(299)
        assert core(callbacks.claim_due, "w1", 10) == []
        clock.advance(2)
    assert core(enrollment.status, identifier)["status"] == "failed"


def test_calls_wait_for_calling_hours(core, clock):  # type: ignore[no-untyped-def]
    import datetime as dt

    clock.now = dt.datetime(2026, 11, 24, 20, 59, 55, tzinfo=dt.UTC)  # 21:59 in Paris
    identifier = enroll(core)
    clock.advance(20)
    assert core(callbacks.claim_due, "w1", 10) == []
    assert core(enrollment.status, identifier)["next_call_at"].startswith("2026-11-25T07:00")
    clock.now = dt.datetime(2026, 11, 25, 7, 0, 1, tzinfo=dt.UTC)
    assert len(core(callbacks.claim_due, "w1", 10)) == 1


def test_unknown_or_finished_attempt_is_refused(core, clock):  # type: ignore[no-untyped-def]
    assert core(callbacks.start_call, "cb_nope") is None
    active_cardholder(core, clock)
    (attempt_id,) = core.raw(lambda s: s.scalars(sa.text("select id from callback_attempts")).all())
    assert core(callbacks.start_call, attempt_id) is None


def test_stale_attempt_resolved_after_deadline_then_retried(core, clock):  # type: ignore[no-untyped-def]
    enroll(core)
    clock.advance(11)
    job = core(callbacks.claim_due, "w1", 10)[0]
    core(callbacks.mark_originated, job.attempt_id, "cb-x")
    clock.advance(core.rules.settings.call_deadline + 1)
    assert core(callbacks.resolve_stale) == 1
    clock.advance(300)
    assert [j.attempt_no for j in core(callbacks.claim_due, "w1", 10)] == [2]
    core(callbacks.apply_outcome, job.attempt_id, CallOutcome.ANSWERED, "late event")  # ignored: ended


def test_a_restarted_dialer_watches_what_dead_workers_left_unresolved(core, clock):  # type: ignore[no-untyped-def]
    enroll(core)
    enroll(core, card_first8="49761235", mobile="+33611223355")
    clock.advance(11)
    dead, alive = core(callbacks.claim_due, "host:101", 1)[0], core(callbacks.claim_due, "host:102", 1)[0]
    gone = {"host:101"}.__contains__
    assert core(callbacks.unresolved, "host:200") == []
    assert [j.attempt_id for j in core(callbacks.unresolved, "host:200", gone)] == [dead.attempt_id]
    mine = {j.attempt_id for j in core(callbacks.unresolved, "host:102", gone)}
    assert mine == {dead.attempt_id, alive.attempt_id}
    assert core(callbacks.unresolved, "host:200", {"host:103"}.__contains__) == []  # live ones stay theirs


def test_same_card_cannot_be_enrolled_twice(core, clock):  # type: ignore[no-untyped-def]
    active_cardholder(core, clock)
    second = enroll(core)
    clock.advance(11)
    assert answer_call(core) == DigitsVerdict.FAILED
    assert core(enrollment.status, second)["status"] == "failed"


# ---- §2 purchase -------------------------------------------------------------------------------------


def test_payment_token_validates_once(core, clock):  # type: ignore[no-untyped-def]
    identifier = active_cardholder(core, clock)
    shop = merchant(core, domain="boutique.example.fr")
    created = pay(core, shop, identifier)
    assert (
        created["status"] == "pending" and created["sms"] == "queued" and created["attempts_remaining"] == 3
    )
    [(destination, token)] = sent_tokens(core)
    assert destination == "+33611223344"
    wrong = "000000" if token != "000000" else "111111"
    with pytest.raises(InvalidToken) as err:
        core(payments.confirm, shop, created["id"], wrong)
    assert err.value.extra["attempts_remaining"] == 2
    assert core(payments.confirm, shop, created["id"], token)["status"] == "validated"
    with pytest.raises(NotPending) as again:
        core(payments.confirm, shop, created["id"], token)
    assert again.value.extra["status"] == "validated"


def test_sms_text_names_merchant_amount_and_domain(core, clock):  # type: ignore[no-untyped-def]
    identifier = active_cardholder(core, clock)
    shop = merchant(core, domain="boutique.example.fr")
    pay(core, shop, identifier)
    [sms] = core(outbox.claim, "w", 10, 40.0)
    assert "49,90 EUR chez Boutique Exemple" in sms.text and "Valable 5 min" in sms.text
    assert sms.text.endswith("@boutique.example.fr #" + sms.text.split("code ")[1][:6])


def test_three_wrong_tokens_fail_the_payment(core, clock):  # type: ignore[no-untyped-def]
    identifier = active_cardholder(core, clock)
    shop = merchant(core)
    created = pay(core, shop, identifier)
    [(_, token)] = sent_tokens(core)
    wrong = "000000" if token != "000000" else "111111"
    for left in (2, 1, 0):
        with pytest.raises(InvalidToken) as err:
            core(payments.confirm, shop, created["id"], wrong)
        assert err.value.extra["attempts_remaining"] == left
    with pytest.raises(NotPending):
        core(payments.confirm, shop, created["id"], token)
    assert core(payments.get, shop, created["id"])["status"] == "failed"


def test_failure_budget_shared_and_never_reset_by_new_codes(core, clock):  # type: ignore[no-untyped-def]
    identifier = active_cardholder(core, clock)
    shop = merchant(core)
    for _ in range(2):  # 2 payments x 2 wrong tokens = 4 failures, with new codes in between
        created = pay(core, shop, identifier)
        for _ in range(2):
            with pytest.raises(InvalidToken):
                core(payments.confirm, shop, created["id"], "999999x"[:6] if False else "abcdef")
    core(profile.request_challenge, identifier)
    with pytest.raises(InvalidToken):
        core(profile.open_session, identifier, "000000")  # 5th failure: profile channel
    with pytest.raises(PaymentRefused):
        pay(core, shop, identifier)
    core(enrollment.lock, identifier, False, "")
    assert pay(core, shop, identifier)["status"] == "pending"


def test_unknown_locked_suspended_cardholders_get_the_same_refusal(core, clock):  # type: ignore[no-untyped-def]
    shop = merchant(core)
    locked = active_cardholder(core, clock)
    core(enrollment.lock, locked, True, "fraud")
    suspended = active_cardholder(core, clock, card_first8="51234567")
    core(suspension.suspend, "maintenance", cardholder=suspended)
    messages = set()
    for identifier in ("1234567897", locked, suspended):
        with pytest.raises(PaymentRefused) as err:
            pay(core, shop, identifier)
        messages.add((err.value.code, err.value.message, tuple(err.value.extra)))
    assert len(messages) == 1


def test_token_expires_and_expired_sms_is_never_sent(core, clock):  # type: ignore[no-untyped-def]
    identifier = active_cardholder(core, clock)
    shop = merchant(core)
    created = pay(core, shop, identifier)
    clock.advance(301)
    assert core(outbox.claim, "w", 10, 40.0) == []
    with pytest.raises(NotPending) as err:
        core(payments.confirm, shop, created["id"], "123456")
    assert err.value.extra["status"] == "expired"
    view = core(payments.get, shop, created["id"])
    assert view["status"] == "expired" and view["sms"] == "expired"


def test_resend_rules(core, clock):  # type: ignore[no-untyped-def]
    identifier = active_cardholder(core, clock)
    shop = merchant(core)
    created = pay(core, shop, identifier)
    [(_, first)] = sent_tokens(core)
    with pytest.raises(RateLimited) as err:
        core(payments.resend, shop, created["id"])
    assert 1 <= err.value.retry_after <= 30
    clock.advance(30)
    core(payments.resend, shop, created["id"])
    [(_, second)] = sent_tokens(core)
    if first != second:
        with pytest.raises(InvalidToken):  # the old code is dead
            core(payments.confirm, shop, created["id"], first)
    for _ in range(2):
        clock.advance(30)
        core(payments.resend, shop, created["id"])
    clock.advance(30)
    with pytest.raises(ResendLimit) as used:
        core(payments.resend, shop, created["id"])  # at most 3 resends, for good: no retry_after
    assert used.value.extra == {"max_resends": 3} and not hasattr(used.value, "retry_after")


def test_tokens_rate_limited_per_cardholder(core, clock):  # type: ignore[no-untyped-def]
    identifier = active_cardholder(core, clock)
    shop = merchant(core)
    for n in range(5):
        pay(core, shop, identifier, reference=f"o{n}")
    with pytest.raises(RateLimited) as err:
        pay(core, shop, identifier)
    assert 500 < err.value.retry_after <= 600


def test_idempotency_key_replays_or_conflicts(core, clock):  # type: ignore[no-untyped-def]
    identifier = active_cardholder(core, clock)
    shop = merchant(core)
    body = {**BODY, "identifier": identifier}
    first = core(payments.create, shop, body, "key-1", "d1")
    again = core(payments.create, shop, body, "key-1", "d1")
    assert first == again
    assert len(sent_tokens(core)) == 1
    with pytest.raises(IdempotencyConflict):
        core(payments.create, shop, {**body, "amount": 1}, "key-1", "d2")


def test_merchants_are_isolated(core, clock):  # type: ignore[no-untyped-def]
    identifier = active_cardholder(core, clock)
    shop, other = merchant(core), merchant(core, "Autre")
    created = pay(core, shop, identifier)
    for action in (payments.get, payments.cancel, payments.resend):
        with pytest.raises(NotFound):
            core(action, other, created["id"])


def test_receipts_update_the_payment_sms_state(core, clock):  # type: ignore[no-untyped-def]
    identifier = active_cardholder(core, clock)
    shop = merchant(core)
    created = pay(core, shop, identifier)
    [sms] = core(outbox.claim, "w", 10, 40.0)
    assert core(payments.get, shop, created["id"])["sms"] == "queued"
    core(outbox.mark_submitted, "w", sms.sms_id, ["0000AB01", "0000AB02"], "smsc1", 0)
    assert core(payments.get, shop, created["id"])["sms"] == "submitted"
    assert core(outbox.apply_receipt, "0000AB01", "delivered")
    assert core(payments.get, shop, created["id"])["sms"] == "submitted"  # one part still travelling
    assert core(outbox.apply_receipt, "0000AB02", "delivered")
    assert core(payments.get, shop, created["id"])["sms"] == "delivered"
    assert not core(outbox.apply_receipt, "FFFFFFFF", "delivered")


def test_crash_recovery_sends_again_while_valid_and_drops_the_expired(core, clock):  # type: ignore[no-untyped-def]
    identifier = active_cardholder(core, clock)
    shop = merchant(core)
    created = pay(core, shop, identifier)
    [first] = core(outbox.claim, "w", 10, 40.0)
    assert core(outbox.recover, "other") == Recovered()  # not its claim
    assert core(outbox.recover, "w") == Recovered(resent=1)
    [again] = core(outbox.claim, "w", 10, 40.0)
    assert (again.sms_id, again.text, again.resends) == (first.sms_id, first.text, 1)
    assert core(payments.get, shop, created["id"])["sms"] == "queued"
    clock.advance(50)  # the lease (40 s) ran out: another worker takes the claim over
    assert core(outbox.recover_stale, "w", [first.sms_id]) == Recovered()  # w holds it (renewals failing)
    assert core(outbox.recover_stale, "w2", []) == Recovered(resent=1)
    [third] = core(outbox.claim, "w2", 10, 40.0)
    assert third.resends == 2
    core(outbox.mark_submitted, "w", third.sms_id, ["LATE"], "smsc1", 2)  # no longer w's to record
    assert core(payments.get, shop, created["id"])["sms"] == "queued"
    clock.advance(300)  # the token expires while w2's claim is left on the wire
    assert core(outbox.recover, "w2") == Recovered(expired=1)
    assert core(payments.get, shop, created["id"])["sms"] == "expired"


def test_a_restarted_daemon_takes_over_at_once_what_dead_workers_of_its_host_left(core, clock):  # type: ignore[no-untyped-def]
    """Default worker names carry the pid (workers.py): a restarted daemon has a new name, and `recover`
    takes over the claims of the names `gone` reports dead, not those of live workers."""
    identifier = active_cardholder(core, clock)
    shop = merchant(core)
    for _ in range(3):
        pay(core, shop, identifier)
    [left] = core(outbox.claim, "host:101", 1, 40.0)  # its process died
    [held] = core(outbox.claim, "host:102", 1, 40.0)  # alive
    [own] = core(outbox.claim, "sms-1", 1, 40.0)  # a configured name: found by name
    gone = {"host:101"}.__contains__
    assert core(outbox.recover, "host:200", gone) == Recovered(resent=1)
    assert [sms.sms_id for sms in core(outbox.claim, "host:200", 10, 40.0)] == [left.sms_id]
    assert core(outbox.recover, "host:201", gone) == Recovered()  # nothing left: host:200 holds it now
    assert core(outbox.recover, "sms-1", gone) == Recovered(resent=1)
    assert [sms.sms_id for sms in core(outbox.claim, "sms-1", 10, 40.0)] == [own.sms_id]
    assert held.sms_id not in {left.sms_id, own.sms_id}


# ---- §3 personal section ------------------------------------------------------------------------------


def test_profile_session_and_mobile_change_by_callback(core, clock):  # type: ignore[no-untyped-def]
    identifier = active_cardholder(core, clock)
    core(profile.request_challenge, "1234567897")  # unknown: same (silent) outcome
    core(profile.request_challenge, identifier)
    [(_, token)] = sent_tokens(core)
    session = core(profile.open_session, identifier, token)["session"]
    with pytest.raises(InvalidToken):  # single use
        core(profile.open_session, identifier, token)
    view = core(profile.update, session, {"mobile": "+33 6 98 76 54 32", "first_name": "Claire-Marie"})
    assert view["mobile"] == "+33611223344" and view["mobile_pending"] == "+33698765432"
    assert view["card"].startswith("497612") and view["card"].endswith(LAST8[-4:]) and "*" in view["card"]
    [(old_number, notice_token)] = sent_tokens(core)
    assert old_number == "+33611223344" and notice_token == ""
    clock.advance(11)
    assert answer_call(core, "00000000") == "retry"
    assert core(profile.get, session)["mobile_pending"] == "+33698765432"
    clock.advance(301)
    with pytest.raises(Exception, match="expired"):
        core(profile.get, session)  # 5 minutes idle
    assert answer_call(core) == "accepted"

    def mobile(s):  # type: ignore[no-untyped-def]
        return s.scalar(sa.select(Cardholder.mobile).where(Cardholder.identifier == identifier))

    assert core.raw(mobile) == "+33698765432"


# ---- §5 suspension, §6 audit ----------------------------------------------------------------------------


def test_suspension_holds_work_and_resume_releases_it(core, clock):  # type: ignore[no-untyped-def]
    identifier = active_cardholder(core, clock)
    shop = merchant(core)
    pay(core, shop, identifier)
    enroll(core, card_first8="51234567")
    clock.advance(11)
    core(suspension.suspend, "Maintenance ce soir")
    assert core.raw(suspension.global_state) == (True, "Maintenance ce soir")
    assert core(outbox.claim, "w", 10, 40.0) == [] and core(callbacks.claim_due, "w", 10) == []
    core(suspension.resume)
    assert len(core(outbox.claim, "w", 10, 40.0)) == 1 and len(core(callbacks.claim_due, "w", 10)) == 1


def test_audit_log_is_append_only(core, clock):  # type: ignore[no-untyped-def]
    active_cardholder(core, clock)

    def tamper(s):  # type: ignore[no-untyped-def]
        s.execute(sa.update(AuditEntry).values(actor="nobody"))

    with pytest.raises(sa.exc.DBAPIError, match="append-only"):
        core.raw(tamper)
    actions = core.raw(lambda s: s.scalars(sa.select(AuditEntry.action)).all())
    assert "enrollment.create" in actions and "enrollment.active" in actions


def test_sms_bodies_are_encrypted_at_rest(core, clock):  # type: ignore[no-untyped-def]
    identifier = active_cardholder(core, clock)
    pay(core, merchant(core), identifier)
    bodies = core.raw(lambda s: s.scalars(sa.select(SmsMessage.body_enc)).all())
    assert bodies and all(b"code" not in body for body in bodies)
    assert IDENTITY["last_name"]  # identity is not secret; card digits and tokens are
