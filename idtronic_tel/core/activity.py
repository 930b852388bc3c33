"""What the operator's console lists: the latest payments, SMS and callbacks, and the audit trail. Only
what an operator may read: never a code, an SMS text, a card digit or a key; the identification numbers
and mobile numbers are given whole here and masked by the console."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from .models import AuditEntry, CallbackRequest, Cardholder, Merchant, Payment, SmsMessage


def recent(s: Session, limit: int) -> dict[str, list[dict[str, Any]]]:
    payments = s.execute(
        select(Payment, Merchant.name, Cardholder.identifier)
        .join(Merchant, Merchant.id == Payment.merchant_id)
        .join(Cardholder, Cardholder.id == Payment.cardholder_id)
        .order_by(Payment.created_at.desc())
        .limit(limit)
    ).all()
    sms = s.scalars(select(SmsMessage).order_by(SmsMessage.id.desc()).limit(limit)).all()
    callbacks = s.execute(
        select(CallbackRequest, Cardholder.identifier)
        .join(Cardholder, Cardholder.id == CallbackRequest.cardholder_id)
        .order_by(CallbackRequest.id.desc())
        .limit(limit)
    ).all()
    audit = s.scalars(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)).all()
    return {
        "payments": [
            {
                "id": p.id,
                "created_at": p.created_at.isoformat(),
                "merchant": name,
                "identifier": identifier,
                "amount": p.amount,
                "currency": p.currency,
                "status": p.status,
                "wrong_tokens": p.wrong_tokens,
            }
            for p, name, identifier in payments
        ],
        "sms": [
            {
                "id": m.id,
                "created_at": m.created_at.isoformat(),
                "purpose": m.purpose,
                "destination": m.destination,
                "state": m.state,
                "bind": m.bind or "",
            }
            for m in sms
        ],
        "callbacks": [
            {
                "id": c.id,
                "created_at": c.created_at.isoformat(),
                "kind": c.kind,
                "identifier": identifier,
                "mobile": c.mobile,
                "state": c.state,
                "calls_made": c.calls_made,
            }
            for c, identifier in callbacks
        ],
        "audit": [
            {
                "at": a.at.isoformat(),
                "actor": a.actor,
                "action": a.action,
                "subject": a.subject,
                "detail": a.detail,
            }
            for a in audit
        ],
    }
