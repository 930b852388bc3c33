"""The Twisted web resource that serves the API: parse, authenticate, rate-limit, dispatch, answer.

Every failure becomes the documented JSON error; an unexpected exception is logged with its traceback
and answered 500 without detail (it never carries request data back)."""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from prometheus_client import Counter, Histogram
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web import server
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource

from ..config_schema import ApiConfig, HttpConfig
from ..core.errors import DomainError
from ..core.facade import Core
from .errors import SUSPENDED_RETRY_AFTER, ApiError, from_domain
from .ratelimit import per_hour, per_minute
from .routing import Call, Reply, Route, Router

log = Logger()

# The reason phrase of every status the API sends, as RFC 9110 names them (Twisted knows neither 422 nor
# 429 and would send "Unknown Status").
REASONS = {
    status: HTTPStatus(status).phrase.encode()
    for status in (200, 201, 202, 204, 400, 401, 404, 405, 409, 415, 429, 500, 503)
} | {413: b"Content Too Large", 422: b"Unprocessable Content"}

REQUESTS = Counter("idtronic_http_requests", "HTTP requests answered", ["route", "method", "status"])
LATENCY = Histogram(
    "idtronic_http_request_seconds",
    "HTTP request handling time",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)


class ApiResource(Resource):
    isLeaf = True

    def __init__(
        self,
        core: Core,
        router: Router,
        http: HttpConfig,
        api: ApiConfig,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._core = core
        self._router = router
        self._http = http
        self._operator_key = api.operator_key.encode()
        self._merchant_limit = per_minute(api.merchant_requests_per_minute, clock)
        self._payment_limit = per_minute(api.merchant_payments_per_minute, clock)
        self._public_limit = per_minute(api.public_requests_per_minute, clock)
        self._identifier_limit = per_hour(api.identifier_requests_per_hour, clock)

    def render(self, request: IRequest) -> int:
        started = time.perf_counter()
        d = Deferred.fromCoroutine(self._handle(request))
        d.addCallback(self._write, request, started)
        d.addErrback(lambda failure: log.failure("writing a response failed", failure))
        return server.NOT_DONE_YET

    async def _handle(self, request: IRequest) -> tuple[str, Reply]:
        method = request.method.decode("ascii", "replace")
        path = request.path.decode("utf-8", "replace")
        route, params, allowed = self._router.match(method, path)
        if route is None:
            if allowed:
                return path, _error(
                    ApiError("method_not_allowed", f"use {', '.join(allowed)}"), allow=allowed
                )
            return "unknown", _error(ApiError("not_found", "no such route"))
        try:
            return route.template, await self._dispatch(route, params, request)
        except ApiError as exc:
            return route.template, _error(exc)
        except DomainError as exc:
            return route.template, _error(from_domain(exc))
        except Exception:
            log.failure("unexpected error on {method} {route}", method=method, route=route.template)
            return route.template, _error(ApiError("unavailable", "internal error, try again"), status=500)

    async def _dispatch(self, route: Route, params: dict[str, str], request: IRequest) -> Reply:
        call = Call(request, params, {}, self._client(request))
        await self._authenticate(route, call)
        if route.suspendable:
            suspended, notice = await self._core.suspension_state()
            if suspended:
                raise ApiError(
                    "service_suspended", "the service is suspended", SUSPENDED_RETRY_AFTER, notice=notice
                )
            if call.merchant is not None and call.merchant.suspended:
                raise ApiError(
                    "service_suspended",
                    "the service is suspended",
                    SUSPENDED_RETRY_AFTER,
                    notice=call.merchant.notice,
                )
        # Per-address and per-merchant limits come before any body work; the per-identifier limit needs
        # the identifier, which may be in the body.
        self._limit(route, call, self._address_waits(route, call))
        if route.body is not None:
            call.body = route.body.parse(self._read_body(request))
        self._limit(route, call, self._identifier_waits(route, call))
        return await route.handler(call)

    async def _authenticate(self, route: Route, call: Call) -> None:
        header = (call.request.getHeader("authorization") or "").strip()
        scheme, _, credential = header.partition(" ")
        credential = credential.strip()
        if route.auth == "operator":
            if (
                scheme.lower() != "bearer"
                or not self._operator_key
                or not hmac.compare_digest(credential.encode(), self._operator_key)
            ):
                raise ApiError("unauthorized", "the operator key is missing or wrong")
        elif route.auth == "merchant":
            merchant = (
                await self._core.authenticate_merchant(credential) if scheme.lower() == "bearer" else None
            )
            if merchant is None:
                raise ApiError("unauthorized", "the merchant API key is missing or wrong")
            call.merchant = merchant
            wait = self._merchant_limit.take(merchant.id)
            if wait:
                raise ApiError("rate_limited", "too many requests for this merchant key", int(wait))
            key = call.request.getHeader("idempotency-key")
            if key is not None:
                if not 1 <= len(key) <= 200:
                    raise ApiError("invalid_request", "Idempotency-Key must be 1 to 200 characters")
                call.idempotency_key = key
        elif route.auth == "session":
            if scheme.lower() != "session" or not credential:
                raise ApiError("invalid_session", "send Authorization: Session <session>")
            call.session = credential

    def _address_waits(self, route: Route, call: Call) -> list[float]:
        waits = []
        if route.limited in ("public", "identifier"):
            waits.append(self._public_limit.take(call.client))
        if route.template == "/v1/payments" and call.merchant is not None:
            waits.append(self._payment_limit.take(call.merchant.id))
        return waits

    def _identifier_waits(self, route: Route, call: Call) -> list[float]:
        identifier = call.params.get("identifier") or call.body.get("identifier")
        if route.limited == "identifier" and isinstance(identifier, str):
            return [self._identifier_limit.take(identifier)]
        return []

    def _limit(self, route: Route, call: Call, waits: list[float]) -> None:
        wait = max(waits, default=0)
        if wait:
            raise ApiError("rate_limited", "too many requests, slow down", int(wait))

    def _read_body(self, request: IRequest) -> bytes:
        limit = self._http.max_body_bytes
        declared = request.getHeader("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ApiError("body_too_large", f"bodies are limited to {limit} bytes")
        content = request.content
        raw = content.read(limit + 1) if content is not None else b""
        if len(raw) > limit:
            raise ApiError("body_too_large", f"bodies are limited to {limit} bytes")
        kind = (request.getHeader("content-type") or "").split(";")[0].strip().lower()
        if raw.strip() and kind not in ("application/json", ""):
            raise ApiError("unsupported_media_type", "send the body as application/json")
        return raw

    def _client(self, request: IRequest) -> str:
        if self._http.trust_forwarded_for:
            forwarded = request.getHeader("x-forwarded-for")
            if forwarded:
                return forwarded.split(",")[0].strip()
        address = request.getClientAddress()
        return str(getattr(address, "host", address))

    def _write(self, result: tuple[str, Reply], request: IRequest, started: float) -> None:
        template, reply = result
        request.setResponseCode(reply.status, REASONS.get(reply.status))
        request.setHeader("content-type", reply.content_type)
        request.setHeader("cache-control", "no-store")
        for name, value in reply.headers.items():
            request.setHeader(name, value)
        if reply.body is None:
            payload = b""
        elif isinstance(reply.body, bytes):
            payload = reply.body
        else:
            payload = json.dumps(reply.body, ensure_ascii=False).encode()
        elapsed = time.perf_counter() - started
        REQUESTS.labels(template, request.method.decode("ascii", "replace"), str(reply.status)).inc()
        LATENCY.labels(template).observe(elapsed)
        if getattr(request, "_disconnected", False):
            return
        request.setHeader("content-length", str(len(payload)))  # no chunked encoding for small bodies
        request.write(payload)
        request.finish()


def _error(exc: ApiError, status: int | None = None, allow: list[str] | None = None) -> Reply:
    headers: dict[str, str] = {}
    if exc.retry_after is not None:
        headers["retry-after"] = str(exc.retry_after)
    if allow:
        headers["allow"] = ", ".join(allow)
    body: dict[str, Any] = exc.body()
    return Reply(status or exc.status, body, headers)


class QuietSite(server.Site):
    """No access log lines of Twisted's own: the resource counts requests in metrics, and paths may carry
    identification numbers that operators do not need in every log line.

    Request bodies are never parsed into `request.args` (the API takes JSON only, and query strings are
    still parsed): Twisted would otherwise run each POST's Content-Type through the `email` package,
    about 7 % of the daemon's time on the payment routes."""

    def __init__(self, resource: Any, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("parsePOSTFormSubmission", False)
        super().__init__(resource, *args, **kwargs)

    def log(self, request: Any) -> None:
        pass
