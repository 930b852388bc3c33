"""Every route of docs/api.md, with its handler: merchants, cardholders, operator, service."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..core.facade import Core
from ..core.views import wire
from . import admin, openapi, pages
from .bodies import (
    EMPTY,
    ENROLL,
    PAYMENT,
    PROFILE_CHALLENGE,
    PROFILE_PATCH,
    SESSION,
    TOKEN,
)
from .routing import Call, Reply, Route, Router

Links = Callable[[], dict[str, Any]]
Listeners = Callable[[], dict[str, str]]
LinkDetails = Callable[[], list[dict[str, Any]]]


def build_router(
    core: Core,
    links: Links,
    listeners: Listeners = dict,
    more: Sequence[Route] = (),
    link_details: LinkDetails = list,
    operator_key: str = "",
    process: admin.Process | None = None,
) -> Router:
    """The routes, bound to the core; `links` and `listeners` give the state of the daemon's links
    (AMI, SMPP binds) and listeners (HTTP, FastAGI) for health and status, `link_details` each link's
    since-when, window and throughput for the operator's console, `operator_key` what opens it; `more`:
    the demo's pages; `process`: which worker process answers (/healthz `worker`)."""

    # ---- merchant ------------------------------------------------------------------------------------
    async def create_payment(call: Call) -> Reply:
        assert call.merchant is not None
        status, payment = await core.create_payment(call.merchant, call.body, call.idempotency_key)
        return Reply(status, wire(payment))

    async def get_payment(call: Call) -> Reply:
        assert call.merchant is not None
        return Reply(200, wire(await core.get_payment(call.merchant, call.params["id"])))

    async def confirm(call: Call) -> Reply:
        assert call.merchant is not None
        return Reply(
            200, wire(await core.confirm_payment(call.merchant, call.params["id"], call.body["token"]))
        )

    async def resend(call: Call) -> Reply:
        assert call.merchant is not None
        return Reply(200, wire(await core.resend_payment(call.merchant, call.params["id"])))

    async def cancel(call: Call) -> Reply:
        assert call.merchant is not None
        return Reply(200, wire(await core.cancel_payment(call.merchant, call.params["id"])))

    # ---- cardholder ----------------------------------------------------------------------------------
    async def enroll(call: Call) -> Reply:
        return Reply(201, wire(await core.enroll(call.body, "web", "cardholder")))

    async def enrollment_status(call: Call) -> Reply:
        return Reply(200, wire(await core.enrollment_status(call.params["identifier"])))

    async def new_callback(call: Call) -> Reply:
        return Reply(202, wire(await core.request_callback(call.params["identifier"])))

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
        return Reply(201, wire(await core.open_profile_session(call.body["identifier"], call.body["token"])))

    async def get_profile(call: Call) -> Reply:
        assert call.session is not None
        return Reply(200, wire(await core.get_profile(call.session)))

    async def patch_profile(call: Call) -> Reply:
        assert call.session is not None
        return Reply(200, wire(await core.update_profile(call.session, call.body)))

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
            PROFILE_CHALLENGE,
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
        *admin.routes(core, links, listeners, process),
        Route("GET", "/v1/openapi.json", document, "none", "This document", {200: "object"}),
        *pages.routes(core, link_details, tuple((r.template, r.nav) for r in more if r.nav), operator_key),
        *more,
    ]
    router = Router(routes)
    spec = openapi.document(router)
    return router
