"""The demo's pages over HTTP, in demo mode (the browser test walks them in Chromium): the handset
simulator rings for ANY mobile number, the person answers, the keys reach the IVR as DTMF through the
emulated FastAGI leg, and enrollment with a new card succeeds; the SMS are shown per number, newest
first. The demo shop pays through the merchant API with its own key: a refused identification number,
the code sent, a wrong code with the attempts left, "renvoyer le code" honouring the resend rules, the
right code paid; a suspended service is said plainly. Meanwhile the scripted demo cardholder still
succeeds unattended. Without demo mode, none of these pages exists (404)."""

from __future__ import annotations

import io
import json
import re
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest_twisted
from apiharness import ApiHarness, api_config
from conftest import test_config
from daemonharness import free_port, until
from domain_helpers import FIRST8, LAST8
from twisted.internet import reactor
from webclient import WebClient

from idtronic_tel.config_schema import AgiConfig, DatabaseConfig, DemoConfig, HttpConfig
from idtronic_tel.core.views import wire
from idtronic_tel.demo import DemoScenario, DemoService, make_service

MOBILE = "06 99 88 77 66"
CODE = re.compile(r"code (\d{6})")


@pytest_twisted.async_yield_fixture
async def demo(sqlite_url: str, tmp_path: Path) -> AsyncIterator[DemoService]:
    config = replace(
        test_config(),
        data_dir=tmp_path,
        database=DatabaseConfig(url=sqlite_url),
        http=HttpConfig(listen=f"tcp:{free_port()}:interface=127.0.0.1", metrics_listen=""),
        agi=AgiConfig(listen=f"tcp:{free_port()}:interface=127.0.0.1"),
        demo=DemoConfig(enabled=True),
    )
    service = make_service(config, reactor, io.StringIO())
    service.startService()
    try:
        await until(lambda: service.peers.merchant.get("api_key"), 30, "the demo merchant")
        yield service
    finally:
        await service.stopService()


async def state(web: WebClient, number: str = "") -> dict[str, Any]:
    page = await web.get("/demo/phone/state" + (f"?numero={number}" if number else ""))
    assert page.status == 200, page.text
    return dict(json.loads(page.text))


async def call_state(web: WebClient, wanted: str, listening: bool = False) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        call = (await state(web, MOBILE))["call"]
        ok = call is not None and call["state"] == wanted and (call["listening"] or not listening)
        return call if ok else None

    return dict(await until(check, 30, f"the call to be {wanted}"))


