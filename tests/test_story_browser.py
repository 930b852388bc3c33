"""The whole story in a real browser (headless Debian Chromium, Selenium), in demo mode, as a newcomer and
an operator live it (issue 10 §6):

1. enroll on `/` with a new card and a new mobile number; answer the call on `/demo/phone` and key the
   last 8 digits with the keyboard: the enrollment page turns "actif";
2. buy in `/demo/shop` with the code read on `/demo/phone`; a wrong code three times fails the payment;
3. the personal section: a code by SMS, then a new mobile number, proven by a call to it answered on
   the phone page;
4. the operator's console: log in, suspend the service (the shop and the pages show the notice),
   resume it, rotate a merchant's key (shown once), and see an SMPP bind down once the SMSC is gone;
5. every page fits a 360 px wide screen.

Each step saves a screenshot into tests/screenshots/ (not committed). Every page the browser showed is
kept and checked at the end: no 8 consecutive card digits anywhere, and no code outside the phone
simulator. The browser runs in a thread (Selenium blocks) while the reactor serves the daemon."""

from __future__ import annotations

import io
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest_twisted
from apiharness import OPERATOR_KEY
from conftest import test_config
from daemonharness import free_port, until
from domain_helpers import FIRST8, LAST8
from test_pages_browser import Page, browser_tools, profile_dir, start_browser
from twisted.internet import reactor, threads

from idtronic_tel.config_schema import AgiConfig, ApiConfig, DatabaseConfig, DemoConfig, HttpConfig
from idtronic_tel.demo import DemoService, make_service
from idtronic_tel.simulators.smsc import SmscService

__all__ = ["browser_tools", "profile_dir"]  # fixtures used by this module's tests

SHOTS = Path(__file__).resolve().parent / "screenshots"
MOBILE, MOBILE_KEY = "06 99 88 77 66", "699887766"
NEW_MOBILE, NEW_MOBILE_KEY = "06 55 44 33 22", "655443322"
CODE = re.compile(r"code (\d{6})")
NOTICE = "Maintenance du service jusqu'à 14 h."


class StoryPage(Page):
    """Page, keeping every page it saw (address, source) for the final checks, and a screenshot a step."""

    def __init__(self, driver: Any, base: str, shots: Path) -> None:
        from selenium.webdriver.support.ui import WebDriverWait

        super().__init__(driver, base)
        # A call takes its time (prompts played at their real length): 40 s for anything to show up.
        self._wait = lambda: WebDriverWait(driver, 40, poll_frequency=0.1)
        self.shots = shots
        self.seen: list[tuple[str, str]] = []
        self.step = 0

    def keep(self, name: str) -> None:
        self.seen.append((self.driver.current_url, self.driver.page_source))
        self.step += 1
        self.driver.save_screenshot(str(self.shots / f"{self.step:02d}-{name}.png"))

    def tab(self, which: str) -> None:
        """The phone simulator has its own tab, as a newcomer keeps it open beside the other pages."""
        if which == "phone" and len(self.driver.window_handles) == 1:
            self.driver.switch_to.new_window("tab")
        self.driver.switch_to.window(self.driver.window_handles[1 if which == "phone" else 0])

    def click(self, css: str) -> None:
        self.visible(css).click()

    def keys(self, text: str) -> None:
        from selenium.webdriver.common.action_chains import ActionChains

        ActionChains(self.driver).send_keys(text).perform()


@pytest_twisted.async_yield_fixture
async def demo(sqlite_url: str, tmp_path: Path) -> AsyncIterator[DemoService]:
    config = replace(
        test_config(),
        data_dir=tmp_path,
        database=DatabaseConfig(url=sqlite_url),
        http=HttpConfig(
            listen=f"tcp:{free_port()}:interface=127.0.0.1", metrics_listen="tcp:0:interface=127.0.0.1"
        ),
        agi=AgiConfig(listen=f"tcp:{free_port()}:interface=127.0.0.1"),
        api=replace(ApiConfig(), operator_key=OPERATOR_KEY, public_requests_per_minute=1000),
        demo=DemoConfig(enabled=True),
    )
    service = make_service(config, reactor, io.StringIO())
    service.startService()
    try:
        await until(lambda: service.peers.merchant.get("api_key"), 30, "the demo merchant")
        yield service
    finally:
        await service.stopService()


