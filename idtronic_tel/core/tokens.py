"""One-time tokens: issuing (rate limited, stored as keyed hashes, queued by SMS in the same
transaction) and checking (constant time, bound to purpose and payment)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Connection, Table, bindparam, func, insert, select
from sqlalchemy.orm import Session

from .crypto import random_digits
from .driver import Statement
from .errors import RateLimited
from .models import Cardholder, Challenge, SmsMessage
from .rules import Rules

TOKEN_DIGITS = 6

# Built once (the payment hot path runs them on every creation): see payments.py.
_challenges = cast(Table, Challenge.__table__)
_RECENT = select(func.count(), func.min(_challenges.c.created_at)).where(
    _challenges.c.cardholder_id == bindparam("b_holder"), _challenges.c.created_at > bindparam("b_since")
)
# What `store` inserts (payment_sql.py also builds one PostgreSQL statement from them).
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
_INSERT_CHALLENGE = Statement(insert(_challenges).returning(_challenges.c.id), CHALLENGE_COLUMNS)
_INSERT_SMS = Statement(insert(cast(Table, SmsMessage.__table__)), (*SMS_COLUMNS, "challenge_id"))


def token_digest(rules: Rules, challenge_purpose: str, token: str) -> str:
    return rules.vault.digest("token:" + challenge_purpose, token)


def check_rate(s: Session, rules: Rules, holder: Cardholder) -> None:
    """At most `per_cardholder_limit` tokens per window (docs/rules.md §4)."""
    since = rules.now() - dt.timedelta(seconds=rules.settings.tokens.per_cardholder_window)
    # One query on the (cardholder_id, created_at) index.
    count, oldest = s.execute(_RECENT, {"b_holder": holder.id, "b_since": since}).one()
    refuse_over_rate(rules, count, oldest)


@dataclass(frozen=True)
class Bound:
    """What a payment's token is bound to (docs/rules.md §2): it validates that payment only."""

    payment_id: str
    merchant_id: str
    amount: int
    currency: str


@dataclass(frozen=True)
class Drawn:
    """A token drawn: its challenge row and its queued SMS row (CHALLENGE_COLUMNS, SMS_COLUMNS)."""

    challenge: dict[str, Any]
    sms: dict[str, Any]

    @property
    def expires(self) -> dt.datetime:
        return cast(dt.datetime, self.challenge["expires_at"])


def issue(
    s: Session,
    rules: Rules,
    holder: Cardholder,
    purpose: str,
    text_for: TextTemplate,
    bound: Bound | None = None,
) -> dt.datetime:
    """Draw a token, store its digest, and queue its SMS, in the caller's transaction; returns the
    token's expiry."""
    check_rate(s, rules, holder)
    drawn = draw(rules, holder.id, holder.mobile, purpose, text_for, rules.now(), bound)
    store(s.connection(), drawn)
    return drawn.expires


def draw(
    rules: Rules,
    holder_id: int,
    mobile: str,
    purpose: str,
    text_for: TextTemplate,
    now: dt.datetime,
    bound: Bound | None = None,
) -> Drawn:
    """The one place a token is drawn: its rows, for `store` (or for a statement that writes more, see
    payment_sql.write_creation). The caller has checked the rate."""
    token = random_digits(TOKEN_DIGITS)
    expires = now + dt.timedelta(seconds=rules.settings.tokens.lifetime)
    challenge = {
        "cardholder_id": holder_id,
        "purpose": purpose,
        "payment_id": bound.payment_id if bound else None,
        "merchant_id": bound.merchant_id if bound else None,
        "amount": bound.amount if bound else None,
        "currency": bound.currency if bound else None,
        "token_digest": token_digest(rules, purpose, token),
        "created_at": now,
        "expires_at": expires,
        "revoked": False,
        "wrong_attempts": 0,
        "token_enc": rules.vault.encrypt("voice-token", token)
        if rules.settings.voice_fallback.enabled
        else None,
    }
    payment_id = bound.payment_id if bound else None
    sms = _sms_row(rules, holder_id, mobile, purpose, text_for(token), now, expires, payment_id)
    return Drawn(challenge, sms)


def store(conn: Connection, drawn: Drawn) -> None:
    returned = _INSERT_CHALLENGE.first(conn, drawn.challenge)
    assert returned is not None
    _INSERT_SMS.execute(conn, {**drawn.sms, "challenge_id": returned[0]})


def _sms_row(
    rules: Rules,
    holder_id: int | None,
    destination: str,
    purpose: str,
    text: str,
    now: dt.datetime,
    expires: dt.datetime,
    payment_id: str | None = None,
) -> dict[str, Any]:
    return {
        "cardholder_id": holder_id,
        "payment_id": payment_id,
        "purpose": purpose,
        "destination": destination,
        "body_enc": rules.vault.encrypt("sms", text),
        "state": "queued",
        "in_doubt": False,
        "created_at": now,
        "expires_at": expires,
        "reason": "",
    }


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


def queue_notice(s: Session, rules: Rules, holder: Cardholder, text: str, expires: dt.datetime) -> None:
    """An SMS that carries no token (a notice to the cardholder), queued like a token's."""
    row = _sms_row(rules, holder.id, holder.mobile, "notice", text, rules.now(), expires)
    _INSERT_SMS.execute(s.connection(), {**row, "challenge_id": None})


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
