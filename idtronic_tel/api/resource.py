"""The Twisted web resource that serves the API: parse, authenticate, rate-limit, dispatch, answer.

Every failure becomes the documented JSON error; an unexpected exception is logged with its traceback
and answered 500 without detail (it never carries request data back). What the client sends is decoded
strictly before anything reads it: the path as ASCII, the query string and every header read as UTF-8
text without control characters (400 otherwise). Metrics are labelled with the route's template, a
fixed method set and the status only, so no request can add a series."""

from __future__ import annotations

import hmac
import json
import re
import time
from collections.abc import Callable
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
from .errors import REASONS, SUSPENDED_RETRY_AFTER, ApiError, from_domain
from .ratelimit import per_hour, per_minute
from .routing import Call, Incoming, Reply, Route, Router

log = Logger()

UNMATCHED = "unmatched"  # the route label of requests that match no route (404, 405, malformed)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})  # others: "other"
_CONTROL = re.compile("[\x00-\x1f\x7f]")
_PATH = re.compile(rb"[!-~]*")  # printable ASCII, no space
_JSON = json.JSONEncoder(ensure_ascii=False)  # json.dumps makes one per call when given options
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
        self._observed: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def render(self, request: IRequest) -> int:
        started = time.perf_counter()
        d = Deferred.fromCoroutine(self.answer(request))
        d.addCallback(self._write, request, started)
        d.addErrback(lambda failure: log.failure("writing a response failed", failure))
        return server.NOT_DONE_YET

    async def answer(self, request: Incoming) -> tuple[str, Reply]:
        """(the route's template for the metrics, the reply): never raises."""
        method = request.method.decode("ascii", "replace")  # a token: Twisted checked the request line
        try:
            path = _path(request)
        except ApiError as exc:
            return UNMATCHED, _error(exc)
        # HEAD is GET without the body: Twisted's Request drops what the handler writes.
        route, params, allowed = self._router.match("GET" if method == "HEAD" else method, path)
        if route is None:
            if allowed:
                allowed += ["HEAD"] if "GET" in allowed else []
                return UNMATCHED, _error(
                    ApiError("method_not_allowed", f"use {', '.join(allowed)}"), allow=allowed
                )
            return UNMATCHED, _error(ApiError("not_found", "no such route"))
        try:
            return route.template, await self._dispatch(route, params, request)
        except ApiError as exc:
            return route.template, route.error_page(exc) if route.error_page else _error(exc)
        except DomainError as exc:
            return route.template, _error(from_domain(exc))
        except Exception:
            log.failure("unexpected error on {method} {route}", method=method, route=route.template)
            return route.template, _error(ApiError("unavailable", "internal error, try again"), status=500)

    async def _dispatch(self, route: Route, params: dict[str, str], request: Incoming) -> Reply:
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
        header = (_header(call.request, "authorization") or "").strip()
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
            key = _header(call.request, "idempotency-key")
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

    def _read_body(self, request: Incoming) -> bytes:
        # The front (api/front.py) refused larger bodies while reading; this holds behind any site.
        limit = self._http.max_body_bytes
        content = request.content
        raw = content.read(limit + 1) if content is not None else b""
        if len(raw) > limit:
            raise ApiError("body_too_large", f"bodies are limited to {limit} bytes")
        kind = (_header(request, "content-type") or "").split(";")[0].strip().lower()
        if raw.strip() and kind not in ("application/json", ""):
            raise ApiError("unsupported_media_type", "send the body as application/json")
        return raw

    def _client(self, request: Incoming) -> str:
        if self._http.trust_forwarded_for:
            forwarded = _header(request, "x-forwarded-for")
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
        for cookie in reply.cookies:
            request.responseHeaders.addRawHeader(b"set-cookie", cookie.encode())
        payload = self.finish(template, reply, request.method, started)
        if getattr(request, "_disconnected", False):
            return
        request.setHeader("content-length", str(len(payload)))  # no chunked encoding for small bodies
        request.write(payload)
        request.finish()

    def finish(self, template: str, reply: Reply, method: bytes, started: float) -> bytes:
        """The reply's body as bytes, the request counted in the metrics."""
        if reply.body is None:
            payload = b""
        elif isinstance(reply.body, bytes):
            payload = reply.body
        else:
            # backslashreplace: a lone surrogate stored before the API refused them stays valid JSON.
            payload = _JSON.encode(reply.body).encode("utf-8", "backslashreplace")
        elapsed = time.perf_counter() - started
        name = method.decode("ascii", "replace")
        key = (template, name if name in _METHODS else "other", reply.status)
        observed = self._observed.get(key)
        if observed is None:
            # Each series' children looked up once, not per request (the keys are as bounded as the labels).
            requests = REQUESTS.labels(key[0], key[1], str(key[2]))
            observed = self._observed[key] = (requests, LATENCY.labels(template))
        observed[0].inc()
        observed[1].observe(elapsed)
        return payload


def _error(exc: ApiError, status: int | None = None, allow: list[str] | None = None) -> Reply:
    headers: dict[str, str] = {}
    if exc.retry_after is not None:
        headers["retry-after"] = str(exc.retry_after)
    if allow:
        headers["allow"] = ", ".join(allow)
    body: dict[str, Any] = exc.body()
    return Reply(status or exc.status, body, headers)


def _path(request: Incoming) -> str:
    """The request's path: printable ASCII, as HTTP requires of a request target."""
    path = request.path
    if not _PATH.fullmatch(path):
        raise ApiError("invalid_request", "the path must be printable ASCII (percent-encode the rest)")
    for name, values in (request.args or {}).items():
        for text in (name, *values):
            _text(text, "the query string")
    return path.decode("ascii")


def _header(request: Incoming, name: str) -> str | None:
    """A request header's value as text, or an ApiError: Twisted decodes it as UTF-8 when asked by a str
    name and lets the error escape."""
    value = request.getHeader(name.encode())
    return None if value is None else _text(value, f"the {name} header")


def _text(raw: bytes, what: str) -> str:
    try:
        text = raw.decode("utf-8")
        if not _CONTROL.search(text):
            return text
    except UnicodeDecodeError:
        pass
    raise ApiError("invalid_request", f"{what} must be UTF-8 text without control characters")
