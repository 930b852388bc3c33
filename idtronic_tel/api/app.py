"""Every route of docs/api.md, with its handler: merchants, cardholders, operator, service."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

from ..core.facade import Core
from . import openapi, pages
from .bodies import BodySchema, Field
from .errors import ApiError
from .metrics import scrape
from .routing import Call, Reply, Route, Router

Links = Callable[[], dict[str, Any]]
Listeners = Callable[[], dict[str, str]]

IDENTITY = (
    Field("last_name", "string", max_length=100),
    Field("first_name", "string", max_length=100),
    Field("birth_date", "string", max_length=10, pattern=r"^\d{4}-\d{2}-\d{2}$"),
    Field("mobile", "string", max_length=30, description="a mobile number, national or international"),
)
ENROLL = BodySchema((*IDENTITY, Field("card_first8", "string", max_length=8, pattern=r"^\d{8}$")))
ADMIN_ENROLL = BodySchema((*ENROLL.fields, Field("channel", "string", max_length=5, pattern="^(phone|fax)$")))
PAYMENT = BodySchema(
    (
        Field("identifier", "string", max_length=10, pattern=r"^\d{10}$"),
        Field("amount", "integer", description="minor units, > 0"),
        Field("currency", "string", max_length=3, pattern="^[A-Z]{3}$"),
        Field("reference", "string"),
        Field("description", "string", required=False, max_length=500),
    )
)
TOKEN = BodySchema((Field("token", "string", max_length=6, pattern=r"^\d{6}$"),))
EMPTY = BodySchema(())
IDENTIFIER = BodySchema((Field("identifier", "string", max_length=10),))
SESSION = BodySchema((Field("identifier", "string", max_length=10), Field("token", "string", max_length=6)))
PROFILE_PATCH = BodySchema(tuple(Field(f.name, f.kind, False, f.max_length, f.pattern) for f in IDENTITY))
MERCHANT = BodySchema((Field("name", "string"), Field("domain", "string", required=False, max_length=253)))
REASON = BodySchema((Field("reason", "string", required=False, max_length=500),))
SUSPEND = BodySchema(
    (
        Field("notice", "string", max_length=1000),
        Field(
            "cardholder", "string", required=False, max_length=10, description="suspend one cardholder only"
        ),
        Field("merchant", "string", required=False, max_length=40, description="suspend one merchant only"),
    )
)


def _token(call: Call) -> str:
    token = call.body["token"]
    if not (len(token) == 6 and token.isascii() and token.isdigit()):
        raise ApiError("invalid_fields", "invalid fields: token", fields={"token": "6 digits"})
    return str(token)


def build_router(core: Core, links: Links, listeners: Listeners = dict, more: Sequence[Route] = ()) -> Router:
    """The routes, bound to the core; `links` and `listeners` give the state of the daemon's links
    (AMI, SMPP binds) and listeners (HTTP, FastAGI) for health and status; `more`: the demo's pages."""

    # ---- merchant ------------------------------------------------------------------------------------
    async def create_payment(call: Call) -> Reply:
        assert call.merchant is not None
        status, payment = await core.create_payment(call.merchant, call.body, call.idempotency_key)
        return Reply(status, payment)

    async def get_payment(call: Call) -> Reply:
        assert call.merchant is not None
        return Reply(200, await core.get_payment(call.merchant, call.params["id"]))

    async def confirm(call: Call) -> Reply:
        assert call.merchant is not None
        return Reply(200, await core.confirm_payment(call.merchant, call.params["id"], _token(call)))

    async def resend(call: Call) -> Reply:
        assert call.merchant is not None
        return Reply(200, await core.resend_payment(call.merchant, call.params["id"]))

    async def cancel(call: Call) -> Reply:
        assert call.merchant is not None
        return Reply(200, await core.cancel_payment(call.merchant, call.params["id"]))

    # ---- cardholder ----------------------------------------------------------------------------------
    async def enroll(call: Call) -> Reply:
        return Reply(201, await core.enroll(call.body, "web", "cardholder"))

    async def enrollment_status(call: Call) -> Reply:
        return Reply(200, await core.enrollment_status(call.params["identifier"]))

    async def new_callback(call: Call) -> Reply:
        return Reply(202, await core.request_callback(call.params["identifier"]))

    async def profile_challenge(call: Call) -> Reply:
        await core.profile_challenge(call.body["identifier"])
        return Reply(
            202,
            {
                "status": "accepted",
                "message": "if this identification number is active, a code is on its way",
            },
        )

    async def profile_session(call: Call) -> Reply:
        return Reply(201, await core.open_profile_session(call.body["identifier"], _token(call)))

    async def get_profile(call: Call) -> Reply:
        assert call.session is not None
        return Reply(200, await core.get_profile(call.session))

    async def patch_profile(call: Call) -> Reply:
        assert call.session is not None
        return Reply(200, await core.update_profile(call.session, call.body))

    # ---- operator ------------------------------------------------------------------------------------
    async def add_merchant(call: Call) -> Reply:
        return Reply(201, await core.add_merchant(call.body["name"], call.body.get("domain")))

    async def list_merchants(call: Call) -> Reply:
        return Reply(200, {"merchants": await core.list_merchants()})

    async def rotate_key(call: Call) -> Reply:
        return Reply(200, await core.rotate_merchant_key(call.params["id"]))

    async def remove_merchant(call: Call) -> Reply:
        await core.remove_merchant(call.params["id"])
        return Reply(204)

    async def admin_enroll(call: Call) -> Reply:
        if call.body["channel"] not in ("phone", "fax"):
            raise ApiError("invalid_fields", "invalid fields: channel", fields={"channel": "phone or fax"})
        fields = {k: v for k, v in call.body.items() if k != "channel"}
        return Reply(201, await core.enroll(fields, call.body["channel"], "operator"))

    async def lock(call: Call) -> Reply:
        return Reply(200, await core.lock(call.params["identifier"], True, call.body.get("reason", "")))

    async def unlock(call: Call) -> Reply:
        return Reply(200, await core.lock(call.params["identifier"], False))

    async def suspend(call: Call) -> Reply:
        body = call.body
        await core.suspend(body["notice"], body.get("cardholder"), body.get("merchant"))
        return Reply(200, {"suspended": True, "notice": body["notice"], **_scope(body)})

    async def resume(call: Call) -> Reply:
        scope = {
            k: v[0].decode()
            for k, v in (call.request.args or {}).items()
            if k in (b"cardholder", b"merchant")
        }
        scope = {k.decode() if isinstance(k, bytes) else k: v for k, v in scope.items()}
        await core.resume(scope.get("cardholder"), scope.get("merchant"))
        return Reply(200, {"suspended": False, **scope})

    async def admin_status(call: Call) -> Reply:
        suspended, notice = await core.suspension_state()
        counts = await core.counts()
        return Reply(200, {"suspended": suspended, "notice": notice, "links": links(), **counts})

    # ---- service -------------------------------------------------------------------------------------
    async def healthz(call: Call) -> Reply:
        try:
            database = await core.ping_database()
        except Exception:
            database = False
        listening, linked = listeners(), links()
        down = "down" in listening.values() or any(
            state == "down" or (isinstance(state, dict) and "down" in state.values())
            for state in linked.values()
        )
        # 503 only when the database does not answer: a link down leaves the daemon able to serve.
        status = "ok" if database and not down else ("degraded" if database else "down")
        body = {"database": "up" if database else "down", "listeners": listening, "links": linked}
        return Reply(200 if database else 503, {"status": status, **body})

    async def metrics(call: Call) -> Reply:
        return Reply(200, await scrape(), content_type=CONTENT_TYPE_LATEST)

    async def notice(call: Call) -> Reply:
        suspended, text = await core.suspension_state()
        return Reply(200, {"suspended": suspended, "notice": text})

    async def document(call: Call) -> Reply:
        return Reply(200, spec)

    routes = [
        Route(
            "POST",
            "/v1/payments",
            create_payment,
            "merchant",
            "Create a payment and send its token by SMS",
            {201: "Payment", 401: "Error", 409: "Error", 422: "Error", 429: "Error", 503: "Error"},
            PAYMENT,
            suspendable=True,
        ),
        Route(
            "GET",
            "/v1/payments/{id}",
            get_payment,
            "merchant",
            "Read a payment (with its SMS delivery state)",
            {200: "Payment", 401: "Error", 404: "Error", 503: "Error"},
            suspendable=True,
        ),
        Route(
            "POST",
            "/v1/payments/{id}/confirm",
            confirm,
            "merchant",
            "Confirm a payment with the cardholder's token",
            {200: "Payment", 401: "Error", 404: "Error", 409: "Error", 422: "Error", 503: "Error"},
            TOKEN,
            suspendable=True,
        ),
        Route(
            "POST",
            "/v1/payments/{id}/resend",
            resend,
            "merchant",
            "Send a new token (the old one dies)",
            {200: "Payment", 401: "Error", 404: "Error", 409: "Error", 429: "Error", 503: "Error"},
            EMPTY,
            suspendable=True,
        ),
        Route(
            "POST",
            "/v1/payments/{id}/cancel",
            cancel,
            "merchant",
            "Cancel a pending payment",
            {200: "Payment", 401: "Error", 404: "Error", 409: "Error", 503: "Error"},
            EMPTY,
            suspendable=True,
        ),
        Route(
            "POST",
            "/v1/enrollments",
            enroll,
            "none",
            "Enroll: identity, mobile and the first 8 card digits",
            {201: "Enrollment", 400: "Error", 422: "Error", 429: "Error", 503: "Error"},
            ENROLL,
            limited="public",
            suspendable=True,
        ),
        Route(
            "GET",
            "/v1/enrollments/{identifier}",
            enrollment_status,
            "none",
            "Enrollment status",
            {200: "EnrollmentStatus", 404: "Error", 429: "Error", 503: "Error"},
            limited="public",  # polled by the page: never charged to the identifier's callback budget
            suspendable=True,
        ),
        Route(
            "POST",
            "/v1/enrollments/{identifier}/callback",
            new_callback,
            "none",
            "Ask for a new callback after a failed enrollment",
            {202: "EnrollmentStatus", 404: "Error", 409: "Error", 429: "Error", 503: "Error"},
            EMPTY,
            limited="identifier",
            suspendable=True,
        ),
        Route(
            "POST",
            "/v1/profile/challenges",
            profile_challenge,
            "none",
            "Send a code to open the personal section (same answer, known or not)",
            {202: "Accepted", 400: "Error", 422: "Error", 429: "Error", 503: "Error"},
            IDENTIFIER,
            limited="identifier",
            suspendable=True,
        ),
        Route(
            "POST",
            "/v1/profile/sessions",
            profile_session,
            "none",
            "Open a personal-section session",
            {201: "Session", 400: "Error", 422: "Error", 429: "Error", 503: "Error"},
            SESSION,
            limited="identifier",
            suspendable=True,
        ),
        Route(
            "GET",
            "/v1/profile",
            get_profile,
            "session",
            "Read the personal data",
            {200: "Profile", 401: "Error", 503: "Error"},
            limited="public",
            suspendable=True,
        ),
        Route(
            "PATCH",
            "/v1/profile",
            patch_profile,
            "session",
            "Change personal data; a new mobile is proven by a callback first",
            {200: "Profile", 400: "Error", 401: "Error", 422: "Error", 503: "Error"},
            PROFILE_PATCH,
            limited="public",
            suspendable=True,
        ),
        Route(
            "POST",
            "/v1/admin/merchants",
            add_merchant,
            "operator",
            "Register a merchant (its key is shown once)",
            {201: "MerchantKey", 400: "Error", 401: "Error", 422: "Error"},
            MERCHANT,
        ),
        Route(
            "GET",
            "/v1/admin/merchants",
            list_merchants,
            "operator",
            "List merchants",
            {200: "MerchantList", 401: "Error"},
        ),
        Route(
            "POST",
            "/v1/admin/merchants/{id}/rotate-key",
            rotate_key,
            "operator",
            "Replace a merchant's key",
            {200: "MerchantKey", 401: "Error", 404: "Error"},
            EMPTY,
        ),
        Route(
            "DELETE",
            "/v1/admin/merchants/{id}",
            remove_merchant,
            "operator",
            "Remove a merchant",
            {204: "", 401: "Error", 404: "Error"},
        ),
        Route(
            "POST",
            "/v1/admin/enrollments",
            admin_enroll,
            "operator",
            "Enroll a cardholder who applied by phone or fax",
            {201: "Enrollment", 400: "Error", 401: "Error", 422: "Error"},
            ADMIN_ENROLL,
        ),
        Route(
            "POST",
            "/v1/admin/cardholders/{identifier}/lock",
            lock,
            "operator",
            "Lock a cardholder",
            {200: "Lock", 401: "Error", 404: "Error"},
            REASON,
        ),
        Route(
            "POST",
            "/v1/admin/cardholders/{identifier}/unlock",
            unlock,
            "operator",
            "Unlock a cardholder (resets the failure budget)",
            {200: "Lock", 401: "Error", 404: "Error"},
            REASON,
        ),
        Route(
            "POST",
            "/v1/admin/suspension",
            suspend,
            "operator",
            "Suspend the service (or one cardholder or merchant) with a public notice",
            {200: "Suspension", 400: "Error", 401: "Error", 404: "Error", 422: "Error"},
            SUSPEND,
        ),
        Route(
            "DELETE",
            "/v1/admin/suspension",
            resume,
            "operator",
            "Resume the service (query ?cardholder= or ?merchant= for one)",
            {200: "Suspension", 401: "Error", 404: "Error"},
        ),
        Route(
            "GET",
            "/v1/admin/status",
            admin_status,
            "operator",
            "Links, queue depths, counts",
            {200: "Status", 401: "Error"},
        ),
        Route(
            "GET",
            "/v1/notice",
            notice,
            "none",
            "Whether the service is suspended, and the public notice",
            {200: "Notice"},
        ),
        Route("GET", "/healthz", healthz, "none", "Database and links", {200: "Health", 503: "Health"}),
        Route(
            "GET",
            "/metrics",
            metrics,
            "operator",
            "Prometheus metrics (also without a key on the metrics listener, http.metrics_listen)",
            {200: "text", 401: "Error"},
        ),
        Route("GET", "/v1/openapi.json", document, "none", "This document", {200: "object"}),
        *pages.routes(core),
        *more,
    ]
    router = Router(routes)
    spec = openapi.document(router)
    return router


def _scope(body: dict[str, Any]) -> dict[str, Any]:
    return {k: body[k] for k in ("cardholder", "merchant") if k in body}
