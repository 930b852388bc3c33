"""Callbacks through Asterisk: the queue the AMI dialer drains (ports.CallbackQueue) and the verdicts
the IVR asks for (ports.IvrGateway). docs/rules.md §1.5, §1.6, §3.2, §4."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

from . import audit, budget
from .cards import luhn_valid
from .crypto import DecryptionError, public_id
from .models import CallbackAttempt, CallbackRequest, Cardholder, Challenge, Payment, SmsMessage
from .ports import CallbackJob, CallKind, CallOutcome, DigitsVerdict, IvrCall, SmsState, nobody
from .rules import Rules
from .states import (
    LIVE_ATTEMPTS,
    AttemptOutcome,
    AttemptState,
    CallbackState,
    CardholderStatus,
    EndReason,
    PaymentStatus,
)
from .suspension import global_state

# The core alone owns attempt deadlines: housekeeping's resolve_stale ends every live attempt past its
# deadline, whichever daemon placed it, even one that died, and an answered call whose FastAGI session never
# came. (The dialer only stops listening for an attempt past its deadline; it never decides its outcome.)
# Every step of an IVR call into the core moves the deadline on, so a long call is never cut short.


def _deadline(rules: Rules, now: dt.datetime) -> dt.datetime:
    return now + dt.timedelta(seconds=rules.settings.call_deadline)


def claim_due(s: Session, rules: Rules, worker: str, limit: int) -> list[CallbackJob]:
    now = rules.now()
    if global_state(s)[0]:
        return []
    if not rules.in_calling_hours(now):
        return []
    requests = s.scalars(
        select(CallbackRequest)
        .where(CallbackRequest.state == CallbackState.WAITING, CallbackRequest.next_call_at <= now)
        .order_by(CallbackRequest.next_call_at, CallbackRequest.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    jobs = []
    for request in requests:
        holder = s.get(Cardholder, request.cardholder_id)
        assert holder is not None
        if holder.suspended:
            continue  # stays queued until the cardholder is resumed
        locked = budget.is_locked(holder, now)
        if locked or (request.not_after is not None and request.not_after <= now):
            _close(s, rules, request, CallbackState.CANCELLED, "locked" if locked else "expired")
            continue
        request.state = CallbackState.IN_CALL
        request.calls_made += 1
        attempt = CallbackAttempt(
            id=public_id("cb_"),
            request_id=request.id,
            attempt_no=request.calls_made,
            state=AttemptState.DIALING,
            worker=worker,
            created_at=now,
            deadline=_deadline(rules, now),
        )
        s.add(attempt)
        if request.kind == CallKind.ENROLL:
            holder.status = CardholderStatus.CALLING
        jobs.append(
            CallbackJob(
                attempt.id, CallKind(request.kind), request.mobile, attempt.attempt_no, attempt.deadline
            )
        )
    return jobs


def _attempt(s: Session, attempt_id: str) -> tuple[CallbackAttempt, CallbackRequest, Cardholder] | None:
    attempt = s.get(CallbackAttempt, attempt_id, with_for_update=True)
    if attempt is None:
        return None
    request = s.get(CallbackRequest, attempt.request_id, with_for_update=True)
    assert request is not None
    holder = s.get(Cardholder, request.cardholder_id, with_for_update=True)
    assert holder is not None
    return attempt, request, holder


def mark_originated(s: Session, rules: Rules, attempt_id: str, action_id: str) -> None:
    found = _attempt(s, attempt_id)
    if found and found[0].state == AttemptState.DIALING:
        found[0].state, found[0].action_id = AttemptState.ORIGINATED, action_id


def unresolved(
    s: Session, rules: Rules, worker: str, gone: Callable[[str], bool] = nobody
) -> list[CallbackJob]:
    """Attempts placed by this worker's previous run, or by workers `gone` says are dead, and not
    resolved yet."""
    live = CallbackAttempt.state.in_((AttemptState.DIALING, AttemptState.ORIGINATED))
    others = s.scalars(
        select(CallbackAttempt.worker).where(live, CallbackAttempt.worker != worker).distinct()
    )
    names = [worker, *(name for name in others if gone(name))]
    rows = s.execute(
        select(CallbackAttempt, CallbackRequest)
        .join(CallbackRequest, CallbackRequest.id == CallbackAttempt.request_id)
        .where(CallbackAttempt.worker.in_(names), live)
    ).all()
    return [CallbackJob(a.id, CallKind(r.kind), r.mobile, a.attempt_no, a.deadline) for a, r in rows]


def apply_outcome(s: Session, rules: Rules, attempt_id: str, outcome: CallOutcome, detail: str) -> None:
    found = _attempt(s, attempt_id)
    if found is None:
        return
    attempt, request, holder = found
    if attempt.state == AttemptState.ENDED:
        return  # idempotent: a late event after the IVR or the deadline already decided
    if outcome == CallOutcome.ANSWERED or attempt.state in (AttemptState.ANSWERED, AttemptState.IN_IVR):
        if attempt.state in (AttemptState.DIALING, AttemptState.ORIGINATED):
            attempt.state, attempt.answered_at = AttemptState.ANSWERED, rules.now()
        return  # the IVR session decides (or the deadline, when it never arrives)
    _end_attempt(s, rules, attempt, request, holder, AttemptOutcome(outcome.value), detail)


def _finish_attempt(
    rules: Rules, attempt: CallbackAttempt, outcome: AttemptOutcome, detail: str = ""
) -> None:
    attempt.state, attempt.outcome, attempt.ended_at = AttemptState.ENDED, outcome, rules.now()
    attempt.detail = detail[:500]


def _end_attempt(
    s: Session,
    rules: Rules,
    attempt: CallbackAttempt,
    request: CallbackRequest,
    holder: Cardholder,
    outcome: AttemptOutcome,
    detail: str,
) -> None:
    """A call that ended without a verdict: retry later, or give up after max_calls (docs/rules.md §1.5)."""
    _finish_attempt(rules, attempt, outcome, detail)
    if request.state != CallbackState.IN_CALL:
        return
    audit.record(s, rules, "ivr", "callback.attempt", f"cardholder:{holder.identifier}", outcome=outcome)
    cfg = rules.settings.callback
    if request.calls_made < cfg.max_calls and not budget.is_locked(holder, rules.now()):
        request.state = CallbackState.WAITING
        request.next_call_at = rules.next_call_time(rules.now() + dt.timedelta(seconds=cfg.retry_interval))
        if request.kind == CallKind.ENROLL:
            holder.status = CardholderStatus.AWAITING_CALLBACK
        return
    _close(s, rules, request, CallbackState.FAILED, f"no verdict after {request.calls_made} calls")
    if request.kind != CallKind.VOICE_TOKEN:
        budget.record_failure(s, rules, holder, "phone")


def _close(s: Session, rules: Rules, request: CallbackRequest, state: CallbackState, why: str) -> None:
    request.state, request.finished_at, request.next_call_at = state, rules.now(), None
    holder = s.get(Cardholder, request.cardholder_id)
    assert holder is not None
    if state == CallbackState.SUCCEEDED:
        return
    enrolling = (CardholderStatus.AWAITING_CALLBACK, CardholderStatus.CALLING)
    if request.kind == CallKind.ENROLL and holder.status in enrolling:
        holder.status = CardholderStatus.FAILED  # first8_enc is kept: a new callback may be requested
    elif request.kind == CallKind.MOBILE_CHANGE and holder.mobile_pending == request.mobile:
        holder.mobile_pending = None
    audit.record(
        s, rules, "ivr", f"callback.{state}", f"cardholder:{holder.identifier}", kind=request.kind, why=why
    )


# --------------------------------------------------------------------------------------------------------
# IVR gateway


def start_call(s: Session, rules: Rules, attempt_id: str) -> IvrCall | None:
    found = _attempt(s, attempt_id)
    if found is None:
        return None
    attempt, request, holder = found
    waiting_for_ivr = (AttemptState.DIALING, AttemptState.ORIGINATED, AttemptState.ANSWERED)
    if attempt.state not in waiting_for_ivr or request.state != CallbackState.IN_CALL:
        return None  # finished, or a second session for one attempt
    if budget.is_locked(holder, rules.now()) or holder.suspended:
        return None
    token = None
    if request.kind == CallKind.VOICE_TOKEN:
        challenge = s.get(Challenge, request.challenge_id) if request.challenge_id else None
        if challenge is None or challenge.token_enc is None or challenge.used_at or challenge.revoked:
            return None
        if challenge.expires_at <= rules.now():
            return None
        token = rules.vault.decrypt("voice-token", challenge.token_enc)
    now = rules.now()
    attempt.state, attempt.answered_at = AttemptState.IN_IVR, attempt.answered_at or now
    attempt.deadline = _deadline(rules, now)
    return IvrCall(attempt.id, CallKind(request.kind), token)


def _complete_entry(last8: str) -> bool:
    return len(last8) == 8 and last8.isascii() and last8.isdigit()


def check_card_digits(s: Session, rules: Rules, attempt_id: str, last8: str) -> DigitsVerdict:
    """One DTMF entry. The core alone counts entries (callback.max_entries per call): the IVR asks again
    on RETRY and stops on any other verdict. An entry that is not 8 digits (timeout, too short, `*`) is
    asked again without touching the failure budget; only a complete entry that fails the checks counts."""
    found = _attempt(s, attempt_id)
    if found is None or found[0].state != AttemptState.IN_IVR or found[1].state != CallbackState.IN_CALL:
        return DigitsVerdict.FAILED
    attempt, request, holder = found
    if request.kind not in (CallKind.ENROLL, CallKind.MOBILE_CHANGE):
        return DigitsVerdict.FAILED
    attempt.entries_used += 1
    last_entry = attempt.entries_used >= rules.settings.callback.max_entries
    if not _complete_entry(last8):
        why = "no complete entry"
    else:
        accepted, why = _card_matches(s, rules, request, holder, last8)
        if accepted:
            _finish_attempt(rules, attempt, AttemptOutcome.ACCEPTED)
            _accept(s, rules, request, holder)
            return DigitsVerdict.ACCEPTED
        locked = budget.record_failure(s, rules, holder, "phone")
        audit.record(s, rules, "ivr", "callback.wrong-entry", f"cardholder:{holder.identifier}", why=why)
        if locked:
            _finish_attempt(rules, attempt, AttemptOutcome.LOCKED)
            _close(s, rules, request, CallbackState.FAILED, "locked")
            return DigitsVerdict.LOCKED
        last_entry = last_entry or why == "card already enrolled"
    if last_entry:
        _finish_attempt(rules, attempt, AttemptOutcome.FAILED, why)
        _close(s, rules, request, CallbackState.FAILED, why)
        return DigitsVerdict.FAILED
    attempt.deadline = _deadline(rules, rules.now())
    return DigitsVerdict.RETRY


def _card_matches(
    s: Session, rules: Rules, request: CallbackRequest, holder: Cardholder, last8: str
) -> tuple[bool, str]:
    """The full number exists only here, in memory, for the checks. Reasons carry no digits."""
    if request.kind == CallKind.MOBILE_CHANGE:
        if holder.card_fingerprint is None:
            return False, "no card on file"
        first8 = rules.vault.decrypt("card", holder.card_enc)[:8] if holder.card_enc else ""
        pan = first8 + last8
        ok = rules.vault.matches("card", pan, holder.card_fingerprint)
        return ok, "" if ok else "does not match the card on file"
    try:
        first8 = rules.vault.decrypt("card-first8", holder.first8_enc or b"")
    except DecryptionError:
        return False, "first digits unreadable"
    pan = first8 + last8
    if not luhn_valid(pan) or not rules.prefixes.accepts(pan):
        return False, "Luhn check failed"
    fingerprints = rules.vault.digests("card", pan)  # a card enrolled before a key rotation too
    other = s.scalar(
        select(Cardholder.id).where(Cardholder.card_fingerprint.in_(fingerprints), Cardholder.id != holder.id)
    )
    if other is not None:
        return False, "card already enrolled"
    holder.card_enc = rules.vault.encrypt("card", pan)
    holder.card_fingerprint = fingerprints[0]
    return True, ""


def _accept(s: Session, rules: Rules, request: CallbackRequest, holder: Cardholder) -> None:
    now = rules.now()
    budget.record_success(rules, holder)
    _close(s, rules, request, CallbackState.SUCCEEDED, "")
    if request.kind == CallKind.ENROLL:
        holder.status, holder.activated_at, holder.first8_enc = CardholderStatus.ACTIVE, now, None
        audit.record(s, rules, "ivr", "enrollment.active", f"cardholder:{holder.identifier}")
    else:
        holder.mobile, holder.mobile_pending = request.mobile, None
        audit.record(s, rules, "ivr", "profile.mobile-changed", f"cardholder:{holder.identifier}")
    holder.updated_at = now


def end_call(s: Session, rules: Rules, attempt_id: str, reason: EndReason) -> None:
    reason = EndReason(reason)  # a stray string fails here, loudly, rather than in a comparison
    found = _attempt(s, attempt_id)
    if found is None:
        return
    attempt, request, holder = found
    if attempt.state == AttemptState.ENDED:
        return
    if reason is EndReason.PROMPT_MISSING:
        # Our installation is broken (a sound file missing on the Asterisk server): a retry would fail the
        # same way, so the request fails at once, without touching the cardholder's failure budget.
        _finish_attempt(rules, attempt, AttemptOutcome.PROMPT_MISSING, "a prompt file is missing")
        _close(s, rules, request, CallbackState.FAILED, "prompt file missing on the Asterisk server")
        return
    if request.kind == CallKind.VOICE_TOKEN and reason is EndReason.COMPLETED:
        _finish_attempt(rules, attempt, AttemptOutcome.COMPLETED)
        _close(s, rules, request, CallbackState.SUCCEEDED, "")
        return
    _end_attempt(s, rules, attempt, request, holder, AttemptOutcome.NO_VERDICT, reason)


# --------------------------------------------------------------------------------------------------------
# Housekeeping


def resolve_stale(s: Session, rules: Rules) -> int:
    """Attempts past their deadline with no outcome (their daemon died, or AMI lost the event)."""
    now = rules.now()
    stale = s.scalars(
        select(CallbackAttempt.id).where(
            CallbackAttempt.state.in_(LIVE_ATTEMPTS), CallbackAttempt.deadline < now
        )
    ).all()
    resolved = 0
    for attempt_id in stale:
        found = _attempt(s, attempt_id)
        if found is None or found[0].state not in LIVE_ATTEMPTS or found[0].deadline >= now:
            continue  # decided (or moved on by the IVR) since the query
        attempt, request, holder = found
        _end_attempt(s, rules, attempt, request, holder, AttemptOutcome.UNKNOWN, "deadline passed")
        resolved += 1
    return resolved


def schedule_voice_fallbacks(s: Session, rules: Rules) -> int:
    """A payment token whose SMS is undeliverable, or has no receipt after `no_receipt_after`, is read out
    by phone (docs/rules.md §2, voice fallback; off by default)."""
    cfg = rules.settings.voice_fallback
    if not cfg.enabled:
        return 0
    now = rules.now()
    late = now - dt.timedelta(seconds=cfg.no_receipt_after)
    rows = s.execute(
        select(SmsMessage, Challenge)
        .join(Challenge, Challenge.id == SmsMessage.challenge_id)
        .join(Payment, Payment.id == SmsMessage.payment_id)
        .where(
            Payment.status == PaymentStatus.PENDING,
            Challenge.token_enc.is_not(None),
            Challenge.expires_at > now,
            Challenge.revoked.is_(False),
            (
                (SmsMessage.state == SmsState.UNDELIVERABLE)
                | ((SmsMessage.state == SmsState.SUBMITTED) & (SmsMessage.submitted_at < late))
            ),
            ~select(CallbackRequest.id).where(CallbackRequest.challenge_id == Challenge.id).exists(),
        )
        .with_for_update(skip_locked=True)
    ).all()
    for sms, challenge in rows:
        holder = s.get(Cardholder, challenge.cardholder_id)
        assert holder is not None
        s.add(
            CallbackRequest(
                cardholder_id=holder.id,
                kind=CallKind.VOICE_TOKEN.value,
                mobile=sms.destination,
                state=CallbackState.WAITING,
                next_call_at=now,
                not_after=challenge.expires_at,
                challenge_id=challenge.id,
                created_at=now,
            )
        )
        audit.record(s, rules, "system", "voice-fallback", f"payment:{sms.payment_id}", sms=sms.state)
    return len(rows)
