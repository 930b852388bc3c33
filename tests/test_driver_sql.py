"""The payment hot paths on the DBAPI cursor (core/driver.py): what they write is stored exactly as
SQLAlchemy stores the same values, reads back unchanged through the ORM, and what they read equals what
SQLAlchemy reads; driver errors surface as SQLAlchemy's. On SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
from typing import Any, cast

import pytest
from conftest import BlockingCore, FakeClock
from domain_helpers import active_cardholder, merchant, sent_tokens
from sqlalchemy import Table, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from idtronic_tel.core import payment_sql, payments
from idtronic_tel.core.models import (
    AuditEntry,
    Base,
    Cardholder,
    Challenge,
    IdempotencyRecord,
    Payment,
    SmsMessage,
)

BODY = {"amount": 4990, "currency": "EUR", "reference": "order-1", "description": "Shoes"}


def _raw(s: Session, table: Table, where: str, value: Any) -> tuple[Any, ...]:
    """The stored values as the driver returns them, without SQLAlchemy's type processing."""
    placeholder = "?" if s.get_bind().dialect.name == "sqlite" else "%(v)s"
    args: Any = (value,) if placeholder == "?" else {"v": value}
    row = s.connection().exec_driver_sql(f"SELECT * FROM {table.name} WHERE {where} = {placeholder}", args)
    return tuple(row.one())


def _copy_matches(s: Session, entity: Any, pk: str, new_pk: Any) -> None:
    """`entity`, read through the ORM and written again through SQLAlchemy Core under `new_pk`, is
    stored with the same values as the original (the primary key apart)."""
    table = cast(Table, type(entity).__table__)
    values = {c.key: getattr(entity, c.key) for c in table.c if c.key != pk}
    s.connection().execute(insert(table).values({**values, pk: new_pk}))
    original = _raw(s, table, pk, getattr(entity, pk))
    copy = _raw(s, table, pk, new_pk)
    at = [c.key for c in table.c].index(pk)
    strip = lambda row: row[:at] + row[at + 1 :]  # noqa: E731
    assert strip(original) == strip(copy), table.name
    assert [type(v) for v in strip(original)] == [type(v) for v in strip(copy)], table.name


def _one(s: Session, entity: type[Base], *where: Any) -> Any:
    return s.scalars(select(entity).where(*where)).one()


def test_rows_written_on_the_driver_read_back_as_sqlalchemy_writes_them(
    core: BlockingCore, clock: FakeClock
) -> None:
    shop = merchant(core)
    identifier = active_cardholder(core, clock)
    sent_tokens(core)
    created = core(payments.create, shop, {**BODY, "identifier": identifier}, "key-1", "digest")[1]
    now = clock.now
    [(_, token)] = sent_tokens(core)

    def check_created(s: Session) -> None:
        payment = s.get(Payment, created["id"])
        assert payment is not None
        assert (payment.status, payment.amount, payment.created_at, payment.last_token_at) == (
            "pending",
            4990,
            now,
            now,
        )
        assert payment.created_at.tzinfo is dt.UTC and payment.validated_at is None
        _copy_matches(s, payment, "id", "pay_copy")
        challenge = _one(s, Challenge, Challenge.payment_id == created["id"])
        assert (challenge.revoked, challenge.used_at, challenge.created_at) == (False, None, now)
        _copy_matches(s, challenge, "id", 10_000)
        sms = _one(s, SmsMessage, SmsMessage.payment_id == created["id"])
        assert (sms.challenge_id, sms.in_doubt, sms.created_at) == (challenge.id, False, now)
        _copy_matches(s, sms, "id", 10_000)
        audit = _one(s, AuditEntry, AuditEntry.action == "payment.create")
        assert (audit.at, audit.subject, audit.detail) == (now, f"payment:{created['id']}", "")
        _copy_matches(s, audit, "id", 10_000)
        record = _one(s, IdempotencyRecord, IdempotencyRecord.key == "key-1")
        assert (record.status_code, record.created_at) == (201, now)
        _copy_matches(s, record, "key", "key-copy")
        s.rollback()  # the copies were only for the comparison

    core.raw(check_created)
    clock.advance(5.5)
    assert core(payments.confirm, shop, created["id"], token)["status"] == "validated"
    validated = clock.now

    def check_validated(s: Session) -> None:
        payment = s.get(Payment, created["id"])
        assert payment is not None
        assert (payment.status, payment.validated_at, payment.finished_at) == (
            "validated",
            validated,
            validated,
        )
        _copy_matches(s, payment, "id", "pay_copy")
        challenge = _one(s, Challenge, Challenge.payment_id == created["id"])
        assert (challenge.used_at, challenge.token_enc) == (validated, None)
        _copy_matches(s, challenge, "id", 10_000)
        holder = _one(s, Cardholder, Cardholder.identifier == identifier)
        assert (holder.failures, holder.lock_count, holder.updated_at) == (0, 0, validated)
        audit = _one(s, AuditEntry, AuditEntry.action == "payment.validated")
        assert (audit.at, audit.actor) == (validated, f"merchant:{shop.id}")
        _copy_matches(s, audit, "id", 10_000)
        s.rollback()

    core.raw(check_validated)


