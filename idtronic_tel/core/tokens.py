"""One-time tokens: issuing (rate limited, stored as keyed hashes, queued by SMS in the same
transaction) and checking (constant time, bound to purpose and payment)."""

from __future__ import annotations

import datetime as dt
from typing import Any, cast

from sqlalchemy import Connection, Table, bindparam, func, insert, select
from sqlalchemy.orm import Session

from .crypto import random_digits
from .errors import RateLimited
from .models import Cardholder, Challenge, SmsMessage
from .rules import Rules

TOKEN_DIGITS = 6

# Built once (the payment hot path runs them on every creation): see payments.py.
_challenges = cast(Table, Challenge.__table__)
_RECENT = select(func.count(), func.min(_challenges.c.created_at)).where(
    _challenges.c.cardholder_id == bindparam("b_holder"), _challenges.c.created_at > bindparam("b_since")
)
_INSERT_CHALLENGE = insert(_challenges).returning(_challenges.c.id)
_INSERT_SMS = insert(cast(Table, SmsMessage.__table__))
# What issue_core inserts (payments.py also builds one PostgreSQL statement from them).
CHALLENGE_COLUMNS = (
    "cardholder_id",
    "purpose",
    "payment_id",
    "merchant_id",
    "amount",
    "currency",
    "token_digest",
    "created_at",
    "expires_at",
    "revoked",
    "wrong_attempts",
    "token_enc",
)
SMS_COLUMNS = (
    "cardholder_id",
    "payment_id",
    "purpose",
    "destination",
    "body_enc",
    "state",
    "in_doubt",
    "created_at",
    "expires_at",
    "reason",
)


def token_digest(rules: Rules, challenge_purpose: str, token: str) -> str:
    return rules.vault.digest("token:" + challenge_purpose, token)


def check_rate(s: Session, rules: Rules, holder: Cardholder) -> None:
    """At most `per_cardholder_limit` tokens per window (docs/rules.md §4)."""
    since = rules.now() - dt.timedelta(seconds=rules.settings.tokens.per_cardholder_window)
    # One query on the (cardholder_id, created_at) index.
    count, oldest = s.execute(_RECENT, {"b_holder": holder.id, "b_since": since}).one()
    refuse_over_rate(rules, count, oldest)


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
) -> dt.datetime:
    """Draw a token, store its digest, and queue its SMS, in the caller's transaction; returns the
    token's expiry."""
    check_rate(s, rules, holder)
    challenge, sms = token_rows(
        rules,
        holder.id,
        holder.mobile,
        purpose,
        text_for,
        rules.now(),
        payment_id,
        merchant_id,
        amount,
        currency,
    )
    issue_core(s.connection(), challenge, sms)
    return cast(dt.datetime, challenge["expires_at"])


def token_rows(
    rules: Rules,
    holder_id: int,
    mobile: str,
    purpose: str,
    text_for: TextTemplate,
    now: dt.datetime,
    payment_id: str | None = None,
    merchant_id: str | None = None,
    amount: int | None = None,
    currency: str | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Draw a token: the challenge row and its queued SMS row (CHALLENGE_COLUMNS, SMS_COLUMNS; the
    SMS's challenge_id is the caller's to fill in)."""
    token = random_digits(TOKEN_DIGITS)
    expires = now + dt.timedelta(seconds=rules.settings.tokens.lifetime)
    challenge = {
        "cardholder_id": holder_id,
        "purpose": purpose,
        "payment_id": payment_id,
        "merchant_id": merchant_id,
        "amount": amount,
        "currency": currency,
        "token_digest": token_digest(rules, purpose, token),
        "created_at": now,
        "expires_at": expires,
        "revoked": False,
        "wrong_attempts": 0,
        "token_enc": rules.vault.encrypt("voice-token", token)
        if rules.settings.voice_fallback.enabled
        else None,
    }
    sms = {
        "cardholder_id": holder_id,
        "payment_id": payment_id,
        "purpose": purpose,
        "destination": mobile,
        "body_enc": rules.vault.encrypt("sms", text_for(token)),
        "state": "queued",
        "in_doubt": False,
        "created_at": now,
        "expires_at": expires,
        "reason": "",
    }
    return challenge, sms


def issue_core(conn: Connection, challenge: dict[str, Any], sms: dict[str, Any]) -> None:
    """Insert a challenge and its queued SMS (rows from `token_rows`; the caller has checked the rate)."""
    challenge_id = conn.execute(_INSERT_CHALLENGE, challenge).scalar_one()
    conn.execute(_INSERT_SMS, {**sms, "challenge_id": challenge_id})


def refuse_over_rate(rules: Rules, count: int, oldest: dt.datetime | None) -> None:
    """`count` tokens sent to a cardholder in the window, the oldest at `oldest`."""
    cfg = rules.settings.tokens
    if count >= cfg.per_cardholder_limit:
        retry = float(cfg.per_cardholder_window)
        if oldest is not None:
            retry = (oldest + dt.timedelta(seconds=cfg.per_cardholder_window) - rules.now()).total_seconds()
        raise RateLimited("too many codes were sent to this cardholder recently", retry_after=retry)


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
