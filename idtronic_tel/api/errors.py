"""The API's error format: {"error": code, "message": text, ...extra}, and the status for each code."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from ..core.errors import DomainError

STATUS = {
    "invalid_json": 400,
    "invalid_request": 400,
    "unknown_fields": 400,
    "unauthorized": 401,
    "invalid_session": 401,
    "not_found": 404,
    "method_not_allowed": 405,
    "request_timeout": 408,
    "not_pending": 409,
    "conflict": 409,
    "idempotency_conflict": 409,
    "resend_limit": 409,
    "body_too_large": 413,
    "unsupported_media_type": 415,
    "invalid_fields": 422,
    "payment_refused": 422,
    "invalid_token": 422,
    "rate_limited": 429,
    "service_suspended": 503,
    "unavailable": 503,
}

# The reason phrase of every status the API sends, as RFC 9110 names them (Twisted knows neither 422 nor
# 429 and would send "Unknown Status").
REASONS = {
    status: HTTPStatus(status).phrase.encode() for status in (*STATUS.values(), 200, 201, 202, 204, 500)
} | {
    413: b"Content Too Large",
    422: b"Unprocessable Content",
}

SUSPENDED_RETRY_AFTER = 300  # seconds; suspension has no planned end, so ask clients to come back later


class ApiError(Exception):
    """An error raised by the HTTP layer itself (parsing, authentication, routing)."""

    def __init__(self, code: str, message: str, retry_after: int | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.code, self.message, self.retry_after, self.extra = code, message, retry_after, extra

    @property
    def status(self) -> int:
        return STATUS[self.code]

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message, **self.extra}


def from_domain(error: DomainError) -> ApiError:
    retry_after = getattr(error, "retry_after", None)
    if error.code == "service_suspended":
        retry_after = SUSPENDED_RETRY_AFTER
    extra = {k: v for k, v in error.extra.items() if k != "retry_after"}
    return ApiError(error.code, error.message, retry_after, **extra)
