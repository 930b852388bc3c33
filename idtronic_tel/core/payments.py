"""Purchases (PRODUCT §2): a payment, its single-use token and its SMS, created in one transaction;
confirmation, resend, cancel; merchant isolation (another merchant's payment does not exist)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from . import audit, budget, tokens
from .cards import is_identifier
from .crypto import public_id
from .currencies import CODES, format_amount
from .errors import (
    IdempotencyConflict,
    InvalidInput,
    InvalidToken,
    NotFound,
    NotPending,
    PaymentRefused,
    RateLimited,
)
from .merchants import MerchantAuth
from .models import Cardholder, Challenge, IdempotencyRecord, Payment, SmsMessage
from .rules import Rules

# What the merchant sees of the SMS: "sending" is an internal state, still queued as far as they know.
_SMS_VIEW = {"sending": "queued"}


class IdempotentReplay(Exception):
    """Raised inside the transaction to roll back a lost race on an Idempotency-Key."""


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value else None


def view(s: Session, rules: Rules, payment: Payment, sms: str | None = None) -> dict[str, Any]:
    """`sms`: the state of the payment's latest SMS when the caller knows it (it was just queued)."""
    if sms is None:
        sms = s.scalar(
            select(SmsMessage.state).where(SmsMessage.payment_id == payment.id).order_by(SmsMessage.id.desc())
        )
    return {
        "id": payment.id,
        "status": payment.status,
        "amount": payment.amount,
        "currency": payment.currency,
        "reference": payment.reference,
        "description": payment.description,
        "created_at": _iso(payment.created_at),
        "expires_at": _iso(payment.expires_at),
        "validated_at": _iso(payment.validated_at),
        "sms": _SMS_VIEW.get(sms or "queued", sms or "queued"),
        "attempts_remaining": max(0, rules.config.tokens.max_attempts - payment.wrong_tokens),
    }


def _validate(body: dict[str, Any]) -> None:
    problems: dict[str, str] = {}
    if not is_identifier(body.get("identifier")):
        problems["identifier"] = "a 10-digit identification number"
    amount = body.get("amount")
    if not isinstance(amount, int) or isinstance(amount, bool) or not 0 < amount <= 10**12:
        problems["amount"] = "an integer number of minor units, greater than 0"
    if body.get("currency") not in CODES:
        problems["currency"] = "an ISO 4217 currency code such as EUR"
    reference = body.get("reference")
    if not isinstance(reference, str) or not 1 <= len(reference) <= 200:
        problems["reference"] = "1 to 200 characters"
    description = body.get("description", "")
    if not isinstance(description, str) or len(description) > 500:
        problems["description"] = "at most 500 characters"
    if problems:
        raise InvalidInput(problems)


def create(
    s: Session,
    rules: Rules,
    merchant: MerchantAuth,
    body: dict[str, Any],
    idempotency_key: str | None,
    request_digest: str,
) -> tuple[int, dict[str, Any]]:
    """Returns (HTTP-like status, payment view). Same Idempotency-Key + same body: the first answer."""
    if idempotency_key is not None:
        previous = s.get(IdempotencyRecord, (merchant.id, idempotency_key))
        if previous is not None:
            if previous.request_digest != request_digest:
                raise IdempotencyConflict("this Idempotency-Key was used with another request body")
            return previous.status_code, json.loads(previous.response)
    _validate(body)
    holder = s.scalar(select(Cardholder).where(Cardholder.identifier == body["identifier"]))
    if holder is None or holder.status != "active" or holder.locked or holder.suspended:
        reason = "unknown" if holder is None else ("locked" if holder.locked else holder.status)
        if holder is not None and holder.suspended:
            reason = "suspended"
        audit.record(s, rules, f"merchant:{merchant.id}", "payment.refused", "cardholder", reason=reason)
        raise PaymentRefused("this payment cannot be authenticated", reason=reason)
    now = rules.now()
    payment = Payment(
        id=public_id("pay_"),
        merchant_id=merchant.id,
        cardholder_id=holder.id,
        amount=body["amount"],
        currency=body["currency"],
        reference=body["reference"],
        description=body.get("description", ""),
        status="pending",
        created_at=now,
        expires_at=now,
        last_token_at=now,
    )
    s.add(payment)
    s.flush()
    challenge = _send_token(s, rules, merchant, holder, payment)
    payment.expires_at = challenge.expires_at
    audit.record(s, rules, f"merchant:{merchant.id}", "payment.create", f"payment:{payment.id}")
    answer = view(s, rules, payment, sms="queued")  # its SMS was queued just now: no query
    if idempotency_key is not None:
        s.add(
            IdempotencyRecord(
                merchant_id=merchant.id,
                key=idempotency_key,
                request_digest=request_digest,
                status_code=201,
                response=json.dumps(answer),
                created_at=now,
            )
        )
        try:
            s.flush()
        except IntegrityError as exc:  # a concurrent request with the same key won: replay it
            raise IdempotentReplay() from exc
    return 201, answer


