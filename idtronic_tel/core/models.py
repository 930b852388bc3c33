"""Database tables (SQLAlchemy 2). Schema changes go through Alembic (idtronic_tel/migrations).

What is stored about secrets: API keys, tokens and profile sessions only as HMAC digests; card digits
and queued SMS texts (which carry tokens) only as AES-256-GCM ciphertexts. Times are UTC.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, validates

from .states import ATTEMPT, CALLBACK, CARDHOLDER, PAYMENT


class UtcDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class ServiceState(Base):
    """One row (id=1): the global suspension switch and its public notice."""

    __tablename__ = "service_state"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    suspended: Mapped[bool] = mapped_column(Boolean, default=False)
    notice: Mapped[str] = mapped_column(Text, default="")
    changed_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)


class Merchant(Base):
    __tablename__ = "merchants"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    domain: Mapped[str | None] = mapped_column(String(253))
    key_digest: Mapped[str] = mapped_column(String(64), unique=True)
    # The hmac.key id (crypto.key_id) key_digest was computed with; NULL: written before key rotation.
    digest_key_id: Mapped[str | None] = mapped_column(String(16))
    key_hint: Mapped[str] = mapped_column(String(20))  # prefix + 4 chars, for the operator's listings
    # The key a rotate-key with an overlap replaced: it still authenticates until previous_key_until.
    previous_key_digest: Mapped[str | None] = mapped_column(String(64), index=True)
    previous_key_until: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    suspended: Mapped[bool] = mapped_column(Boolean, default=False)
    notice: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    removed_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)


class Cardholder(Base):
    __tablename__ = "cardholders"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    identifier: Mapped[str] = mapped_column(String(10), unique=True)
    last_name: Mapped[str] = mapped_column(String(100))
    first_name: Mapped[str] = mapped_column(String(100))
    birth_date: Mapped[dt.date] = mapped_column(Date)
    mobile: Mapped[str] = mapped_column(String(20))
    mobile_pending: Mapped[str | None] = mapped_column(String(20))
    channel: Mapped[str] = mapped_column(String(10))
    status: Mapped[str] = mapped_column(String(20))  # states.CardholderStatus
    first8_enc: Mapped[bytes | None] = mapped_column(LargeBinary)  # until the callback succeeds
    card_enc: Mapped[bytes | None] = mapped_column(LargeBinary)  # the 16 digits, for the bank's back-end
    card_fingerprint: Mapped[str | None] = mapped_column(String(64), unique=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)  # consecutive, all channels (§4)
    locked: Mapped[bool] = mapped_column(Boolean, default=False)  # by an operator, until unlocked
    # The failure budget's temporary lock (§4) and how many such locks came in a row (the next one is longer).
    locked_until: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    lock_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    lock_reason: Mapped[str] = mapped_column(Text, default="")
    suspended: Mapped[bool] = mapped_column(Boolean, default=False)
    notice: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    activated_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)

    @validates("status")
    def _check_status(self, key: str, value: str) -> str:
        return CARDHOLDER.move(self.status, value).value


class Payment(Base):
    __tablename__ = "payments"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchants.id"), index=True)
    cardholder_id: Mapped[int] = mapped_column(ForeignKey("cardholders.id"), index=True)
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    reference: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(20))  # states.PaymentStatus
    wrong_tokens: Mapped[int] = mapped_column(Integer, default=0)
    resends: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    expires_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    last_token_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    validated_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)

    @validates("status")
    def _check_status(self, key: str, value: str) -> str:
        return PAYMENT.move(self.status, value).value


class Challenge(Base):
    """A one-time token: bound to its purpose and, for payments, to the payment, merchant, amount and
    currency. Only its keyed hash is stored."""

    __tablename__ = "challenges"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    cardholder_id: Mapped[int] = mapped_column(ForeignKey("cardholders.id"))
    purpose: Mapped[str] = mapped_column(String(20))  # payment | profile
    payment_id: Mapped[str | None] = mapped_column(ForeignKey("payments.id"), index=True)
    merchant_id: Mapped[str | None] = mapped_column(String(40))
    amount: Mapped[int | None] = mapped_column(BigInteger)
    currency: Mapped[str | None] = mapped_column(String(3))
    token_digest: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    expires_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    used_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)  # superseded by a resend
    wrong_attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Only while the voice fallback is enabled and the token lives: the code, encrypted, for reading it out.
    token_enc: Mapped[bytes | None] = mapped_column(LargeBinary)

    __table_args__ = (Index("ix_challenges_holder_created", "cardholder_id", "created_at"),)


class SmsMessage(Base):
    """The durable SMS outbox. The text carries the token, so it is stored encrypted."""

    __tablename__ = "sms_outbox"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    cardholder_id: Mapped[int | None] = mapped_column(ForeignKey("cardholders.id"))
    payment_id: Mapped[str | None] = mapped_column(ForeignKey("payments.id"), index=True)
    challenge_id: Mapped[int | None] = mapped_column(ForeignKey("challenges.id"))
    purpose: Mapped[str] = mapped_column(String(20))
    destination: Mapped[str] = mapped_column(String(20))
    body_enc: Mapped[bytes] = mapped_column(LargeBinary)
    # queued | sending | submitted | delivered | undeliverable | expired
    state: Mapped[str] = mapped_column(String(20))
    in_doubt: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    expires_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    claimed_by: Mapped[str | None] = mapped_column(String(100))
    claimed_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    # While SENDING: the claimer renews this; past it, the claim is stale (its daemon is gone).
    lease_until: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    # Copies sent again after a write whose response never came (crash, lost link, timeout).
    resends: Mapped[int] = mapped_column(Integer, server_default="0")
    submitted_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    bind: Mapped[str | None] = mapped_column(String(100))
    reason: Mapped[str] = mapped_column(Text, default="")

    __table_args__ = (Index("ix_sms_outbox_state_id", "state", "id"),)


class SmsPart(Base):
    """One SMSC message per part of a (possibly concatenated) SMS, matched by delivery receipts."""

    __tablename__ = "sms_parts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sms_id: Mapped[int] = mapped_column(ForeignKey("sms_outbox.id"), index=True)
    part_no: Mapped[int] = mapped_column(Integer)
    message_id: Mapped[str] = mapped_column(String(80), index=True)
    state: Mapped[str] = mapped_column(String(20))  # submitted | delivered | undeliverable | expired


class CallbackRequest(Base):
    """A reason to call a cardholder (enrollment, new mobile number, voice token) and its retry state."""

    __tablename__ = "callback_requests"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    cardholder_id: Mapped[int] = mapped_column(ForeignKey("cardholders.id"), index=True)
    kind: Mapped[str] = mapped_column(String(20))  # enroll | mobile_change | voice_token
    mobile: Mapped[str] = mapped_column(String(20))
    state: Mapped[str] = mapped_column(String(20))  # states.CallbackState
    calls_made: Mapped[int] = mapped_column(Integer, default=0)
    next_call_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    not_after: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)  # voice token: its expiry
    challenge_id: Mapped[int | None] = mapped_column(ForeignKey("challenges.id"))  # voice token
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)

    __table_args__ = (Index("ix_callback_requests_state_next", "state", "next_call_at"),)

    @validates("state")
    def _check_state(self, key: str, value: str) -> str:
        return CALLBACK.move(self.state, value).value


class CallbackAttempt(Base):
    """One call: its id travels as IDTRONIC_CALLBACK and AGI argument, so an answer finds it again."""

    __tablename__ = "callback_attempts"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("callback_requests.id"), index=True)
    attempt_no: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(20))  # states.AttemptState
    outcome: Mapped[str | None] = mapped_column(String(20))  # states.AttemptOutcome
    detail: Mapped[str] = mapped_column(Text, default="")
    worker: Mapped[str] = mapped_column(String(100))
    action_id: Mapped[str | None] = mapped_column(String(100))
    entries_used: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    deadline: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    answered_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    ended_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)

    @validates("state")
    def _check_state(self, key: str, value: str) -> str:
        return ATTEMPT.move(self.state, value).value


class ProfileSession(Base):
    __tablename__ = "profile_sessions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_digest: Mapped[str] = mapped_column(String(64), unique=True)
    cardholder_id: Mapped[int] = mapped_column(ForeignKey("cardholders.id"))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    last_seen_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    closed: Mapped[bool] = mapped_column(Boolean, default=False)


class IdempotencyRecord(Base):
    """A merchant's Idempotency-Key: the request's digest and the answer given, replayed on repeat."""

    __tablename__ = "idempotency_keys"
    merchant_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    request_digest: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int] = mapped_column(Integer)
    response: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)


class AuditEntry(Base):
    """Append-only (a trigger refuses UPDATE and DELETE): who did what to what, when. Never secrets."""

    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[dt.datetime] = mapped_column(UtcDateTime, index=True)
    actor: Mapped[str] = mapped_column(String(100))  # operator | merchant:<id> | cardholder | ivr | system
    action: Mapped[str] = mapped_column(String(60))
    subject: Mapped[str] = mapped_column(String(100))
    detail: Mapped[str] = mapped_column(Text, default="")
