"""Purchases (docs/rules.md §2): a payment, its single-use token and its SMS, created in one transaction;
confirmation, resend, cancel; merchant isolation (another merchant's payment does not exist).

Create and confirm are the API's hot paths: Core statements built once and run on the driver
(payment_sql.py, driver.py), no ORM unit of work on their usual path, the answer built from the values
written rather than read back."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import Any, NoReturn

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from . import audit, budget, payment_sql, tokens, views
from .cards import luhn_valid
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
    ResendLimit,
)
from .merchants import MerchantAuth
from .models import Cardholder, Challenge, Payment, SmsMessage
from .rules import Rules
from .states import PAYMENT, CardholderStatus, PaymentStatus


class IdempotentReplay(Exception):
    """Raised inside the transaction to roll back a lost race on an Idempotency-Key."""


def _view(rules: Rules, payment: Any, sms: str | None, validated_at: dt.datetime | None) -> views.Payment:
    """`payment`: the Payment row, or a row of its columns."""
    return views.Payment(
        id=payment.id,
        status=PaymentStatus(payment.status),
        amount=payment.amount,
        currency=payment.currency,
        reference=payment.reference,
        description=payment.description,
        created_at=payment.created_at,
        expires_at=payment.expires_at,
        validated_at=validated_at,
        sms=views.SmsShown.of(sms),
        attempts_remaining=max(0, rules.settings.tokens.max_attempts - payment.wrong_tokens),
    )


def view(s: Session, rules: Rules, payment: Payment) -> views.Payment:
    sms = s.scalar(
        select(SmsMessage.state).where(SmsMessage.payment_id == payment.id).order_by(SmsMessage.id.desc())
    )
    return _view(rules, payment, sms, payment.validated_at)


def _semantic_problems(body: dict[str, Any]) -> None:
    """What the request's JSON Schema cannot say (the HTTP edge checked the rest)."""
    problems: dict[str, str] = {}
    if not luhn_valid(body["identifier"]):
        problems["identifier"] = (
            "wrong check digit: the last digit does not match the other nine (a typing error?)"
        )
    if body["currency"] not in CODES:
        problems["currency"] = "an ISO 4217 currency code such as EUR"
    if problems:
        raise InvalidInput(problems)


def create(
    s: Session,
    rules: Rules,
    merchant: MerchantAuth,
    body: dict[str, Any],
    idempotency_key: str | None,
    request_digest: str,
) -> tuple[int, views.Payment]:
    """Returns (HTTP-like status, payment). Same Idempotency-Key + same body: the first answer."""
    conn = s.connection()
    if idempotency_key is not None:
        previous = payment_sql.idempotent_answer(conn, merchant.id, idempotency_key)
        if previous is not None:
            if previous.request_digest != request_digest:
                raise IdempotencyConflict("this Idempotency-Key was used with another request body")
            return previous.status_code, views.from_wire(views.Payment, json.loads(previous.response))
    _semantic_problems(body)
    cfg = rules.settings.tokens
    since = rules.now() - dt.timedelta(seconds=cfg.per_cardholder_window)
    holder = payment_sql.holder(conn, body["identifier"], since)
    locked = holder is not None and budget.is_locked(holder, rules.now())
    if holder is None or holder.status != CardholderStatus.ACTIVE or locked or holder.suspended:
        reason = "unknown" if holder is None else ("locked" if locked else holder.status)
        if holder is not None and holder.suspended:
            reason = "suspended"
        audit.record(s, rules, f"merchant:{merchant.id}", "payment.refused", "cardholder", reason=reason)
        raise PaymentRefused("this payment cannot be authenticated", reason=reason)
    tokens.refuse_over_rate(rules, holder.recent, holder.oldest)  # before any write
    now = rules.now()
    bound = tokens.Bound(public_id("pay_"), merchant.id, body["amount"], body["currency"])
    drawn = tokens.draw(
        rules, holder.id, holder.mobile, "payment", _token_text(rules, merchant, bound), now, bound
    )
    payment = views.Payment(
        id=bound.payment_id,
        status=PaymentStatus.PENDING,
        amount=bound.amount,
        currency=bound.currency,
        reference=body["reference"],
        description=body.get("description", ""),
        created_at=now,
        expires_at=drawn.expires,
        validated_at=None,
        sms=views.SmsShown.QUEUED,  # its SMS was queued just now
        attempts_remaining=max(0, cfg.max_attempts),
    )
    row = {
        "id": payment.id,
        "merchant_id": merchant.id,
        "cardholder_id": holder.id,
        "amount": payment.amount,
        "currency": payment.currency,
        "reference": payment.reference,
        "description": payment.description,
        "status": payment.status.value,
        "wrong_tokens": 0,
        "resends": 0,
        "created_at": now,
        "expires_at": payment.expires_at,
        "last_token_at": now,
    }
    payment_sql.write_creation(conn, row, drawn, _audit_row(now, merchant, "payment.create", payment.id))
    if idempotency_key is not None:
        try:
            payment_sql.INSERT_IDEMPOTENCY.execute(
                conn,
                {
                    "merchant_id": merchant.id,
                    "key": idempotency_key,
                    "request_digest": request_digest,
                    "status_code": 201,
                    "response": json.dumps(views.wire(payment)),
                    "created_at": now,
                },
            )
        except IntegrityError as exc:  # a concurrent request with the same key won: replay it
            raise IdempotentReplay() from exc
    return 201, payment


