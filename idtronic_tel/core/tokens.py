"""One-time tokens: issuing (rate limited, stored as keyed hashes, queued by SMS in the same
transaction) and checking (constant time, bound to purpose and payment)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .crypto import random_digits
from .errors import RateLimited
from .models import Cardholder, Challenge, SmsMessage
from .rules import Rules

TOKEN_DIGITS = 6


def token_digest(rules: Rules, challenge_purpose: str, token: str) -> str:
    return rules.vault.digest("token:" + challenge_purpose, token)


def check_rate(s: Session, rules: Rules, holder: Cardholder) -> None:
    """At most `per_cardholder_limit` tokens per window (PRODUCT §4)."""
    cfg = rules.config.tokens
    since = rules.now() - dt.timedelta(seconds=cfg.per_cardholder_window)
    recent = s.execute(
        select(func.count(), func.min(Challenge.created_at)).where(
            Challenge.cardholder_id == holder.id, Challenge.created_at > since
        )
    ).one()
    count, oldest = recent
    if count >= cfg.per_cardholder_limit:
        retry = (oldest + dt.timedelta(seconds=cfg.per_cardholder_window) - rules.now()).total_seconds()
        raise RateLimited("too many codes were sent to this cardholder recently", retry_after=retry)


def issue(
    s: Session,
    rules: Rules,
    holder: Cardholder,
    purpose: str,
    text_for: TextTemplate,
    payment_id: str | None = None,
    merchant_id: str | None = None,
    amount: int | None = None,
    currency: str | None = None,
) -> Challenge:
    """Draw a token, store its digest, and queue its SMS. The caller's transaction commits both."""
    check_rate(s, rules, holder)
    now = rules.now()
    token = random_digits(TOKEN_DIGITS)
    expires = now + dt.timedelta(seconds=rules.config.tokens.lifetime)
    challenge = Challenge(
        cardholder_id=holder.id,
        purpose=purpose,
        payment_id=payment_id,
        merchant_id=merchant_id,
        amount=amount,
        currency=currency,
        token_digest=token_digest(rules, purpose, token),
        created_at=now,
        expires_at=expires,
        token_enc=rules.vault.encrypt("voice-token", token) if rules.config.voice_fallback.enabled else None,
    )
    s.add(challenge)
    s.flush()
    queue_sms(s, rules, holder, purpose, text_for(token), expires, payment_id, challenge.id)
    return challenge


class TextTemplate:
    """Renders the SMS for a token: callers bind everything but the code."""

    def __init__(self, template: str, **fields: str) -> None:
        self._template = template
        self._fields = fields

    def __call__(self, code: str) -> str:
        return self._template.format(code=code, **self._fields)


def queue_sms(
    s: Session,
    rules: Rules,
    holder: Cardholder | None,
    purpose: str,
    text: str,
    expires: dt.datetime,
    payment_id: str | None = None,
    challenge_id: int | None = None,
    destination: str | None = None,
) -> SmsMessage:
    message = SmsMessage(
        cardholder_id=holder.id if holder else None,
        payment_id=payment_id,
        challenge_id=challenge_id,
        purpose=purpose,
        destination=destination or (holder.mobile if holder else ""),
        body_enc=rules.vault.encrypt("sms", text),
        state="queued",
        created_at=rules.now(),
        expires_at=expires,
    )
    s.add(message)
    return message


def live_challenge(challenge: Challenge, now: dt.datetime) -> bool:
    return challenge.used_at is None and not challenge.revoked and challenge.expires_at > now


def retire(s: Session, challenge: Challenge) -> None:
    """A superseded or finished challenge: its queued SMS is dropped and its voice copy wiped."""
    challenge.revoked = True
    challenge.token_enc = None
    for sms in s.scalars(
        select(SmsMessage).where(SmsMessage.challenge_id == challenge.id, SmsMessage.state == "queued")
    ):
        sms.state = "expired"
        sms.reason = "superseded"
