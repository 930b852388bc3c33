"""Purchases (docs/rules.md §2): a payment, its single-use token and its SMS, created in one transaction;
confirmation, resend, cancel; merchant isolation (another merchant's payment does not exist)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any, cast

from sqlalchemy import Insert, Table, and_, bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from . import audit, budget, tokens
from .cards import identifier_problem
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
from .models import AuditEntry, Cardholder, Challenge, IdempotencyRecord, Payment, SmsMessage
from .rules import Rules
from .states import PAYMENT, CardholderStatus, PaymentStatus

# The hot paths (create, confirm) run these statements, built once: no statement construction, cache
# key or ORM work per request, only parameters. Keys of the parameters that name columns are the
# inserted or updated values; the WHERE parameters are named b_*.
_payments = cast(Table, Payment.__table__)
_holders = cast(Table, Cardholder.__table__)
_challenges = cast(Table, Challenge.__table__)
_sms = cast(Table, SmsMessage.__table__)
_idempotency = cast(Table, IdempotencyRecord.__table__)
_INSERT_PAYMENT = insert(_payments)
_audit_log = cast(Table, AuditEntry.__table__)
_INSERT_AUDIT = insert(_audit_log)
_INSERT_IDEMPOTENCY = insert(_idempotency)
_IDEMPOTENT_ANSWER = select(
    _idempotency.c.request_digest, _idempotency.c.status_code, _idempotency.c.response
).where(_idempotency.c.merchant_id == bindparam("b_merchant"), _idempotency.c.key == bindparam("b_key"))
_recent = and_(  # the cardholder's tokens in the rate window: the (cardholder_id, created_at) index
    _challenges.c.cardholder_id == _holders.c.id,
    _challenges.c.created_at > bindparam("b_since", type_=_challenges.c.created_at.type),
)
_HOLDER = select(
    _holders.c.id,
    _holders.c.status,
    _holders.c.locked,
    _holders.c.suspended,
    _holders.c.mobile,
    select(func.count()).where(_recent).scalar_subquery().label("recent"),
    select(func.min(_challenges.c.created_at)).where(_recent).scalar_subquery().label("oldest"),
).where(_holders.c.identifier == bindparam("b_identifier"))
# Row locks on the payment and its cardholder (in that order, as in _confirm_slow): concurrent confirms
# of one payment queue here, and the next one sees it validated.
_LOCK_FOR_CONFIRM = (
    select(
        _payments.c.status,
        _payments.c.amount,
        _payments.c.currency,
        _payments.c.reference,
        _payments.c.description,
        _payments.c.created_at,
        _payments.c.expires_at,
        _payments.c.wrong_tokens,
        _payments.c.cardholder_id,
        _holders.c.locked,
    )
    .select_from(_payments.join(_holders, _holders.c.id == _payments.c.cardholder_id))
    .where(_payments.c.id == bindparam("b_payment"), _payments.c.merchant_id == bindparam("b_merchant"))
    .with_for_update()
)
_CURRENT_CHALLENGE = (
    select(
        _challenges.c.id,
        _challenges.c.used_at,
        _challenges.c.expires_at,
        _challenges.c.merchant_id,
        _challenges.c.amount,
        _challenges.c.currency,
        _challenges.c.token_digest,
        select(_sms.c.state)  # the state of the payment's latest SMS, for the view
        .where(_sms.c.payment_id == bindparam("b_payment"))
        .order_by(_sms.c.id.desc())
        .limit(1)
        .scalar_subquery()
        .label("sms"),
    )
    .where(_challenges.c.payment_id == bindparam("b_payment"), _challenges.c.revoked.is_(False))
    .order_by(_challenges.c.id.desc())
    .limit(1)
)
_UPDATE_CHALLENGE = update(_challenges).where(_challenges.c.id == bindparam("b_id"))
_UPDATE_PAYMENT = update(_payments).where(_payments.c.id == bindparam("b_id"))
_UPDATE_HOLDER = update(_holders).where(_holders.c.id == bindparam("b_id"))


# PostgreSQL only: the writes of a creation, and of a validation, as one statement each (data-modifying
# WITH clauses; foreign keys are checked at the end of the statement). Other backends run them one by one.
def _bound_insert(table: Table, prefix: str, names: tuple[str, ...]) -> Insert:
    return insert(table).values({n: bindparam(prefix + n, type_=table.c[n].type) for n in names})


_PAYMENT_COLUMNS = (
    "id",
    "merchant_id",
    "cardholder_id",
    "amount",
    "currency",
    "reference",
    "description",
    "status",
    "wrong_tokens",
    "resends",
    "created_at",
    "expires_at",
    "last_token_at",
)
_AUDIT_COLUMNS = ("at", "actor", "action", "subject", "detail")
_new_payment = _bound_insert(_payments, "p_", _PAYMENT_COLUMNS).cte("new_payment")
_new_challenge = (
    _bound_insert(_challenges, "c_", tokens.CHALLENGE_COLUMNS)
    .returning(_challenges.c.id)
    .cte("new_challenge")
)
_new_audit = _bound_insert(_audit_log, "a_", _AUDIT_COLUMNS).cte("new_audit")
_CREATE_PG = (
    insert(_sms)
    .from_select(
        [*tokens.SMS_COLUMNS, "challenge_id"],
        select(*[bindparam("s_" + n, type_=_sms.c[n].type) for n in tokens.SMS_COLUMNS], _new_challenge.c.id),
    )
    .add_cte(_new_payment, _new_audit)
)
_now = bindparam("b_now", type_=_payments.c.validated_at.type)
_VALIDATE_PG = _bound_insert(_audit_log, "a_", _AUDIT_COLUMNS).add_cte(
    update(_challenges)
    .where(_challenges.c.id == bindparam("b_challenge"))
    .values(used_at=_now, token_enc=None)
    .cte("used_challenge"),
    update(_payments)
    .where(_payments.c.id == bindparam("b_payment"))
    .values(status=PaymentStatus.VALIDATED.value, validated_at=_now, finished_at=_now)
    .cte("validated_payment"),
    update(_holders)  # budget.record_success: a success resets the cardholder's failure counter
    .where(_holders.c.id == bindparam("b_holder"))
    .values(failures=0, updated_at=_now)
    .cte("reset_holder"),
)

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
        "attempts_remaining": max(0, rules.settings.tokens.max_attempts - payment.wrong_tokens),
    }


def _validate(body: dict[str, Any]) -> None:
    problems: dict[str, str] = {}
    identifier = identifier_problem(body.get("identifier"))
    if identifier is not None:
        problems["identifier"] = identifier
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
    """Returns (HTTP-like status, payment view). Same Idempotency-Key + same body: the first answer.

    The hot path of the API: Core statements on the session's connection (no ORM unit of work), the
    answer built from the values inserted rather than read back."""
    conn = s.connection()
    if idempotency_key is not None:
        previous = conn.execute(
            _IDEMPOTENT_ANSWER, {"b_merchant": merchant.id, "b_key": idempotency_key}
        ).first()
        if previous is not None:
            if previous.request_digest != request_digest:
                raise IdempotencyConflict("this Idempotency-Key was used with another request body")
            return previous.status_code, json.loads(previous.response)
    _validate(body)
    cfg = rules.settings.tokens
    since = rules.now() - dt.timedelta(seconds=cfg.per_cardholder_window)
    holder = conn.execute(_HOLDER, {"b_identifier": body["identifier"], "b_since": since}).first()
    if holder is None or holder.status != CardholderStatus.ACTIVE or holder.locked or holder.suspended:
        reason = "unknown" if holder is None else ("locked" if holder.locked else holder.status)
        if holder is not None and holder.suspended:
            reason = "suspended"
        audit.record(s, rules, f"merchant:{merchant.id}", "payment.refused", "cardholder", reason=reason)
        raise PaymentRefused("this payment cannot be authenticated", reason=reason)
    tokens.refuse_over_rate(rules, holder.recent, holder.oldest)  # before any write
    now = rules.now()
    expires = now + dt.timedelta(seconds=cfg.lifetime)
    payment_id = public_id("pay_")
    amount, currency = body["amount"], body["currency"]
    description = body.get("description", "")
    payment = {
        "id": payment_id,
        "merchant_id": merchant.id,
        "cardholder_id": holder.id,
        "amount": amount,
        "currency": currency,
        "reference": body["reference"],
        "description": description,
        "status": PaymentStatus.PENDING,
        "wrong_tokens": 0,
        "resends": 0,
        "created_at": now,
        "expires_at": expires,
        "last_token_at": now,
    }
    challenge, sms = tokens.token_rows(
        rules,
        holder.id,
        holder.mobile,
        "payment",
        _token_text(rules, merchant, amount, currency),
        now,
        payment_id,
        merchant.id,
        amount,
        currency,
    )
    audit_row = _audit_row(now, merchant, "payment.create", payment_id)
    if conn.dialect.name == "postgresql":
        conn.execute(_CREATE_PG, _prefixed(p_=payment, c_=challenge, s_=sms, a_=audit_row))
    else:
        conn.execute(_INSERT_PAYMENT, payment)
        tokens.issue_core(conn, challenge, sms)
        conn.execute(_INSERT_AUDIT, audit_row)
    answer = {
        "id": payment_id,
        "status": PaymentStatus.PENDING,
        "amount": amount,
        "currency": currency,
        "reference": body["reference"],
        "description": description,
        "created_at": now.isoformat(),
        "expires_at": expires.isoformat(),
        "validated_at": None,
        "sms": "queued",  # its SMS was queued just now
        "attempts_remaining": max(0, cfg.max_attempts),
    }
    if idempotency_key is not None:
        try:
            conn.execute(
                _INSERT_IDEMPOTENCY,
                {
                    "merchant_id": merchant.id,
                    "key": idempotency_key,
                    "request_digest": request_digest,
                    "status_code": 201,
                    "response": json.dumps(answer),
                    "created_at": now,
                },
            )
        except IntegrityError as exc:  # a concurrent request with the same key won: replay it
            raise IdempotentReplay() from exc
    return 201, answer


def _audit_row(now: dt.datetime, merchant: MerchantAuth, action: str, payment_id: str) -> dict[str, Any]:
    """audit.record's row for the hot paths (no detail)."""
    return {
        "at": now,
        "actor": f"merchant:{merchant.id}",
        "action": action,
        "subject": f"payment:{payment_id}",
        "detail": "",
    }


