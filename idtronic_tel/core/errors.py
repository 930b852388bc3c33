"""Domain errors. Each carries a stable `code` (the API's "error" field) and a message fit to show.
The HTTP edge maps codes to statuses; nothing here knows about HTTP."""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    code = "error"
    # True when the transaction must still commit (a wrong token counts even though the call fails).
    keep_changes = False

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra


class InvalidInput(DomainError):
    """A field is malformed or out of its allowed range; `fields` maps field name to the problem."""

    code = "invalid_fields"

    def __init__(self, fields: dict[str, str]) -> None:
        super().__init__("invalid fields: " + ", ".join(sorted(fields)), fields=fields)


class NotFound(DomainError):
    code = "not_found"


class PaymentRefused(DomainError):
    """Unknown, locked or suspended cardholder: the same answer for all three (docs/rules.md §2.8); `reason`
    says which, for the operator's log only."""

    code = "payment_refused"
    keep_changes = True

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class InvalidToken(DomainError):
    code = "invalid_token"
    keep_changes = True


class NotPending(DomainError):
    code = "not_pending"
    keep_changes = True  # a lazily expired or failed payment is written back


class Conflict(DomainError):
    code = "conflict"


class IdempotencyConflict(DomainError):
    code = "idempotency_conflict"


class ResendLimit(DomainError):
    """Every resend of this payment is used: waiting will not help, so no retry_after."""

    code = "resend_limit"


class RateLimited(DomainError):
    code = "rate_limited"

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message, retry_after=max(1, int(retry_after + 0.999)))
        self.retry_after = max(1, int(retry_after + 0.999))


class SessionInvalid(DomainError):
    code = "invalid_session"
