"""The personal section (docs/rules.md §3): an SMS token opens a session with an idle expiry; a new mobile
number is used only once a callback to it succeeded, and the old number is told of the request."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from . import audit, budget, tokens, views
from .crypto import random_key
from .enrollment import schedule_call, validate_identity
from .errors import InvalidInput, InvalidToken, RateLimited, SessionInvalid
from .models import CallbackRequest, Cardholder, Challenge, ProfileSession
from .ports import CallKind
from .rules import Rules
from .states import CallbackState, CardholderStatus

SESSION_PREFIX = "idt_ses_"
EDITABLE = ("last_name", "first_name", "birth_date", "mobile")


def _usable(rules: Rules, holder: Cardholder | None) -> bool:
    return (
        holder is not None
        and holder.status == CardholderStatus.ACTIVE
        and not budget.is_locked(holder, rules.now())
        and not holder.suspended
    )


def request_challenge(s: Session, rules: Rules, identifier: str) -> None:
    """Always the same outcome for the caller, known identifier or not (no enumeration)."""
    holder = s.scalar(select(Cardholder).where(Cardholder.identifier == identifier))
    if not _usable(rules, holder):
        return
    assert holder is not None
    cfg = rules.settings.tokens
    text = tokens.TextTemplate(cfg.profile_template, minutes=str(int(cfg.lifetime // 60)))
    try:
        tokens.issue(s, rules, holder, "profile", text)
    except RateLimited:
        return  # silently: the answer must not differ from the unknown-identifier case
    audit.record(s, rules, "cardholder", "profile.challenge", f"cardholder:{identifier}")


def open_session(s: Session, rules: Rules, identifier: str, token: str) -> views.ProfileSession:
    holder = s.scalar(select(Cardholder).where(Cardholder.identifier == identifier).with_for_update())
    if not _usable(rules, holder):
        raise InvalidToken("wrong or expired code")
    assert holder is not None
    now = rules.now()
    challenge = s.scalar(
        select(Challenge)
        .where(Challenge.cardholder_id == holder.id, Challenge.purpose == "profile")
        .order_by(Challenge.id.desc())
        .limit(1)
    )
    if (
        challenge is None
        or not tokens.live_challenge(challenge, now)
        or not rules.vault.matches("token:profile", token, challenge.token_digest)
    ):
        if challenge is None or not tokens.live_challenge(challenge, now):
            # No code to guess: refused like a wrong code (nothing leaks), and the budget is untouched.
            audit.record(s, rules, "cardholder", "profile.no-challenge", f"cardholder:{identifier}")
            raise InvalidToken("wrong or expired code")
        budget.record_wrong_code(s, rules, holder, challenge, "profile")
        challenge.wrong_attempts += 1
        if challenge.wrong_attempts >= rules.settings.tokens.max_attempts:
            tokens.retire(s, challenge)
        audit.record(s, rules, "cardholder", "profile.wrong-token", f"cardholder:{identifier}")
        raise InvalidToken("wrong or expired code")
    challenge.used_at = now
    budget.record_success(rules, holder)
    secret = random_key(SESSION_PREFIX)
    s.add(
        ProfileSession(
            session_digest=rules.vault.digest("session", secret),
            cardholder_id=holder.id,
            created_at=now,
            last_seen_at=now,
        )
    )
    audit.record(s, rules, "cardholder", "profile.session", f"cardholder:{identifier}")
    return views.ProfileSession(secret, int(rules.settings.profile.session_idle))


def _session_holder(s: Session, rules: Rules, secret: str) -> Cardholder:
    digests = rules.vault.digests("session", secret)
    session = s.scalar(select(ProfileSession).where(ProfileSession.session_digest.in_(digests)))
    now = rules.now()
    idle = dt.timedelta(seconds=rules.settings.profile.session_idle)
    if session is None or session.closed or session.last_seen_at + idle <= now:
        raise SessionInvalid("the session is unknown or expired: ask for a new code")
    holder = s.get(Cardholder, session.cardholder_id)
    if not _usable(rules, holder):
        session.closed = True
        raise SessionInvalid("the session is unknown or expired: ask for a new code")
    assert holder is not None
    session.last_seen_at = now
    session.session_digest = digests[0]  # a session opened under a previous hmac.key moves to the current
    return holder


def _masked_card(rules: Rules, holder: Cardholder) -> str | None:
    """At most the first 6 and the last 4 digits (docs/rules.md §1.7)."""
    if holder.card_enc is None:
        return None
    pan = rules.vault.decrypt("card", holder.card_enc)
    return pan[:6] + "*" * (len(pan) - 10) + pan[-4:]


def _view(s: Session, rules: Rules, holder: Cardholder) -> views.Profile:
    return views.Profile(
        identifier=holder.identifier,
        last_name=holder.last_name,
        first_name=holder.first_name,
        birth_date=holder.birth_date,
        mobile=holder.mobile,
        mobile_pending=holder.mobile_pending,
        card=_masked_card(rules, holder),
    )


def get(s: Session, rules: Rules, secret: str) -> views.Profile:
    return _view(s, rules, _session_holder(s, rules, secret))


def update(s: Session, rules: Rules, secret: str, fields: dict[str, Any]) -> views.Profile:
    holder = _session_holder(s, rules, secret)
    if not fields:
        raise InvalidInput({"body": f"give at least one of {', '.join(EDITABLE)}"})
    clean = validate_identity(rules, fields, partial=True)
    changed = sorted(k for k in clean if k != "mobile")
    for key in changed:
        setattr(holder, key, clean[key])
    new_mobile = clean.get("mobile")
    if new_mobile is not None and new_mobile not in (holder.mobile, holder.mobile_pending):
        _request_mobile_change(s, rules, holder, new_mobile)
        changed.append("mobile")
    holder.updated_at = rules.now()
    if changed:
        audit.record(
            s, rules, "cardholder", "profile.update", f"cardholder:{holder.identifier}", fields=changed
        )
    return _view(s, rules, holder)


def _request_mobile_change(s: Session, rules: Rules, holder: Cardholder, new_mobile: str) -> None:
    for pending in s.scalars(
        select(CallbackRequest).where(
            CallbackRequest.cardholder_id == holder.id,
            CallbackRequest.kind == CallKind.MOBILE_CHANGE,
            CallbackRequest.state == CallbackState.WAITING,
        )
    ):
        pending.state = CallbackState.CANCELLED
        pending.finished_at = rules.now()
    holder.mobile_pending = new_mobile
    schedule_call(
        s, rules, holder, CallKind.MOBILE_CHANGE, new_mobile, rules.settings.callback.first_call_delay
    )
    # The old number hears of the request: a stolen session cannot move the account silently.
    tokens.queue_notice(
        s, rules, holder, rules.settings.tokens.mobile_change_notice, rules.now() + dt.timedelta(hours=24)
    )
