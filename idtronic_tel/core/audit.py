"""The append-only audit trail (docs/rules.md §6): who, what, when. Callers pass no secrets in `detail`."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy.orm import Session

from .models import AuditEntry
from .rules import Rules


def record(s: Session, rules: Rules, actor: str, action: str, subject: str, **detail: Any) -> None:
    s.add(
        AuditEntry(
            at=rules.now(),
            actor=actor,
            action=action,
            subject=subject,
            detail=json.dumps(detail, sort_keys=True, default=str) if detail else "",
        )
    )
