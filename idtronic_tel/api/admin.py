"""The operator's routes and the service's (health, metrics, notice), with their handlers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

from ..core.facade import Core
from ..core.views import Suspension, wire
from .bodies import ADMIN_ENROLL, MERCHANT, REASON, ROTATE_KEY, SUSPEND
from .metrics import scrape
from .routing import Call, Reply, Route

Links = Callable[[], dict[str, Any]]
Listeners = Callable[[], dict[str, str]]
Process = Callable[[], dict[str, int]]


def routes(core: Core, links: Links, listeners: Listeners, process: Process | None = None) -> list[Route]:
    # ---- operator ------------------------------------------------------------------------------------
    async def add_merchant(call: Call) -> Reply:
        return Reply(201, wire(await core.add_merchant(call.body["name"], call.body.get("domain"))))

    async def list_merchants(call: Call) -> Reply:
        return Reply(200, wire(await core.list_merchants()))

    async def rotate_key(call: Call) -> Reply:
        overlap = call.body.get("overlap_seconds", 0)
        return Reply(200, wire(await core.rotate_merchant_key(call.params["id"], overlap)))

    async def remove_merchant(call: Call) -> Reply:
        await core.remove_merchant(call.params["id"])
        return Reply(204)

    async def admin_enroll(call: Call) -> Reply:
        fields = {k: v for k, v in call.body.items() if k != "channel"}
        return Reply(201, wire(await core.enroll(fields, call.body["channel"], "operator")))

    async def lock(call: Call) -> Reply:
        return Reply(200, wire(await core.lock(call.params["identifier"], True, call.body.get("reason", ""))))

    async def unlock(call: Call) -> Reply:
        return Reply(200, wire(await core.lock(call.params["identifier"], False)))

    async def suspend(call: Call) -> Reply:
        body = call.body
        return Reply(
            200, wire(await core.suspend(body["notice"], body.get("cardholder"), body.get("merchant")))
        )

    async def resume(call: Call) -> Reply:
        scope = {
            k: v[0].decode()
            for k, v in (call.request.args or {}).items()
            if k in (b"cardholder", b"merchant")
        }
        scope = {k.decode() if isinstance(k, bytes) else k: v for k, v in scope.items()}
        return Reply(200, wire(await core.resume(scope.get("cardholder"), scope.get("merchant"))))

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
        if process is not None:
            body["worker"] = process()
        return Reply(200 if database else 503, {"status": status, **body})

    async def metrics(call: Call) -> Reply:
        return Reply(200, await scrape(), content_type=CONTENT_TYPE_LATEST)

    async def notice(call: Call) -> Reply:
        suspended, text = await core.suspension_state()
        return Reply(200, wire(Suspension(suspended, text, None, None)))

    return [
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
            {200: "MerchantKey", 400: "Error", 401: "Error", 404: "Error", 422: "Error"},
            ROTATE_KEY,
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
            "Unlock a cardholder: ends any lock, temporary or not (resets the failure budget)",
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
    ]