def _prefixed(**rows: dict[str, Any]) -> dict[str, Any]:
    """The parameters of a combined statement: each row's keys behind its prefix."""
    return {prefix + key: value for prefix, row in rows.items() for key, value in row.items()}


def _token_text(rules: Rules, merchant: MerchantAuth, amount: int, currency: str) -> tokens.TextTemplate:
    cfg = rules.settings.tokens
    template = cfg.payment_template
    if merchant.domain:
        # WebOTP / origin-bound one-time codes: browsers fill the code in, and only on that domain.
        template += "\n\n@" + merchant.domain + " #{code}"
    return tokens.TextTemplate(
        template,
        amount=format_amount(amount, currency),
        currency=currency,
        merchant=merchant.name,
        minutes=str(int(cfg.lifetime // 60)),
    )


def _send_token(
    s: Session, rules: Rules, merchant: MerchantAuth, holder: Cardholder, payment: Payment
) -> dt.datetime:
    text = _token_text(rules, merchant, payment.amount, payment.currency)
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
    if payment.status == PaymentStatus.PENDING and payment.expires_at <= rules.now():
        payment.status = PaymentStatus.EXPIRED
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
    """The right token on a live pending payment in Core statements; every other case (unknown, not
    pending, expired, locked cardholder, wrong token) goes to `_confirm_slow`, which redoes the reads
    under the locks this transaction already holds and writes what it must."""
    conn = s.connection()
    row = conn.execute(_LOCK_FOR_CONFIRM, {"b_payment": payment_id, "b_merchant": merchant.id}).first()
    now = rules.now()
    if row is None or row.status != PaymentStatus.PENDING or row.expires_at <= now or row.locked:
        return _confirm_slow(s, rules, merchant, payment_id, token)
    challenge = conn.execute(_CURRENT_CHALLENGE, {"b_payment": payment_id}).first()
    if not (
        challenge is not None
        and challenge.used_at is None
        and challenge.expires_at > now
        and (challenge.merchant_id, challenge.amount, challenge.currency)
        == (merchant.id, row.amount, row.currency)
        and rules.vault.matches("token:payment", token, challenge.token_digest)
    ):
        return _confirm_slow(s, rules, merchant, payment_id, token)
    status = PAYMENT.next(PaymentStatus(row.status), PaymentStatus.VALIDATED)  # as the ORM checks it
    audit_row = _audit_row(now, merchant, "payment.validated", payment_id)
    if conn.dialect.name == "postgresql":
        conn.execute(
            _VALIDATE_PG,
            {
                "b_challenge": challenge.id,
                "b_payment": payment_id,
                "b_holder": row.cardholder_id,
                "b_now": now,
                **_prefixed(a_=audit_row),
            },
        )
    else:
        conn.execute(_UPDATE_CHALLENGE, {"b_id": challenge.id, "used_at": now, "token_enc": None})
        conn.execute(
            _UPDATE_PAYMENT,
            {"b_id": payment_id, "status": status, "validated_at": now, "finished_at": now},
        )
        # budget.record_success: a success resets the cardholder's failure counter.
        conn.execute(_UPDATE_HOLDER, {"b_id": row.cardholder_id, "failures": 0, "updated_at": now})
        conn.execute(_INSERT_AUDIT, audit_row)
    sms = challenge.sms
    return {
        "id": payment_id,
        "status": status,
        "amount": row.amount,
        "currency": row.currency,
        "reference": row.reference,
        "description": row.description,
        "created_at": _iso(row.created_at),
        "expires_at": _iso(row.expires_at),
        "validated_at": now.isoformat(),
        "sms": _SMS_VIEW.get(sms or "queued", sms or "queued"),
        "attempts_remaining": max(0, rules.settings.tokens.max_attempts - row.wrong_tokens),
    }


def _confirm_slow(
    s: Session, rules: Rules, merchant: MerchantAuth, payment_id: str, token: str
) -> dict[str, Any]:
    payment = _load(s, merchant, payment_id, lock=True)  # row lock: concurrent confirms queue here
    _expire_if_due(s, rules, payment)
    if payment.status != PaymentStatus.PENDING:
        raise NotPending("the payment is not pending", status=payment.status)
    holder = s.get(Cardholder, payment.cardholder_id, with_for_update=True)
    assert holder is not None
    now = rules.now()
    if holder.locked:
        _finish(s, payment, PaymentStatus.FAILED, now)
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
        payment.status = PaymentStatus.VALIDATED
        payment.validated_at = payment.finished_at = now
        budget.record_success(rules, holder)
        audit.record(s, rules, f"merchant:{merchant.id}", "payment.validated", f"payment:{payment.id}")
        return view(s, rules, payment)
    payment.wrong_tokens += 1
    if challenge is not None:
        challenge.wrong_attempts += 1
    locked = budget.record_failure(s, rules, holder, "payment")
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


def resend(s: Session, rules: Rules, merchant: MerchantAuth, payment_id: str) -> dict[str, Any]:
    payment = _load(s, merchant, payment_id, lock=True)
    _expire_if_due(s, rules, payment)
    if payment.status != PaymentStatus.PENDING:
        raise NotPending("the payment is not pending", status=payment.status)
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
    payment.expires_at = _send_token(s, rules, merchant, holder, payment)
    payment.resends += 1
    payment.last_token_at = rules.now()
    audit.record(s, rules, f"merchant:{merchant.id}", "payment.resend", f"payment:{payment.id}")
    return view(s, rules, payment)


def cancel(s: Session, rules: Rules, merchant: MerchantAuth, payment_id: str) -> dict[str, Any]:
    payment = _load(s, merchant, payment_id, lock=True)
    _expire_if_due(s, rules, payment)
    if payment.status != PaymentStatus.PENDING:
        raise NotPending("the payment is not pending", status=payment.status)
    _finish(s, payment, PaymentStatus.CANCELLED, rules.now())
    audit.record(s, rules, f"merchant:{merchant.id}", "payment.cancel", f"payment:{payment.id}")
    return view(s, rules, payment)