def _send_token(
    s: Session, rules: Rules, merchant: MerchantAuth, holder: Cardholder, payment: Payment
) -> Challenge:
    cfg = rules.config.tokens
    template = cfg.payment_template
    if merchant.domain:
        # WebOTP / origin-bound one-time codes: browsers fill the code in, and only on that domain.
        template += "\n\n@" + merchant.domain + " #{code}"
    text = tokens.TextTemplate(
        template,
        amount=format_amount(payment.amount, payment.currency),
        currency=payment.currency,
        merchant=merchant.name,
        minutes=str(int(cfg.lifetime // 60)),
    )
    return tokens.issue(
        s, rules, holder, "payment", text, payment.id, merchant.id, payment.amount, payment.currency
    )


def _load(s: Session, merchant: MerchantAuth, payment_id: str, lock: bool = False) -> Payment:
    query = select(Payment).where(Payment.id == payment_id, Payment.merchant_id == merchant.id)
    payment = s.scalar(query.with_for_update() if lock else query)
    if payment is None:
        raise NotFound("no such payment")
    return payment


def _expire_if_due(s: Session, rules: Rules, payment: Payment) -> None:
    if payment.status == "pending" and payment.expires_at <= rules.now():
        payment.status = "expired"
        payment.finished_at = payment.expires_at
        for challenge in s.scalars(select(Challenge).where(Challenge.payment_id == payment.id)):
            challenge.token_enc = None


def get(s: Session, rules: Rules, merchant: MerchantAuth, payment_id: str) -> dict[str, Any]:
    payment = _load(s, merchant, payment_id)
    _expire_if_due(s, rules, payment)
    return view(s, rules, payment)


def _current_challenge(s: Session, payment: Payment) -> Challenge | None:
    return s.scalar(
        select(Challenge)
        .where(Challenge.payment_id == payment.id, Challenge.revoked.is_(False))
        .order_by(Challenge.id.desc())
        .limit(1)
    )


def confirm(s: Session, rules: Rules, merchant: MerchantAuth, payment_id: str, token: str) -> dict[str, Any]:
    payment = _load(s, merchant, payment_id, lock=True)  # row lock: concurrent confirms queue here
    _expire_if_due(s, rules, payment)
    if payment.status != "pending":
        raise NotPending("the payment is not pending", status=payment.status)
    holder = s.get(Cardholder, payment.cardholder_id, with_for_update=True)
    assert holder is not None
    now = rules.now()
    if holder.locked:
        _finish(s, payment, "failed", now)
        audit.record(
            s, rules, f"merchant:{merchant.id}", "payment.failed", f"payment:{payment.id}", why="locked"
        )
        raise NotPending("the payment is not pending", status=payment.status)
    challenge = _current_challenge(s, payment)
    ok = (
        challenge is not None
        and tokens.live_challenge(challenge, now)
        and (challenge.merchant_id, challenge.amount, challenge.currency)
        == (payment.merchant_id, payment.amount, payment.currency)
        and rules.vault.matches("token:payment", token, challenge.token_digest)
    )
    if ok and challenge is not None:
        challenge.used_at = now
        challenge.token_enc = None
        payment.status = "validated"
        payment.validated_at = payment.finished_at = now
        budget.record_success(rules, holder)
        audit.record(s, rules, f"merchant:{merchant.id}", "payment.validated", f"payment:{payment.id}")
        return view(s, rules, payment)
    payment.wrong_tokens += 1
    if challenge is not None:
        challenge.wrong_attempts += 1
    locked = budget.record_failure(s, rules, holder, "payment")
    remaining = rules.config.tokens.max_attempts - payment.wrong_tokens
    if remaining <= 0 or locked:
        _finish(s, payment, "failed", now)
        remaining = 0
    audit.record(
        s, rules, f"merchant:{merchant.id}", "payment.wrong-token", f"payment:{payment.id}", left=remaining
    )
    raise InvalidToken("wrong token", attempts_remaining=remaining, status=payment.status)


def _finish(s: Session, payment: Payment, status: str, now: dt.datetime) -> None:
    payment.status = status
    payment.finished_at = now
    for challenge in s.scalars(select(Challenge).where(Challenge.payment_id == payment.id)):
        tokens.retire(s, challenge)


def resend(s: Session, rules: Rules, merchant: MerchantAuth, payment_id: str) -> dict[str, Any]:
    payment = _load(s, merchant, payment_id, lock=True)
    _expire_if_due(s, rules, payment)
    if payment.status != "pending":
        raise NotPending("the payment is not pending", status=payment.status)
    cfg = rules.config.tokens
    if payment.resends >= cfg.max_resends:
        raise RateLimited("no more resends for this payment", retry_after=cfg.lifetime)
    wait = (payment.last_token_at + dt.timedelta(seconds=cfg.resend_interval) - rules.now()).total_seconds()
    if wait > 0:
        raise RateLimited("a code was sent moments ago", retry_after=wait)
    holder = s.get(Cardholder, payment.cardholder_id)
    assert holder is not None
    old = _current_challenge(s, payment)
    tokens.check_rate(s, rules, holder)  # before killing the old code: a refused resend changes nothing
    if old is not None:
        tokens.retire(s, old)
    challenge = _send_token(s, rules, merchant, holder, payment)
    payment.resends += 1
    payment.last_token_at = rules.now()
    payment.expires_at = challenge.expires_at
    audit.record(s, rules, f"merchant:{merchant.id}", "payment.resend", f"payment:{payment.id}")
    return view(s, rules, payment)


def cancel(s: Session, rules: Rules, merchant: MerchantAuth, payment_id: str) -> dict[str, Any]:
    payment = _load(s, merchant, payment_id, lock=True)
    _expire_if_due(s, rules, payment)
    if payment.status != "pending":
        raise NotPending("the payment is not pending", status=payment.status)
    _finish(s, payment, "cancelled", rules.now())
    audit.record(s, rules, f"merchant:{merchant.id}", "payment.cancel", f"payment:{payment.id}")
    return view(s, rules, payment)
