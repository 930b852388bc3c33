"""The cardholder pages over HTTP (the browser test walks them in Chromium): every page keeps the web
security rules (webclient.check_page), a post without this browser's CSRF token changes nothing, cookies
are HttpOnly and SameSite=Strict, a refused form never writes the card digits back, French dates, and
the profile session lives in a cookie."""

from __future__ import annotations

import re
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
import pytest_twisted
from apiharness import ApiHarness, api_config
from conftest import test_config
from domain_helpers import FIRST8, LAST8
from twisted.internet.defer import Deferred
from webclient import WebClient

from idtronic_tel.api import french
from idtronic_tel.core.states import EndReason

TOKEN = re.compile(r"code (\d{6})")
FORM = {
    "last_name": "Martin",
    "first_name": "Claire",
    "birth_date": "12/04/1985",
    "mobile": "06 11 22 33 44",
    "card_first8": FIRST8,
}


@pytest.fixture
def harness(sqlite_url: str) -> Iterator[ApiHarness]:
    config = api_config(test_config(), public_requests_per_minute=1000, identifier_requests_per_hour=1000)
    h = ApiHarness(sqlite_url, config)
    yield h
    pytest_twisted.blockon(Deferred.fromCoroutine(h.stop()))


@pytest_twisted.ensureDeferred
async def test_enrollment_form_csrf_cookies_and_no_card_digits_back(harness: ApiHarness) -> None:
    h = harness
    web = WebClient(h.base)
    page = await web.get("/")
    assert page.status == 200 and 'id="enroll-form"' in page.text
    cookie = next(c for c in web.set_cookies if c.startswith("idt_browser="))
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie  # plain HTTP

    # No token, a wrong token, another browser's token, a JSON body: refused, nothing enrolled.
    for token in (None, "0" * 64):
        refused = await web.post("/", FORM, token)
        assert refused.status == 403 and FIRST8 not in refused.text
    stranger = WebClient(h.base)
    other = (await stranger.get("/")).csrf()
    assert (await web.post("/", FORM, other)).status == 403
    assert (await web.request("POST", "/", b"{}", "application/json")).status == 415
    assert (await h.core.counts())["cardholders"] == {}

    # A refused form: errors next to the fields, the identity kept, the card digits not written back.
    bad = await web.submit(page, "enroll-form", **{**FORM, "mobile": "01 23 45 67 89"})
    assert bad.status == 422
    assert 'data-field="mobile"' in bad.text and "numéro de mobile" in bad.text
    assert 'aria-invalid="true"' in bad.text and 'role="alert"' in bad.text
    assert 'value="Martin"' in bad.text and 'value="12/04/1985"' in bad.text
    assert FIRST8 not in bad.text

    done = await web.submit(bad, "enroll-form", **FORM)
    assert done.status == 303 and done.location.startswith("/enrollment/")
    identifier = done.location.rsplit("/", 1)[1]
    result = await web.get(done.location)
    assert result.status == 200 and identifier in result.text and FIRST8 not in result.text
    assert "nous allons vous appeler" in result.text
    assert "hidden" in result.form("callback-form")["attrs"]  # only once failed
    # French date entry reached the core as 1985-04-12
    assert (await h.answer_callback(LAST8)) == "accepted"
    result = await web.get(done.location)
    assert ">actif<" in result.text
    assert (await web.get("/enrollment/0000000000")).status == 404
    assert (await web.get("/enrollment/../etc")).status == 404


@pytest_twisted.ensureDeferred
async def test_failed_enrollment_offers_a_new_call(harness: ApiHarness) -> None:
    h = harness
    web = WebClient(h.base)
    done = await web.submit(await web.get("/"), "enroll-form", **FORM)
    (job,) = await h.calls.claim_due("test", 10)
    await h.ivr.start_call(job.attempt_id)
    verdicts = [await h.ivr.check_card_digits(job.attempt_id, "00000000") for _ in range(3)]
    await h.ivr.end_call(job.attempt_id, EndReason.COMPLETED)
    assert verdicts == ["retry", "retry", "failed"]
    page = await web.get(done.location)
    assert "échec de la vérification" in page.text
    assert "hidden" not in page.form("callback-form")["attrs"]
    again = await web.submit(page, "callback-form")
    assert again.status == 303
    assert "nous allons vous appeler" in (await web.get(done.location)).text
    refused = await web.submit(page, "callback-form")  # a call is already waiting
    assert refused.status == 409 and "déjà prévu" in refused.text


