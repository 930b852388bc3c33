"""Callbacks through Asterisk: the queue the AMI dialer drains (ports.CallbackQueue) and the verdicts
the IVR asks for (ports.IvrGateway). PRODUCT §1.5, §1.6, §3.2, §4."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select
from sqlalchemy.orm import Session

from . import audit, budget
from .cards import luhn_valid
from .crypto import DecryptionError, public_id
from .models import CallbackAttempt, CallbackRequest, Cardholder, Challenge, Payment, SmsMessage
from .ports import CallbackJob, CallKind, CallOutcome, DigitsVerdict, IvrCall
from .rules import Rules
from .suspension import global_state

# Attempt states: dialing -> originated -> answered (OriginateResponse) / in_ivr (FastAGI session) -> ended.
# The OriginateResponse and the FastAGI session may arrive in either order.
LIVE = ("dialing", "originated", "answered", "in_ivr")


def _deadline(rules: Rules, now: dt.datetime) -> dt.datetime:
    ami = rules.config.ami
    return now + dt.timedelta(seconds=ami.originate_timeout + ami.outcome_grace)


def claim_due(s: Session, rules: Rules, worker: str, limit: int) -> list[CallbackJob]:
    now = rules.now()
    if global_state(s)[0]:
        return []
    if not rules.in_calling_hours(now):
        return []
    requests = s.scalars(
        select(CallbackRequest)
        .where(CallbackRequest.state == "waiting", CallbackRequest.next_call_at <= now)
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
        if holder.locked or (request.not_after is not None and request.not_after <= now):
            _close(s, rules, request, "cancelled", "locked" if holder.locked else "expired")
            continue
        request.state = "in_call"
        request.calls_made += 1
        attempt = CallbackAttempt(
            id=public_id("cb_"),
            request_id=request.id,
            attempt_no=request.calls_made,
            state="dialing",
            worker=worker,
            created_at=now,
            deadline=_deadline(rules, now),
        )
        s.add(attempt)
        if request.kind == CallKind.ENROLL:
            holder.status = "calling"
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
    if found and found[0].state == "dialing":
        found[0].state, found[0].action_id = "originated", action_id


def unresolved(s: Session, rules: Rules, worker: str) -> list[CallbackJob]:
    rows = s.execute(
        select(CallbackAttempt, CallbackRequest)
        .join(CallbackRequest, CallbackRequest.id == CallbackAttempt.request_id)
        .where(CallbackAttempt.worker == worker, CallbackAttempt.state.in_(("dialing", "originated")))
    ).all()
    return [CallbackJob(a.id, CallKind(r.kind), r.mobile, a.attempt_no, a.deadline) for a, r in rows]


def apply_outcome(s: Session, rules: Rules, attempt_id: str, outcome: CallOutcome, detail: str) -> None:
    found = _attempt(s, attempt_id)
    if found is None:
        return
    attempt, request, holder = found
    if attempt.state == "ended":
        return  # idempotent: a late event or the reconciler after the IVR already decided
    if outcome == CallOutcome.ANSWERED or attempt.state in ("answered", "in_ivr"):
        if attempt.state in ("dialing", "originated"):
            attempt.state, attempt.answered_at = "answered", rules.now()
        return  # the IVR session decides (or the deadline, when it never arrives)
    _end_attempt(s, rules, attempt, request, holder, outcome.value, detail)


def _end_attempt(
    s: Session,
    rules: Rules,
    attempt: CallbackAttempt,
    request: CallbackRequest,
    holder: Cardholder,
    outcome: str,
    detail: str,
) -> None:
    """A call that ended without a verdict: retry later, or give up after max_calls (PRODUCT §1.5)."""
    now = rules.now()
    attempt.state, attempt.outcome, attempt.detail, attempt.ended_at = "ended", outcome, detail[:500], now
    if request.state != "in_call":
        return
    audit.record(s, rules, "ivr", "callback.attempt", f"cardholder:{holder.identifier}", outcome=outcome)
    cfg = rules.config.callback
    if request.calls_made < cfg.max_calls and not holder.locked:
        request.state = "waiting"
        request.next_call_at = rules.next_call_time(now + dt.timedelta(seconds=cfg.retry_interval))
        if request.kind == CallKind.ENROLL:
            holder.status = "awaiting_callback"
        return
    _close(s, rules, request, "failed", f"no verdict after {request.calls_made} calls")
    if request.kind != CallKind.VOICE_TOKEN:
        budget.record_failure(s, rules, holder, "phone")


def _close(s: Session, rules: Rules, request: CallbackRequest, state: str, why: str) -> None:
    request.state, request.finished_at, request.next_call_at = state, rules.now(), None
    holder = s.get(Cardholder, request.cardholder_id)
    assert holder is not None
    if state == "succeeded":
        return
    if request.kind == CallKind.ENROLL and holder.status in ("awaiting_callback", "calling"):
        holder.status = "failed"  # first8_enc is kept: a new callback may be requested from the web
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
    if attempt.state not in ("dialing", "originated", "answered") or request.state != "in_call":
        return None  # finished, or a second session for one attempt
    if holder.locked or holder.suspended:
        return None
    token = None
    if request.kind == CallKind.VOICE_TOKEN:
        challenge = s.get(Challenge, request.challenge_id) if request.challenge_id else None
        if challenge is None or challenge.token_enc is None or challenge.used_at or challenge.revoked:
            return None
        if challenge.expires_at <= rules.now():
            return None
        token = rules.vault.decrypt("voice-token", challenge.token_enc)
    attempt.state, attempt.answered_at = "in_ivr", attempt.answered_at or rules.now()
    left = rules.config.callback.max_entries - attempt.entries_used
    return IvrCall(attempt.id, CallKind(request.kind), left, token)


def check_card_digits(s: Session, rules: Rules, attempt_id: str, last8: str) -> DigitsVerdict:
    found = _attempt(s, attempt_id)
    if found is None or found[0].state != "in_ivr" or found[1].state != "in_call":
        return DigitsVerdict.FAILED
    attempt, request, holder = found
    if request.kind not in (CallKind.ENROLL, CallKind.MOBILE_CHANGE):
        return DigitsVerdict.FAILED
    attempt.entries_used += 1
    accepted, why = _card_matches(s, rules, request, holder, last8)
    if accepted:
        attempt.state, attempt.outcome, attempt.ended_at = "ended", "accepted", rules.now()
        _accept(s, rules, request, holder)
        return DigitsVerdict.ACCEPTED
    locked = budget.record_failure(s, rules, holder, "phone")
    audit.record(s, rules, "ivr", "callback.wrong-entry", f"cardholder:{holder.identifier}", why=why)
    if locked:
        attempt.state, attempt.outcome, attempt.ended_at = "ended", "locked", rules.now()
        _close(s, rules, request, "failed", "locked")
        return DigitsVerdict.LOCKED
    if attempt.entries_used >= rules.config.callback.max_entries or why == "card already enrolled":
        attempt.state, attempt.outcome, attempt.ended_at = "ended", "failed", rules.now()
        _close(s, rules, request, "failed", why)
        return DigitsVerdict.FAILED
    return DigitsVerdict.RETRY


def _card_matches(
    s: Session, rules: Rules, request: CallbackRequest, holder: Cardholder, last8: str
) -> tuple[bool, str]:
    """The full number exists only here, in memory, for the checks. Reasons carry no digits."""
    if not (len(last8) == 8 and last8.isascii() and last8.isdigit()):
        return False, "entry is not 8 digits"
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
    fingerprint = rules.vault.digest("card", pan)
    other = s.scalar(
        select(Cardholder.id).where(Cardholder.card_fingerprint == fingerprint, Cardholder.id != holder.id)
    )
    if other is not None:
        return False, "card already enrolled"
    holder.card_enc = rules.vault.encrypt("card", pan)
    holder.card_fingerprint = fingerprint
    return True, ""


def _accept(s: Session, rules: Rules, request: CallbackRequest, holder: Cardholder) -> None:
    now = rules.now()
    budget.record_success(rules, holder)
    _close(s, rules, request, "succeeded", "")
    if request.kind == CallKind.ENROLL:
        holder.status, holder.activated_at, holder.first8_enc = "active", now, None
        audit.record(s, rules, "ivr", "enrollment.active", f"cardholder:{holder.identifier}")
    else:
        holder.mobile, holder.mobile_pending = request.mobile, None
        audit.record(s, rules, "ivr", "profile.mobile-changed", f"cardholder:{holder.identifier}")
    holder.updated_at = now


def end_call(s: Session, rules: Rules, attempt_id: str, reason: str) -> None:
    found = _attempt(s, attempt_id)
    if found is None:
        return
    attempt, request, holder = found
    if attempt.state == "ended":
        return
    if request.kind == CallKind.VOICE_TOKEN and reason == "completed":
        attempt.state, attempt.outcome, attempt.ended_at = "ended", "completed", rules.now()
        _close(s, rules, request, "succeeded", "")
        return
    _end_attempt(s, rules, attempt, request, holder, "no_verdict", reason)


# --------------------------------------------------------------------------------------------------------
# Housekeeping


def resolve_stale(s: Session, rules: Rules) -> int:
    """Attempts past their deadline with no outcome (their daemon died, or AMI lost the event)."""
    now = rules.now()
    stale = s.scalars(
        select(CallbackAttempt.id).where(CallbackAttempt.state.in_(LIVE), CallbackAttempt.deadline < now)
    ).all()
    for attempt_id in stale:
        found = _attempt(s, attempt_id)
        if found is None:
            continue
        attempt, request, holder = found
        _end_attempt(s, rules, attempt, request, holder, CallOutcome.UNKNOWN.value, "deadline passed")
    return len(stale)


def schedule_voice_fallbacks(s: Session, rules: Rules) -> int:
    """A payment token whose SMS is undeliverable, or has no receipt after `no_receipt_after`, is read out
    by phone (PRODUCT §2, voice fallback; off by default)."""
    cfg = rules.config.voice_fallback
    if not cfg.enabled:
        return 0
    now = rules.now()
    late = now - dt.timedelta(seconds=cfg.no_receipt_after)
    rows = s.execute(
        select(SmsMessage, Challenge)
        .join(Challenge, Challenge.id == SmsMessage.challenge_id)
        .join(Payment, Payment.id == SmsMessage.payment_id)
        .where(
            Payment.status == "pending",
            Challenge.token_enc.is_not(None),
            Challenge.expires_at > now,
            Challenge.revoked.is_(False),
            (
                (SmsMessage.state == "undeliverable")
                | ((SmsMessage.state == "submitted") & (SmsMessage.submitted_at < late))
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
                state="waiting",
                next_call_at=now,
                not_after=challenge.expires_at,
                challenge_id=challenge.id,
                created_at=now,
            )
        )
        audit.record(s, rules, "system", "voice-fallback", f"payment:{sms.payment_id}", sms=sms.state)
    return len(rows)
