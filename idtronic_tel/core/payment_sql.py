"""The statements of the payment hot paths (create, confirm), built once and run on the driver
(driver.py), their rows, and the one write path of each operation: on PostgreSQL the writes go as one
statement (data-modifying WITH clauses; foreign keys are checked at the end of the statement), elsewhere
one by one. Callers do not know which."""

from __future__ import annotations

import datetime as dt
from typing import Any, NamedTuple, cast

from sqlalchemy import Connection, Insert, Select, Table, and_, bindparam, func, insert, select, update

from . import tokens
from .driver import Statement
from .models import AuditEntry, Cardholder, Challenge, IdempotencyRecord, Payment, SmsMessage
from .states import PaymentStatus

# No statement construction, cache key or ORM work per request, only parameters. Keys of the parameters
# that name columns are the
# inserted or updated values; the WHERE parameters are named b_*.
_payments = cast(Table, Payment.__table__)
_holders = cast(Table, Cardholder.__table__)
_challenges = cast(Table, Challenge.__table__)
_sms = cast(Table, SmsMessage.__table__)
_idempotency = cast(Table, IdempotencyRecord.__table__)
_audit_log = cast(Table, AuditEntry.__table__)
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
    _holders.c.locked_until,
    _holders.c.suspended,
    _holders.c.mobile,
    select(func.count()).where(_recent).scalar_subquery().label("recent"),
    select(func.min(_challenges.c.created_at)).where(_recent).scalar_subquery().label("oldest"),
).where(_holders.c.identifier == bindparam("b_identifier"))
# Row locks on the payment and its cardholder (in that order, as everywhere): concurrent confirms
# of one payment queue here, and the next one sees it validated.
_LOCK_FOR_CONFIRM = (
    select(
        _payments.c.id,
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
        _holders.c.locked_until,
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


class IdempotentAnswer(NamedTuple):
    request_digest: str
    status_code: int
    response: str


class Holder(NamedTuple):
    id: int
    status: str
    locked: bool
    locked_until: dt.datetime | None
    suspended: bool
    mobile: str
    recent: int  # tokens sent in the rate window, and the oldest of them
    oldest: dt.datetime | None


class LockedPayment(NamedTuple):
    id: str
    status: str
    amount: int
    currency: str
    reference: str
    description: str
    created_at: dt.datetime
    expires_at: dt.datetime
    wrong_tokens: int
    cardholder_id: int
    locked: bool  # the cardholder's
    locked_until: dt.datetime | None


class CurrentChallenge(NamedTuple):
    id: int
    used_at: dt.datetime | None
    expires_at: dt.datetime
    merchant_id: str | None
    amount: int | None
    currency: str | None
    token_digest: str
    sms: str | None


def _query(stmt: Select[Any], row: type[tuple[Any, ...]]) -> Statement:
    """The row type names the statement's columns, in order: checked once, here."""
    assert row._fields == tuple(stmt.selected_columns.keys()), row  # type: ignore[attr-defined]
    return Statement(stmt)


IDEMPOTENT_ANSWER = _query(_IDEMPOTENT_ANSWER, IdempotentAnswer)
HOLDER = _query(_HOLDER, Holder)
LOCK_FOR_CONFIRM = _query(_LOCK_FOR_CONFIRM, LockedPayment)
CURRENT_CHALLENGE = _query(_CURRENT_CHALLENGE, CurrentChallenge)
_UPDATE_CHALLENGE = Statement(
    update(_challenges).where(_challenges.c.id == bindparam("b_id")), ("used_at", "token_enc")
)
_UPDATE_PAYMENT = Statement(
    update(_payments).where(_payments.c.id == bindparam("b_id")), ("status", "validated_at", "finished_at")
)
_UPDATE_HOLDER = Statement(
    update(_holders).where(_holders.c.id == bindparam("b_id")), ("failures", "lock_count", "updated_at")
)


# PostgreSQL only: the writes of a creation, and of a validation, as one statement each.
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
_IDEMPOTENCY_COLUMNS = ("merchant_id", "key", "request_digest", "status_code", "response", "created_at")
_INSERT_PAYMENT = Statement(insert(_payments), _PAYMENT_COLUMNS)
_INSERT_AUDIT = Statement(insert(_audit_log), _AUDIT_COLUMNS)
INSERT_IDEMPOTENCY = Statement(insert(_idempotency), _IDEMPOTENCY_COLUMNS)
_new_payment = _bound_insert(_payments, "p_", _PAYMENT_COLUMNS).cte("new_payment")
_new_challenge = (
    _bound_insert(_challenges, "c_", tokens.CHALLENGE_COLUMNS)
    .returning(_challenges.c.id)
    .cte("new_challenge")
)
_new_audit = _bound_insert(_audit_log, "a_", _AUDIT_COLUMNS).cte("new_audit")
_CREATE_PG = Statement(
    insert(_sms)
    .from_select(
        [*tokens.SMS_COLUMNS, "challenge_id"],
        select(*[bindparam("s_" + n, type_=_sms.c[n].type) for n in tokens.SMS_COLUMNS], _new_challenge.c.id),
    )
    .add_cte(_new_payment, _new_audit)
)
_now = bindparam("b_now", type_=_payments.c.validated_at.type)
_VALIDATE_PG = Statement(
    _bound_insert(_audit_log, "a_", _AUDIT_COLUMNS).add_cte(
        update(_challenges)
        .where(_challenges.c.id == bindparam("b_challenge"))
        .values(used_at=_now, token_enc=None)
        .cte("used_challenge"),
        update(_payments)
        .where(_payments.c.id == bindparam("b_payment"))
        .values(status=PaymentStatus.VALIDATED.value, validated_at=_now, finished_at=_now)
        .cte("validated_payment"),
        update(_holders)  # budget.record_success: a success resets the failure counter and lock lengthening
        .where(_holders.c.id == bindparam("b_holder"))
        .values(failures=0, lock_count=0, updated_at=_now)
        .cte("reset_holder"),
    )
)


def idempotent_answer(conn: Connection, merchant_id: str, key: str) -> IdempotentAnswer | None:
    values = IDEMPOTENT_ANSWER.first(conn, {"b_merchant": merchant_id, "b_key": key})
    return None if values is None else IdempotentAnswer._make(values)


def holder(conn: Connection, identifier: str, since: dt.datetime) -> Holder | None:
    """The cardholder, with the count and oldest of its tokens created after `since`."""
    values = HOLDER.first(conn, {"b_identifier": identifier, "b_since": since})
    return None if values is None else Holder._make(values)


def lock_for_confirm(conn: Connection, payment_id: str, merchant_id: str) -> LockedPayment | None:
    values = LOCK_FOR_CONFIRM.first(conn, {"b_payment": payment_id, "b_merchant": merchant_id})
    return None if values is None else LockedPayment._make(values)


def current_challenge(conn: Connection, payment_id: str) -> CurrentChallenge | None:
    values = CURRENT_CHALLENGE.first(conn, {"b_payment": payment_id})
    return None if values is None else CurrentChallenge._make(values)


def _prefixed(**rows: dict[str, Any]) -> dict[str, Any]:
    """The parameters of a combined statement: each row's keys behind its prefix."""
    return {prefix + key: value for prefix, row in rows.items() for key, value in row.items()}


def write_creation(
    conn: Connection, payment: dict[str, Any], token: tokens.Drawn, audit: dict[str, Any]
) -> None:
    """A new payment, its token and SMS, and its audit entry (rows of _PAYMENT_COLUMNS, _AUDIT_COLUMNS)."""
    if conn.dialect.name == "postgresql":
        _CREATE_PG.execute(conn, _prefixed(p_=payment, c_=token.challenge, s_=token.sms, a_=audit))
    else:
        _INSERT_PAYMENT.execute(conn, payment)
        tokens.store(conn, token)
        _INSERT_AUDIT.execute(conn, audit)


def write_validation(
    conn: Connection,
    payment_id: str,
    challenge_id: int,
    holder_id: int,
    now: dt.datetime,
    audit: dict[str, Any],
) -> None:
    """The right token: the challenge used, the payment validated, the cardholder's failure counter reset
    (budget.record_success), the audit entry."""
    if conn.dialect.name == "postgresql":
        params = {"b_challenge": challenge_id, "b_payment": payment_id, "b_holder": holder_id, "b_now": now}
        _VALIDATE_PG.execute(conn, {**params, **_prefixed(a_=audit)})
    else:
        _UPDATE_CHALLENGE.execute(conn, {"b_id": challenge_id, "used_at": now, "token_enc": None})
        _UPDATE_PAYMENT.execute(
            conn,
            {
                "b_id": payment_id,
                "status": PaymentStatus.VALIDATED.value,
                "validated_at": now,
                "finished_at": now,
            },
        )
        _UPDATE_HOLDER.execute(conn, {"b_id": holder_id, "failures": 0, "lock_count": 0, "updated_at": now})
        _INSERT_AUDIT.execute(conn, audit)