@pytest_twisted.ensureDeferred
async def test_personal_section_with_a_session_cookie(harness: ApiHarness) -> None:
    h = harness
    identifier = await h.active_cardholder(FIRST8, LAST8)
    web = WebClient(h.base)
    start = await web.get("/profile")
    assert 'href="/"' in start.text  # the way back home
    asked = await web.submit(start, "challenge-form", identifier=identifier)
    assert asked.status == 200 and 'autocomplete="one-time-code"' in asked.text
    assert 'inputmode="numeric"' in asked.text
    codes = [m.group(1) for _, text in await h.sent_sms() if (m := TOKEN.search(text))]
    wrong = await web.submit(asked, "session-form", token=f"{(int(codes[-1]) + 1) % 10**6:06d}")
    assert wrong.status == 422 and "incorrect" in wrong.text and codes[-1] not in wrong.text
    opened = await web.submit(wrong, "session-form", token=codes[-1])
    assert opened.status == 303 and opened.location == "/profile"
    cookie = next(c for c in web.set_cookies if c.startswith("idt_profile="))
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/profile" in cookie
    profile = await web.get("/profile")
    assert 'value="12/04/1985"' in profile.text and FIRST8 not in profile.text and LAST8 not in profile.text
    saved = await web.submit(profile, "profile-form", first_name="Claire-Marie", birth_date="13/04/1985")
    assert saved.status == 200 and "Modifications enregistrées" in saved.text
    assert 'value="Claire-Marie"' in saved.text and 'value="13/04/1985"' in saved.text
    bad = await web.submit(saved, "profile-form", birth_date="31/02/1985")
    assert bad.status == 422 and "JJ/MM/AAAA" in bad.text
    moved = await web.submit(saved, "profile-form", mobile="06 98 76 54 32")
    assert 'id="pending"' in moved.text and "+33698765432" in moved.text
    out = await web.post("/profile/logout", {}, moved.csrf())
    assert out.status == 303 and "idt_profile" not in web.cookies
    assert 'id="challenge-form"' in (await web.get("/profile")).text


@pytest_twisted.ensureDeferred
async def test_pages_show_the_notice_and_no_form_while_suspended(harness: ApiHarness) -> None:
    h = harness
    web = WebClient(h.base)
    page = await web.get("/")
    await h.core.suspend("Maintenance jusqu'à 14 h.")
    for path in ("/", "/profile"):
        shown = await web.get(path)
        assert "Maintenance jusqu&#x27;à 14 h." in shown.text or "Maintenance jusqu'à 14 h." in shown.text
        assert shown.audit.forms == []
    refused = await web.submit(page, "enroll-form", **FORM)
    assert refused.status == 503 and (await h.core.counts())["cardholders"] == {}
    await h.core.resume()
    assert 'id="enroll-form"' in (await web.get("/")).text


@pytest_twisted.ensureDeferred
async def test_page_posts_share_the_address_limit_and_answer_as_a_page(sqlite_url: str) -> None:
    h = ApiHarness(sqlite_url, api_config(test_config(), public_requests_per_minute=2))
    try:
        web = WebClient(h.base)
        page = await web.get("/profile")
        answers = [await web.submit(page, "challenge-form", identifier="1") for _ in range(3)]
        limited = answers[-1]
        assert limited.status == 429 and int(limited.header("retry-after") or 0) > 0
        assert "réessayez dans" in limited.text
    finally:
        await h.stop()


def test_french_dates_and_masks() -> None:
    assert french.iso_date("12/04/1985") == "1985-04-12"
    assert french.iso_date("1.4.1985") == "1985-04-01"
    assert french.iso_date("31/02/1985") == "31/02/1985"  # left for the core to refuse
    assert french.iso_date("1985-04-12") == "1985-04-12"
    assert french.french_date("1985-04-12") == "12/04/1985"
    assert french.masked_identifier("1234567890") == "••••••7890"
    assert french.grouped_card("411111******1111") == "4111 11•• •••• 1111"
    assert french.euros(4990) == "49,90\u00a0€" and french.euros(123456) == "1\u202f234,56\u00a0€"


def test_cookies_are_secure_over_tls_and_markup_is_escaped() -> None:
    from twisted.web.test.requesthelper import DummyRequest

    from idtronic_tel.api.routing import Call
    from idtronic_tel.api.web import Kit, Visit, tag

    vault = SimpleNamespace(digest=lambda purpose, value: "f" * 64)
    core = SimpleNamespace(rules=SimpleNamespace(vault=vault))
    for secure in (False, True):
        request = DummyRequest([b""])
        request.isSecure = lambda secure=secure: secure  # type: ignore[method-assign]
        request.getCookie = lambda name: None  # type: ignore[attr-defined]
        visit = Visit(Call(request, {}, {}, "127.0.0.1"), Kit(core))  # type: ignore[arg-type]
        (cookie,) = visit.cookies
        assert ("; Secure" in cookie) is secure and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    markup = tag("p", '<script>"&', title='"><b>')
    assert markup == '<p title="&quot;&gt;&lt;b&gt;">&lt;script&gt;&quot;&amp;</p>'