def answer_and_key(page: StoryPage, number: str, name: str) -> None:
    """On the phone page of `number`: answer when it rings, key the last 8 digits and # on the keyboard
    once the service listens, wait for the end of the call."""
    page.tab("phone")
    page.open(f"/demo/phone?numero={number}")
    page.until(lambda: page.find("#answer-form").is_displayed(), "the phone to ring")
    page.keep(f"{name}-ringing")
    page.click("#answer-form button")
    page.until(lambda: page.text("#call-listening"), "the service to listen")
    assert page.text("#call-prompt"), "no prompt shown"
    page.keep(f"{name}-answered")
    page.keys(LAST8 + "#")
    page.until(lambda: page.find("#call").get_attribute("data-state") == "ended", "the call to end")
    assert page.text("#call-keyed") == "•" * 9
    page.keep(f"{name}-ended")
    page.tab("main")


def enroll(page: StoryPage) -> str:
    form = "#enroll-form"
    page.open("/")
    page.type(form, "last_name", "Durand")
    page.type(form, "first_name", "Paul")
    page.type(form, "birth_date", "01/02/1980")
    page.type(form, "mobile", MOBILE)
    page.type(form, "card_first8", FIRST8)
    page.submit(form)
    page.visible("#enroll-live")
    page.keep("enrolled")
    return page.text("#identifier")


def enrollment_active(page: StoryPage, identifier: str) -> None:
    page.open(f"/enrollment/{identifier}")
    page.until(lambda: page.text("#enroll-status") == "actif", "the enrollment to be active")
    page.keep("active")


def latest_code(page: StoryPage, number: str, known: set[str]) -> str:
    """The newest code in the phone's SMS that was not seen before."""
    page.tab("phone")
    page.open(f"/demo/phone?numero={number}")

    def fresh() -> str | None:
        for item in page.driver.find_elements(page.by.CSS_SELECTOR, "#sms-list li"):
            found = CODE.search(item.text)
            if found and found.group(1) not in known:
                return found.group(1)
        return None

    code = page.until(fresh, "a new code on the phone")
    known.add(code)
    page.keep("sms")
    page.tab("main")
    return str(code)


def checkout(page: StoryPage, identifier: str) -> None:
    page.open("/demo/shop")
    for article in ("tasse", "carnet"):
        before = page.text("#total") if page.absent("#empty") else ""
        page.click(f"#article-{article} button")
        page.until(lambda before=before: page.text("#total") != before, f"the {article} in the basket")
    page.click("#checkout")
    page.visible("#pay-form")
    page.type("#pay-form", "identifier", identifier)
    page.submit("#pay-form")
    page.visible("#confirm-form")
    assert "Un code vous a été envoyé" in page.text("#code-sent")
    token = page.find("#confirm-form [name=token]")
    assert token.get_attribute("autocomplete") == "one-time-code"
    assert token.get_attribute("inputmode") == "numeric"
    page.keep("shop-code")


def wrong_code_three_times(page: StoryPage, code: str) -> None:
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    for left in ("2 essais", "1 essai"):
        page.type("#confirm-form", "token", wrong)
        page.submit("#confirm-form")
        page.until(lambda left=left: left in page.text("#confirm-error"), f"{left} left")
    page.type("#confirm-form", "token", wrong)
    page.submit("#confirm-form")
    page.until(lambda: "trop de codes erronés" in page.text("#shop-error"), "the payment to fail")
    page.keep("shop-failed")


def pay(page: StoryPage, code: str) -> None:
    page.type("#confirm-form", "token", code)
    page.submit("#confirm-form")
    page.until(lambda: "est payée" in page.text("#paid"), "the payment to be accepted")
    page.keep("shop-paid")


def open_profile(page: StoryPage, identifier: str) -> None:
    page.open("/profile")
    page.type("#challenge-form", "identifier", identifier)
    page.submit("#challenge-form")
    page.visible("#session-form")


def demo_phone(page: StoryPage) -> None:
    """The demo cardholder's phone says it answers on its own, and shows its own SMS."""
    page.tab("phone")
    page.open("/demo/phone?numero=0611223344")
    assert "répond tout seul" in page.visible("#scripted").text
    page.until(lambda: page.driver.find_elements(page.by.CSS_SELECTOR, "#sms-list li"), "its SMS")
    page.tab("main")


def console_login(page: StoryPage) -> None:
    page.open("/admin")
    page.visible("#login-form")
    page.type("#login-form", "key", "not-the-key")
    page.submit("#login-form")
    page.visible("#admin-error")
    page.type("#login-form", "key", OPERATOR_KEY)
    page.submit("#login-form")
    page.visible("#links")
    page.keep("console")


def suspend_and_resume(page: StoryPage) -> None:
    page.open("/admin")
    page.type("#suspend-form", "notice", NOTICE)
    page.submit("#suspend-form")
    page.until(lambda: page.text("#service-state") == "suspendu", "the service to be suspended")
    for path in ("/demo/shop/checkout", "/", "/profile"):
        page.open(path)
        assert NOTICE in page.visible("#notice").text, path
        page.keep("suspended")
    page.open("/admin")
    page.submit("#resume-form")
    page.until(lambda: page.text("#service-state") == "en service", "the service to be resumed")
    page.open("/")
    assert page.absent("#notice")


