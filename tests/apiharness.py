"""A running core + HTTP API on a loopback port, for tests that speak HTTP to the real resource."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import treq
from domain_helpers import FIRST8, LAST8
from twisted.internet import reactor

from idtronic_tel.api.app import build_router
from idtronic_tel.api.fastpath import FastFront
from idtronic_tel.api.resource import ApiResource
from idtronic_tel.config_schema import ApiConfig, CallbackConfig, Config
from idtronic_tel.core.db import DBPool, make_engine
from idtronic_tel.core.facade import Core, CoreCallbackQueue, CoreIvrGateway, CoreSmsOutbox
from idtronic_tel.core.states import EndReason
from idtronic_tel.daemon import core_rules

OPERATOR_KEY = "idt_op_test-operator-key-0123456789abcdefghijklmno"
PAYMENT = {"amount": 4990, "currency": "EUR", "reference": "order-42"}


def api_config(base: Config, **api: Any) -> Config:
    return replace(
        base,
        api=replace(ApiConfig(), operator_key=OPERATOR_KEY, **api),
        callback=replace(CallbackConfig(), first_call_delay=0, calling_hours="00:00-24:00"),
    )


@dataclass
class Answer:
    status: int
    body: Any
    headers: Any

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None


class ApiHarness:
    def __init__(
        self,
        url: str,
        config: Config,
        links: dict[str, Any] | None = None,
        clock: Callable[[], dt.datetime] | None = None,
        limiter_clock: Callable[[], float] = time.monotonic,
        link_details: Callable[[], list[dict[str, Any]]] = list,
    ) -> None:
        """`clock`: the core's time (Rules); `limiter_clock`: the API rate limiters' time."""
        self.config = config
        self.pool = DBPool(reactor, make_engine(url), 4)  # type: ignore[arg-type]
        self.pool.start()
        self.rules = core_rules(config, clock) if clock is not None else core_rules(config)
        self.core = Core(reactor, self.pool, self.rules)  # type: ignore[arg-type]
        self.outbox = CoreSmsOutbox(self.core)
        self.calls = CoreCallbackQueue(self.core)
        self.ivr = CoreIvrGateway(self.core)
        router = build_router(
            self.core,
            lambda: links or {"ami": "not configured", "smpp": "not configured"},
            link_details=link_details,
            operator_key=config.api.operator_key,
        )
        self.resource = ApiResource(self.core, router, config.http, config.api, limiter_clock)
        self.site = FastFront(self.resource, config.http, reactor)  # the daemon's API listener
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"

    async def stop(self) -> None:
        await self.port.stopListening()
        self.pool.stop()

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        key: str | None = None,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        sent = {"content-type": "application/json", **(headers or {})}
        if key is not None:
            sent["authorization"] = key if " " in key else f"Bearer {key}"
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        response = await treq.request(
            method, self.base + path, data=data, headers={k: [v] for k, v in sent.items()}, persistent=False
        )
        content = await response.content()
        kind = response.headers.getRawHeaders("content-type", [""])[0]
        parsed = json.loads(content) if content and kind.startswith("application/json") else content
        return Answer(response.code, parsed, response.headers)

    # ---- fixtures of the product --------------------------------------------------------------------
    async def merchant(self, name: str = "Boutique Exemple", domain: str | None = None) -> tuple[str, str]:
        body = {"name": name} if domain is None else {"name": name, "domain": domain}
        answer = await self.call("POST", "/v1/admin/merchants", body, OPERATOR_KEY)
        assert answer.status == 201, answer.body
        return answer.body["id"], answer.body["api_key"]

    async def active_cardholder(self, first8: str, last8: str, mobile: str = "06 11 22 33 44") -> str:
        answer = await self.call(
            "POST",
            "/v1/enrollments",
            {
                "last_name": "Martin",
                "first_name": "Claire",
                "birth_date": "1985-04-12",
                "mobile": mobile,
                "card_first8": first8,
            },
        )
        assert answer.status == 201, answer.body
        await self.answer_callback(last8)
        return str(answer.body["identifier"])

    async def answer_callback(self, digits: str) -> str:
        """What the IVR does when the callback is answered and `digits` keyed."""
        jobs = await self.calls.claim_due("test", 10)
        assert jobs, "no callback due"
        await self.ivr.start_call(jobs[0].attempt_id)
        verdict = await self.ivr.check_card_digits(jobs[0].attempt_id, digits)
        await self.ivr.end_call(jobs[0].attempt_id, EndReason.COMPLETED)
        return str(verdict)

    async def sent_sms(self) -> list[tuple[str, str]]:
        """Claim queued SMS as an SMPP worker would: (destination, text)."""
        out = []
        for sms in await self.outbox.claim("test", 100, 40.0):
            out.append((sms.destination, sms.text))
            await self.outbox.mark_submitted("test", sms.sms_id, [f"{sms.sms_id:08X}"], "test", 0)
        return out


async def ready(h: ApiHarness) -> tuple[str, str, str]:
    """(merchant key, identifier, payment id): an active cardholder (FIRST8, LAST8) and one payment."""
    _, key = await h.merchant()
    identifier = await h.active_cardholder(FIRST8, LAST8)
    created = await h.call("POST", "/v1/payments", {**PAYMENT, "identifier": identifier}, key)
    assert created.status == 201, created.body
    return key, identifier, created.body["id"]