def test_rows_read_on_the_driver_equal_sqlalchemys(core: BlockingCore, clock: FakeClock) -> None:
    shop = merchant(core)
    identifier = active_cardholder(core, clock)
    created = core(payments.create, shop, {**BODY, "identifier": identifier}, "key-1", "digest")[1]
    until = clock.now + dt.timedelta(minutes=3)

    def lock_until(s: Session) -> None:
        holder = _one(s, Cardholder, Cardholder.identifier == identifier)
        holder.locked_until = until

    core.raw(lock_until)
    since = clock.now - dt.timedelta(hours=1)
    reads = [
        (payment_sql.idempotent_answer, (shop.id, "key-1"), {"b_merchant": shop.id, "b_key": "key-1"}),
        (payment_sql.holder, (identifier, since), {"b_identifier": identifier, "b_since": since}),
        (
            payment_sql.lock_for_confirm,
            (created["id"], shop.id),
            {"b_payment": created["id"], "b_merchant": shop.id},
        ),
        (payment_sql.current_challenge, (created["id"],), {"b_payment": created["id"]}),
    ]

    def compare(s: Session) -> None:
        conn = s.connection()
        for (read, args, params), stmt in zip(
            reads,
            [
                payment_sql._IDEMPOTENT_ANSWER,
                payment_sql._HOLDER,
                payment_sql._LOCK_FOR_CONFIRM,
                payment_sql._CURRENT_CHALLENGE,
            ],
            strict=True,
        ):
            ours = read(conn, *args)
            theirs = conn.execute(stmt, params).one()
            assert ours is not None and tuple(ours) == tuple(theirs), read.__name__
            assert [type(v) for v in ours] == [type(v) for v in theirs], read.__name__
        holder = payment_sql.holder(conn, identifier, since)
        assert holder is not None and holder.locked_until == until and holder.locked_until.tzinfo is dt.UTC
        assert holder.recent == 1 and holder.oldest == clock.now and holder.locked is False
        assert payment_sql.holder(conn, "0000000000", since) is None

    core.raw(compare)


def test_driver_errors_are_sqlalchemys(core: BlockingCore, clock: FakeClock) -> None:
    shop = merchant(core)
    row = {
        "merchant_id": shop.id,
        "key": "k",
        "request_digest": "d",
        "status_code": 201,
        "response": "{}",
        "created_at": clock.now,
    }

    def twice(s: Session) -> None:
        payment_sql.INSERT_IDEMPOTENCY.execute(s.connection(), row)
        payment_sql.INSERT_IDEMPOTENCY.execute(s.connection(), row)

    with pytest.raises(IntegrityError):
        core.raw(twice)

    def naive(s: Session) -> None:
        payment_sql.INSERT_IDEMPOTENCY.execute(s.connection(), {**row, "created_at": dt.datetime(2026, 1, 1)})

    with pytest.raises(ValueError, match="naive datetime"):
        core.raw(naive)