def _audit_row(now: dt.datetime, merchant: MerchantAuth, action: str, payment_id: str) -> dict[str, Any]:
    """audit.record's row for the hot paths (no detail)."""
    return {
        "at": now,
        "actor": f"merchant:{merchant.id}",
        "action": action,
        "subject": f"payment:{payment_id}",
        "detail": "",
    }


def _token_text(rules: Rules, merchant: MerchantAuth, bound: tokens.Bound) -> tokens.TextTemplate:
    cfg = rules.settings.tokens
    template = cfg.payment_template
    if merchant.domain:
        # WebOTP / origin-bound one-time codes: browsers fill the code in, and only on that domain.
        template += "\n\n@" + merchant.domain + " #{code}"
    return tokens.TextTemplate(
        template,
        amount=format_amount(bound.amount, bound.currency),
        currency=bound.currency,
        merchant=merchant.name,
        minutes=str(int(cfg.lifetime // 60)),
    )


def _load(s: Session, merchant: MerchantAuth, payment_id: str, lock: bool = False) -> Payment:
    query = select(Payment).where(Payment.id == payment_id, Payment.merchant_id == merchant.id)
    payment = s.scalar(query.with_for_update() if lock else query)
    if payment is None:
        raise NotFound("no such payment")
    return payment


def _expire_if_due(s: Session, rules: Rules, payment: Payment) -> None:
    if payment.status == PaymentStatus.PENDING and payment.expires_at <= rules.now():
        payment.status = PaymentStatus.EXPIRED
        payment.finished_at = payment.expires_at
        for challenge in s.scalars(select(Challenge).where(Challenge.payment_id == payment.id)):
            challenge.token_enc = None


def _pending(s: Session, rules: Rules, merchant: MerchantAuth, payment_id: str) -> Payment:
    """The payment locked, expired if its time is up; NotPending unless it is still pending."""
    payment = _load(s, merchant, payment_id, lock=True)  # row lock: concurrent changes queue here
    _expire_if_due(s, rules, payment)
    if payment.status != PaymentStatus.PENDING:
        raise NotPending("the payment is not pending", status=payment.status)
    return payment


def get(s: Session, rules: Rules, merchant: MerchantAuth, payment_id: str) -> views.Payment:
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


def confirm(s: Session, rules: Rules, merchant: MerchantAuth, payment_id: str, token: str) -> views.Payment:
    """The payment and its cardholder locked and read once; the right token on a live pending payment is
    written in one step (payment_sql.write_validation); anything else is refused by `_refuse`."""
    conn = s.connection()
    row = payment_sql.lock_for_confirm(conn, payment_id, merchant.id)
    if row is None:
        raise NotFound("no such payment")
    now = rules.now()
    if row.status == PaymentStatus.PENDING and row.expires_at > now and not budget.is_locked(row, now):
        challenge = payment_sql.current_challenge(conn, payment_id)
        if (
            challenge is not None
            and challenge.used_at is None
            and challenge.expires_at > now
            and (challenge.merchant_id, challenge.amount, challenge.currency)
            == (merchant.id, row.amount, row.currency)
            and rules.vault.matches("token:payment", token, challenge.token_digest)
        ):
            PAYMENT.next(PaymentStatus(row.status), PaymentStatus.VALIDATED)  # as the ORM checks it
            audit_row = _audit_row(now, merchant, "payment.validated", payment_id)
            payment_sql.write_validation(conn, payment_id, challenge.id, row.cardholder_id, now, audit_row)
            return dataclasses.replace(_view(rules, row, challenge.sms, now), status=PaymentStatus.VALIDATED)
    _refuse(s, rules, merchant, payment_id, now)


def _refuse(s: Session, rules: Rules, merchant: MerchantAuth, payment_id: str, now: dt.datetime) -> NoReturn:
    """Not pending (or expired now), a locked cardholder, or a wrong, used or expired code: what is
    written and raised. The rows are locked already (confirm)."""
    payment = _pending(s, rules, merchant, payment_id)
    holder = s.get(Cardholder, payment.cardholder_id)
    assert holder is not None
    if budget.is_locked(holder, now):
        _finish(s, payment, PaymentStatus.FAILED, now)
        audit.record(
            s, rules, f"merchant:{merchant.id}", "payment.failed", f"payment:{payment.id}", why="locked"
        )
        raise NotPending("the payment is not pending", status=payment.status)
    payment.wrong_tokens += 1
    challenge = _current_challenge(s, payment)
    if challenge is not None:
        challenge.wrong_attempts += 1
    locked = budget.record_wrong_code(s, rules, holder, challenge, "payment")
    remaining = rules.settings.tokens.max_attempts - payment.wrong_tokens
    if remaining <= 0 or locked:
        _finish(s, payment, PaymentStatus.FAILED, now)
        remaining = 0
    audit.record(
        s, rules, f"merchant:{merchant.id}", "payment.wrong-token", f"payment:{payment.id}", left=remaining
    )
    raise InvalidToken("wrong token", attempts_remaining=remaining, status=payment.status)


def _finish(s: Session, payment: Payment, status: PaymentStatus, now: dt.datetime) -> None:
    payment.status = status
    payment.finished_at = now
    for challenge in s.scalars(select(Challenge).where(Challenge.payment_id == payment.id)):
        tokens.retire(s, challenge)


def resend(s: Session, rules: Rules, merchant: MerchantAuth, payment_id: str) -> views.Payment:
    payment = _pending(s, rules, merchant, payment_id)
    cfg = rules.settings.tokens
    if payment.resends >= cfg.max_resends:
        raise ResendLimit("no more resends for this payment", max_resends=cfg.max_resends)
    wait = (payment.last_token_at + dt.timedelta(seconds=cfg.resend_interval) - rules.now()).total_seconds()
    if wait > 0:
        raise RateLimited("a code was sent moments ago", retry_after=wait)
    holder = s.get(Cardholder, payment.cardholder_id)
    assert holder is not None
    old = _current_challenge(s, payment)
    tokens.check_rate(s, rules, holder)  # before killing the old code: a refused resend changes nothing
    if old is not None:
        tokens.retire(s, old)
    bound = tokens.Bound(payment.id, merchant.id, payment.amount, payment.currency)
    payment.expires_at = tokens.issue(s, rules, holder, "payment", _token_text(rules, merchant, bound), bound)
    payment.resends += 1
    payment.last_token_at = rules.now()
    audit.record(s, rules, f"merchant:{merchant.id}", "payment.resend", f"payment:{payment.id}")
    return view(s, rules, payment)


def cancel(s: Session, rules: Rules, merchant: MerchantAuth, payment_id: str) -> views.Payment:
    payment = _pending(s, rules, merchant, payment_id)
    _finish(s, payment, PaymentStatus.CANCELLED, rules.now())
    audit.record(s, rules, f"merchant:{merchant.id}", "payment.cancel", f"payment:{payment.id}")
    return view(s, rules, payment)