def rotate_key(page: StoryPage, old_key: str) -> str:
    page.open("/admin/marchands")
    page.type("#merchant-form", "name", "Librairie du Coin")
    page.submit("#merchant-form")
    first = page.visible("#new-key").text
    page.find("button[aria-label='Nouvelle clé : Librairie du Coin']").click()
    page.until(lambda: page.text("#new-key") != first, "a new key")
    key = page.text("#new-key")
    page.keep("rotated")
    page.open("/admin/marchands")
    assert key not in page.driver.page_source and old_key not in page.driver.page_source  # shown once
    return key


def readable_at_360(page: StoryPage) -> None:
    """Every page fits a 360 px wide phone screen: nothing wider than the window (tables scroll alone)."""
    page.driver.set_window_size(360, 900)
    for path in (
        "/",
        "/profile",
        "/demo/shop",
        "/demo/phone",
        "/admin",
        "/admin/activite",
        "/admin/marchands",
    ):
        page.open(path)
        width, inner = page.driver.execute_script(
            "return [document.documentElement.scrollWidth, window.innerWidth]"
        )
        assert width <= inner, (path, width, inner)
    page.keep("narrow")


def bind_down(page: StoryPage) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    def down(driver: Any) -> bool:
        page.open("/admin")  # the console is not live: the operator reloads it, here once a second
        return bool(page.find("[data-link=demo-smsc]").text == "coupé")

    WebDriverWait(page.driver, 40, poll_frequency=1.0).until(down, "the SMPP bind to show down")
    page.keep("bind-down")


@pytest_twisted.ensureDeferred
async def test_the_whole_story_in_chromium(
    browser_tools: None, demo: DemoService, profile_dir: Path, request: Any
) -> None:
    shots = SHOTS / request.node.name
    shots.mkdir(parents=True, exist_ok=True)
    core = demo.daemon.core
    driver = await threads.deferToThread(start_browser, profile_dir)
    page = StoryPage(driver, demo.daemon.listeners["http"].url, shots)

    def browse(step: Callable[..., Any], *args: Any) -> Any:
        return threads.deferToThread(step, page, *args)

    codes: set[str] = set()
    try:
        identifier = await browse(enroll)
        await browse(answer_and_key, MOBILE_KEY, "enrollment")
        await browse(enrollment_active, identifier)

        await browse(checkout, identifier)
        await browse(wrong_code_three_times, await browse(latest_code, MOBILE_KEY, codes))
        await browse(checkout, identifier)
        await browse(pay, await browse(latest_code, MOBILE_KEY, codes))

        await browse(open_profile, identifier)
        code = await browse(latest_code, MOBILE_KEY, codes)
        await browse(profile_session, code)
        await browse(answer_and_key, NEW_MOBILE_KEY, "mobile-change")
        await browse(mobile_changed)
        assert (await core.enrollment_status(identifier)).status == "active"

        await browse(demo_phone)
        await browse(console_login)
        await browse(suspend_and_resume)
        await browse(rotate_key, demo.peers.merchant["api_key"])
        smsc = next(s for s in demo.peers.service if isinstance(s, SmscService))
        await smsc.stopService()
        await browse(bind_down)
        await browse(readable_at_360)
        console = await threads.deferToThread(page.console_errors)
        assert console == [], console
    finally:
        await threads.deferToThread(driver.quit)

    assert len(codes) >= 3
    card_windows = {(FIRST8 + LAST8)[i : i + 8] for i in range(9)}
    for url, source in page.seen:
        text = re.sub(r"<[^>]+>", " ", source)
        for run in re.findall(r"\d(?: ?\d)*", text):  # digits, grouped by single spaces or not
            digits = run.replace(" ", "")
            assert not any(window in digits for window in card_windows), (url, run)
        if "/demo/phone" not in url:
            shown = set(re.findall(r"\d+", text))
            assert not codes & shown, url


def profile_session(page: StoryPage, code: str) -> None:
    page.type("#session-form", "token", code)
    page.submit("#session-form")
    page.visible("#profile-form")
    page.type("#profile-form", "mobile", NEW_MOBILE)
    page.submit("#profile-form")
    page.visible("#pending")
    page.keep("profile-pending")


def mobile_changed(page: StoryPage) -> None:
    page.open("/profile")
    page.until(
        lambda: page.find("#profile-form [name=mobile]").get_attribute("value").endswith("655443322"),
        "the new mobile number",
    )
    assert page.absent("#pending")
    page.keep("profile-changed")