@pytest_twisted.ensureDeferred
async def test_demo_phone_and_shop(demo: DemoService) -> None:
    base = demo.daemon.listeners["http"].url
    web = WebClient(base)

    # An empty phone page at first (the demo cardholder's own phone may already have rung).
    page = await web.get("/demo/phone?numero=0699887766")
    assert page.status == 200 and 'id="call"' in page.text and "Aucun appel." in page.text

    # Enrollment of a new card on a new mobile number: that phone rings on the page.
    form = await web.get("/")
    done = await web.submit(
        form,
        "enroll-form",
        last_name="Durand",
        first_name="Paul",
        birth_date="01/02/1980",
        mobile=MOBILE,
        card_first8=FIRST8,
    )
    assert done.status == 303, done.text
    identifier = done.location.rsplit("/", 1)[1]
    ringing = await call_state(web, "ringing")
    page = await web.get("/demo/phone?numero=0699887766")
    assert "Appel entrant" in page.text and "06 99 88 77 66" in page.text
    assert "hidden" not in page.form("answer-form")["attrs"] and "hidden" in page.form("keys-form")["attrs"]
    answered = await web.submit(page, "answer-form")
    assert answered.status == 303 and answered.location == "/demo/phone?numero=699887766"

    # Answered: the prompts are read, the keys go to the IVR as DTMF (one post per key, as the page does).
    call = await call_state(web, "connected", listening=True)
    assert call["id"] == ringing["id"] and call["prompt"].startswith("Bonjour")
    page = await web.get("/demo/phone?numero=0699887766")
    for key in LAST8 + "#":
        assert (await web.submit(page, "keys-form", keys=key)).status == 303

    async def verdict() -> dict[str, Any] | None:
        now = wire(await demo.daemon.core.enrollment_status(identifier))
        return now if now["status"] in ("active", "failed") else None

    status = await until(verdict, 40, "the callback's verdict")
    assert status["status"] == "active"
    ended = await call_state(web, "ended")
    assert ended["keyed"] == "•" * 9 and LAST8 not in json.dumps(await state(web, MOBILE))
    # A call that is over cannot be answered again.
    assert (await web.submit(page, "answer-form")).status == 409

    # The shop: a basket, a refused identification number, then the code by SMS.
    shop = await web.get("/demo/shop")
    assert shop.status == 200 and "Votre panier est vide." in shop.text
    added = await web.post("/demo/shop/basket", {"article": "tasse", "action": "add"}, shop.csrf())
    assert added.status == 303
    await web.post("/demo/shop/basket", {"article": "carnet", "action": "add"}, shop.csrf())
    checkout = await web.get("/demo/shop/checkout")
    assert checkout.status == 200 and "22,80" in checkout.text
    unknown = await web.submit(checkout, "pay-form", identifier="0000000000")
    assert unknown.status == 422 and "n'est pas inscrit" in unknown.text
    sent = await web.submit(checkout, "pay-form", identifier=identifier)
    assert sent.status == 303 and sent.location == "/demo/shop/code"
    code_page = await web.get("/demo/shop/code")
    assert "Un code vous a été envoyé par SMS." in code_page.text and identifier not in code_page.text
    field = code_page.form("confirm-form")["fields"]["token"]
    assert field["autocomplete"] == "one-time-code" and field["inputmode"] == "numeric"

    async def codes() -> list[str]:
        return [m.group(1) for sms in (await state(web, MOBILE))["sms"] if (m := CODE.search(sms["text"]))]

    code = (await until(codes, 20, "the code SMS on the phone"))[0]
    assert code not in code_page.text
    wrong = await web.submit(code_page, "confirm-form", token=f"{(int(code) + 1) % 1_000_000:06d}")
    assert wrong.status == 422 and "Il vous reste 2 essais." in wrong.text and code not in wrong.text
    too_soon = await web.submit(code_page, "resend-form")
    assert too_soon.status == 429 and re.search(r"réessayez dans \d+ s", too_soon.text)
    paid = await web.submit(code_page, "confirm-form", token=code)
    assert paid.status == 303 and paid.location == "/demo/shop/paid"
    receipt = await web.get("/demo/shop/paid")
    assert "Paiement accepté" in receipt.text and "22,80" in receipt.text
    assert "Votre panier est vide." in (await web.get("/demo/shop")).text

    # A suspended service: the shop says so, with the notice.
    shop = await web.get("/demo/shop")
    await web.post("/demo/shop/basket", {"article": "stylo", "action": "add"}, shop.csrf())
    await demo.daemon.core.suspend("Maintenance jusqu'à 14 h.", None, None)
    checkout = await web.get("/demo/shop/checkout")
    assert "Maintenance jusqu'à 14 h." in checkout.text and 'id="notice"' in checkout.text
    refused = await web.submit(checkout, "pay-form", identifier=identifier)
    assert refused.status == 503 and "suspendu" in refused.text
    await demo.daemon.core.resume(None, None)

    # The scripted demo cardholder went through on its own.
    scenario = next(s for s in demo if isinstance(s, DemoScenario))
    assert scenario.done is not None
    assert (await scenario.done)["status"] == "validated"
    # Each phone has its own SMS, newest first: the demo cardholder's code is not on the new phone.
    numbers = (await state(web))["numbers"]
    assert "699887766" in numbers and "611223344" in numbers
    demo_sms = (await state(web, "0611223344"))["sms"]
    assert demo_sms and all(m not in demo_sms for m in (await state(web, MOBILE))["sms"])
    mine = (await state(web, MOBILE))["sms"]
    assert [m["id"] for m in mine] == sorted((m["id"] for m in mine), reverse=True)


@pytest_twisted.ensureDeferred
async def test_demo_pages_are_absent_without_demo_mode(sqlite_url: str) -> None:
    h = ApiHarness(sqlite_url, api_config(test_config()))
    try:
        web = WebClient(h.base)
        for path in (
            "/demo/phone",
            "/demo/phone/state",
            "/demo/shop",
            "/demo/shop/code",
            "/demo/static/phone.js",
        ):
            assert (await web.get(path)).status == 404, path
        csrf = (await web.get("/")).csrf()
        for path in ("/demo/shop/checkout", "/demo/phone/answer", "/demo/phone/keys"):
            assert (await web.post(path, {"call": "c1"}, csrf)).status == 404, path
    finally:
        await h.stop()
