"""The operator's console over HTTP (the browser story walks it in Chromium): the operator key opens a
session cookie (HttpOnly, SameSite=Strict, path /admin) that lapses after 15 minutes without a request;
the console never frames, every form carries the CSRF token; links and queues are shown; every action
is the core's (the same as the admin API's) and lands in the audit log, which the console shows with
the identification numbers masked; a new merchant key is shown once."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import pytest_twisted
from apiharness import OPERATOR_KEY, ApiHarness, api_config
from conftest import test_config
from domain_helpers import FIRST8, LAST8
from twisted.internet.defer import Deferred
from webclient import WebClient

from idtronic_tel.api.admin_pages import IDLE_SECONDS, Sessions

LINKS = [
    {
        "kind": "ami",
        "name": "AMI",
        "state": "up",
        "since": "2026-11-28T08:00:00+00:00",
        "window_used": None,
        "window": None,
        "tps": None,
        "max_tps": None,
    },
    {
        "kind": "smpp",
        "name": "operator-a",
        "state": "down",
        "since": "2026-11-28T08:05:00+00:00",
        "window_used": 0,
        "window": 10,
        "tps": 0.0,
        "max_tps": 50,
    },
]


@pytest.fixture
def harness(sqlite_url: str) -> Iterator[ApiHarness]:
    config = api_config(test_config(), public_requests_per_minute=1000, identifier_requests_per_hour=1000)
    h = ApiHarness(sqlite_url, config, link_details=lambda: LINKS)
    yield h
    pytest_twisted.blockon(Deferred.fromCoroutine(h.stop()))


async def logged_in(h: ApiHarness) -> WebClient:
    web = WebClient(h.base)
    login = await web.get("/admin")
    assert login.status == 200 and 'id="login-form"' in login.text
    done = await web.submit(login, "login-form", key=OPERATOR_KEY)
    assert done.status == 303 and done.location == "/admin"
    return web


@pytest_twisted.ensureDeferred
async def test_console_login_session_and_headers(harness: ApiHarness) -> None:
    web = WebClient(harness.base)
    login = await web.get("/admin")
    assert login.header("x-frame-options") == "DENY"
    assert "frame-ancestors 'none'" in (login.header("content-security-policy") or "")
    assert login.header("cache-control") == "no-store"
    assert (await web.post("/admin/login", {"key": OPERATOR_KEY}, None)).status == 403  # no CSRF token
    wrong = await web.submit(login, "login-form", key="idt_op_wrong")
    assert (
        wrong.status == 401
        and "Clé d'opérateur incorrecte." in wrong.text
        and "idt_op_wrong" not in wrong.text
    )
    assert not any(c.startswith("idt_admin=") for c in web.set_cookies)
    done = await web.submit(login, "login-form", key=OPERATOR_KEY)
    cookie = next(c for c in web.set_cookies if c.startswith("idt_admin="))
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/admin" in cookie
    assert done.status == 303
    state = await web.get("/admin")
    assert state.status == 200 and 'id="links"' in state.text and OPERATOR_KEY not in state.text
    # Another browser without the cookie sees the login form only.
    stranger = await WebClient(harness.base).get("/admin/marchands")
    assert 'id="login-form"' in stranger.text and 'id="merchants"' not in stranger.text
    out = await web.submit(state, "logout-form")
    assert out.status == 303
    assert 'id="login-form"' in (await web.get("/admin")).text


def test_sessions_lapse_after_15_idle_minutes() -> None:
    now = [0.0]
    sessions = Sessions(lambda: now[0])
    token = sessions.open()
    now[0] += IDLE_SECONDS - 1
    assert sessions.check(token)  # a request keeps it open...
    now[0] += IDLE_SECONDS - 1
    assert sessions.check(token)
    now[0] += IDLE_SECONDS + 1  # ...15 minutes without one closes it
    assert not sessions.check(token)
    assert not sessions.check(token) and not sessions.check(None) and not sessions.check("forged")


@pytest_twisted.ensureDeferred
async def test_console_state_actions_and_audit(harness: ApiHarness) -> None:
    h = harness
    web = await logged_in(h)
    state = await web.get("/admin")
    assert re.search(r'data-link="operator-a"[^>]*>coupé<', state.text)
    assert re.search(r'data-link="AMI"[^>]*>en service<', state.text)
    assert "0 / 10" in state.text and 'id="sms-queued">0<' in state.text

    # A phone enrollment keyed by the operator: the web's rules, the channel recorded, a callback queued.
    people = await web.get("/admin/titulaires")
    fields = {
        "channel": "phone",
        "last_name": "Martin",
        "first_name": "Claire",
        "birth_date": "12/04/1985",
        "mobile": "06 11 22 33 44",
    }
    bad = await web.submit(people, "operator-enroll-form", **fields, card_first8="1234")
    assert bad.status == 422 and "Exactement 8 chiffres." in bad.text and "1234" not in bad.text
    done = await web.submit(people, "operator-enroll-form", **fields, card_first8=FIRST8)
    assert done.status == 200 and FIRST8 not in done.text
    identifier = re.search(r"numéro d'identification (\d{10})", done.text).group(1)  # type: ignore[union-attr]
    assert (await h.core.counts())["queues"]["callbacks_waiting"] == 1
    assert 'id="callbacks-waiting">1<' in (await web.get("/admin")).text
    assert await h.answer_callback(LAST8) == "accepted"

    # Lock and unlock.
    locked = await web.submit(people, "lock-form", identifier=identifier, action="lock", reason="fraude")
    assert locked.status == 200 and "bloqué" in locked.text and identifier not in locked.text
    unknown = await web.submit(people, "lock-form", identifier="0000000000", action="lock")
    assert unknown.status == 422
    await web.submit(people, "lock-form", identifier=identifier, action="unlock")

    # Suspend: global with the notice, one cardholder, then resume both.
    suspended = await web.submit(state, "suspend-form", notice="Maintenance à 14 h.", scope="service")
    assert 'id="service-state">suspendu<' in suspended.text and "Maintenance à 14 h." in suspended.text
    assert (await h.core.suspension_state()) == (True, "Maintenance à 14 h.")
    resumed = await web.submit(state, "resume-form", scope="service")
    assert 'id="service-state">en service<' in resumed.text
    one = await web.submit(
        state, "suspend-form", notice="Vérification.", scope="cardholder", target=identifier
    )
    assert one.status == 200 and "un titulaire" in one.text
    assert (
        await web.submit(state, "suspend-form", notice="x", scope="merchant", target="mch_none")
    ).status == 200
    await web.submit(state, "resume-form", scope="cardholder", target=identifier)

    # Merchants: added (key shown once), rotated (a new key shown once), removed.
    shops = await web.get("/admin/marchands")
    added = await web.submit(shops, "merchant-form", name="Librairie", domain="librairie.example.fr")
    first_key = re.search(r'id="new-key">([^<]+)<', added.text).group(1)  # type: ignore[union-attr]
    assert first_key.startswith("idt_live_")
    listing = await web.get("/admin/marchands")
    assert "Librairie" in listing.text and first_key not in listing.text
    merchant_id = (await h.core.list_merchants()).merchants[0].id
    rotated = await web.post(
        "/admin/marchands/action", {"merchant": merchant_id, "action": "rotate"}, listing.csrf()
    )
    second_key = re.search(r'id="new-key">([^<]+)<', rotated.text).group(1)  # type: ignore[union-attr]
    assert second_key != first_key
    assert await h.core.authenticate_merchant(first_key) is None
    assert await h.core.authenticate_merchant(second_key) is not None
    removed = await web.post(
        "/admin/marchands/action", {"merchant": merchant_id, "action": "remove"}, listing.csrf()
    )
    assert "Marchand supprimé" in removed.text and (await h.core.list_merchants()).merchants == ()

    # Every action is in the audit log, shown masked; no key, card digit or whole identifier on the page.
    log = await web.get("/admin/activite")
    for action in (
        "enrollment.create",
        "cardholder.lock",
        "cardholder.unlock",
        "suspend",
        "resume",
        "merchant.add",
        "merchant.rotate-key",
        "merchant.remove",
    ):
        assert f"<td>{action}</td>" in log.text, action
    for secret in (identifier, first_key, second_key, FIRST8, LAST8, "0611223344", "+33611223344"):
        assert secret not in log.text, secret
    assert "••••••" + identifier[-4:] in log.text
    assert '"channel": "phone"' in log.text.replace("&quot;", '"')
