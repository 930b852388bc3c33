"""The cardholder pages in a real browser: headless Debian Chromium driven by Selenium (chromedriver), against
the daemon's own HTTP resource (API + pages) on a loopback port.

Enrollment page: a bad mobile number gets its error next to the field (from the API's 422), a valid form
shows the identification number and the status, which follows the callback; while the service is
suspended both pages show the notice and no form. Personal section: a code by SMS (read from the outbox),
a wrong code is refused, the right one opens the session, a change of first name is saved and shown.

The browser runs in a thread (Selenium blocks) while the reactor serves the pages; whatever the browser
scenario needs from the daemon side goes through `blockingCallFromThread`. Skips when Chromium, chromedriver
or the selenium package is missing, except on CI (CI=true), where it fails: scripts/install-test-tools
installs the browser.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import struct
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from apiharness import OPERATOR_KEY, ApiHarness, api_config
from conftest import ON_CI, test_config
from domain_helpers import FIRST8, LAST8
from twisted.internet import reactor, threads
from twisted.internet.task import deferLater

CHROMIUM = os.environ.get("IDT_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("IDT_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")
TOKEN = re.compile(r"code (\d{6})")
WAIT = 15.0  # seconds for any one thing to show up in the page
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1000,1100",
)


def _missing() -> list[str]:
    """What the browser test lacks on this machine (nothing: it can run)."""
    missing = [f"{path} (scripts/install-test-tools)" for path in (CHROMIUM, CHROMEDRIVER)]
    missing = [
        text
        for text, path in zip(missing, (CHROMIUM, CHROMEDRIVER), strict=True)
        if not os.access(path, os.X_OK)
    ]
    if importlib.util.find_spec("selenium") is None:
        missing.append("the selenium package (pip install -e '.[test]')")
    return missing


@pytest.fixture
def browser_tools() -> None:
    missing = _missing()
    if missing:
        reason = "browser test needs " + ", ".join(missing)
        if ON_CI:
            pytest.fail(reason + " (required on CI)")
        pytest.skip(reason)


@pytest.fixture
def profile_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="idt-chromium-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height of a PNG image; AssertionError when `data` is not one."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    assert data[12:16] == b"IHDR", "PNG without its IHDR chunk"
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def start_browser(profile: Path) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: Selenium Manager never runs (it would try to download a driver).
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT)
    return driver


class Page:
    """Small helpers over a Selenium driver: every wait is on a condition, with a timeout."""

    def __init__(self, driver: Any, base: str) -> None:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver = driver
        self.base = base
        self.by = By
        self._wait = lambda: WebDriverWait(driver, WAIT, poll_frequency=0.05)

    def open(self, path: str) -> None:
        self.driver.get(self.base + path)

    def find(self, css: str) -> Any:
        return self.driver.find_element(self.by.CSS_SELECTOR, css)

    def until(self, check: Callable[[], Any], what: str) -> Any:
        def probe(_driver: Any) -> Any:
            try:
                return check()
            except Exception:  # the element is not there yet (or was replaced): look again
                return False

        return self._wait().until(probe, f"waiting for {what}")

    def visible(self, css: str) -> Any:
        return self.until(lambda: self.find(css).is_displayed() and self.find(css), f"{css} to show")

    def absent(self, css: str) -> bool:
        return not self.driver.find_elements(self.by.CSS_SELECTOR, css)

    def text(self, css: str) -> str:
        return str(self.find(css).text)

    def type(self, form: str, name: str, value: str) -> None:
        field = self.find(f"{form} [name={name}]")
        field.clear()
        field.send_keys(value)

    def set_value(self, form: str, name: str, value: str) -> None:
        """For <input type=date>, whose keyboard format depends on the browser's locale."""
        self.driver.execute_script(
            "arguments[0].value = arguments[1]", self.find(f"{form} [name={name}]"), value
        )

    def submit(self, form: str) -> None:
        self.find(f"{form} button[type=submit]").click()

    def console_errors(self) -> list[str]:
        """SEVERE console entries, except the failed-request lines that the expected 4xx/503 produce."""
        entries = self.driver.get_log("browser")
        return [
            e["message"]
            for e in entries
            if e["level"] == "SEVERE" and not re.search(r"status of (4\d\d|503)", e["message"])
        ]


def enrollment_phase(page: Page, shots: Path) -> str:
    """A refused form (bad mobile), then a valid one; returns the identification number shown."""
    form = "#enroll-form"
    page.open("/")
    page.visible(form)
    assert page.absent("#notice")
    page.type(form, "last_name", "Martin")
    page.type(form, "first_name", "Claire")
    page.type(form, "birth_date", "12/04/1985")  # typed as in France, whatever the browser's locale
    page.type(form, "mobile", "01 23 45 67 89")  # a fixed line: refused, the callback goes to a mobile
    page.type(form, "card_first8", FIRST8)
    page.submit(form)
    note = page.visible(f"{form} .field-error[data-field=mobile]")
    assert "mobile" in note.text, note.text
    assert page.find(f"{form} [name=mobile]").get_attribute("aria-invalid") == "true"
    assert page.find(f"{form} [name=last_name]").get_attribute("aria-invalid") is None
    assert page.text("#enroll-error"), "no error line for the refused form"
    assert page.find(f"{form} [name=card_first8]").get_attribute("value") == ""  # never written back
    assert FIRST8 not in page.driver.page_source
    page.driver.save_screenshot(str(shots / "enrollment-error.png"))

    page.type(form, "mobile", "06 11 22 33 44")
    page.type(form, "card_first8", FIRST8)
    page.submit(form)
    page.visible("#enroll-live")
    identifier = page.text("#identifier")
    assert re.fullmatch(r"\d{10}", identifier), identifier
    assert page.text("#enroll-status") == "nous allons vous appeler"
    assert page.absent(form)
    assert FIRST8 not in page.driver.current_url and FIRST8 not in page.driver.page_source
    screenshot = shots / "enrollment.png"
    assert page.driver.save_screenshot(str(screenshot))
    width, height = png_size(screenshot.read_bytes())
    assert width > 100 and height > 100 and screenshot.stat().st_size > 2000
    return identifier


def suspended_phase(page: Page, notice: str, shots: Path) -> None:
    for path in ("/", "/profile"):
        page.open(path)
        box = page.visible("#notice")
        assert notice in box.text
        assert page.absent("form"), path
    page.driver.save_screenshot(str(shots / "suspended.png"))


def challenge_phase(page: Page, identifier: str) -> None:
    page.open("/profile")
    page.visible("#challenge-form")
    assert page.absent("#notice")
    page.type("#challenge-form", "identifier", identifier)
    page.submit("#challenge-form")
    page.visible("#session-form")


def session_phase(page: Page, token: str, shots: Path) -> None:
    page.type("#session-form", "token", f"{(int(token) + 1) % 1_000_000:06d}")
    page.submit("#session-form")
    page.until(lambda: page.text("#session-error"), "the wrong code to be refused")
    assert page.absent("#profile-form")
    page.type("#session-form", "token", token)
    page.submit("#session-form")
    page.visible("#profile-form")
    profile = "#profile-form"
    assert page.find(f"{profile} [name=first_name]").get_attribute("value") == "Claire"
    assert page.find(f"{profile} [name=mobile]").get_attribute("value") == "+33611223344"
    card = page.text("#card")
    assert card and FIRST8 not in card and LAST8 not in card, card
    assert len(re.findall(r"\d", card)) <= 10, card  # at most the first 6 and the last 4
    page.type(profile, "first_name", "Claire-Marie")
    page.submit(profile)
    page.until(lambda: page.text("#profile-saved"), "the saved confirmation")
    assert page.absent("#profile-error")
    assert page.find(f"{profile} [name=first_name]").get_attribute("value") == "Claire-Marie"
    page.driver.save_screenshot(str(shots / "profile.png"))


async def until(check: Callable[[], Any], seconds: float, what: str) -> Any:
    for _ in range(int(seconds / 0.05)):
        value = check()
        if hasattr(value, "__await__"):
            value = await value
        if value:
            return value
        await deferLater(reactor, 0.05, lambda: None)
    raise AssertionError(f"timed out after {seconds} s waiting for {what}")


@pytest_twisted.ensureDeferred
async def test_cardholder_pages_in_chromium(
    browser_tools: None, sqlite_url: str, profile_dir: Path, tmp_path: Path
) -> None:
    """Each browser phase runs in a thread (Selenium blocks) while the reactor serves the pages; what
    happens on the daemon's side between phases (the callback, the suspension, the SMS) runs here."""
    config = api_config(test_config(), public_requests_per_minute=1000, identifier_requests_per_hour=1000)
    h = ApiHarness(sqlite_url, config)
    shots = tmp_path / "screenshots"
    shots.mkdir()
    driver = None
    try:
        driver = await threads.deferToThread(start_browser, profile_dir)
        page = Page(driver, h.base)
        in_browser = threads.deferToThread

        identifier = await in_browser(enrollment_phase, page, shots)
        assert await h.answer_callback(LAST8) == "accepted"
        await in_browser(
            page.until, lambda: page.text("#enroll-status") == "actif", "the status to follow the callback"
        )

        notice = "Maintenance du service jusqu'à 14 h."
        answer = await h.call("POST", "/v1/admin/suspension", {"notice": notice}, OPERATOR_KEY)
        assert answer.status == 200, answer.body
        await in_browser(suspended_phase, page, notice, shots)
        answer = await h.call("DELETE", "/v1/admin/suspension", None, OPERATOR_KEY)
        assert answer.status == 200, answer.body

        await in_browser(challenge_phase, page, identifier)
        codes: list[str] = []

        async def token_sms() -> bool:
            codes.extend(m.group(1) for _, text in await h.sent_sms() if (m := TOKEN.search(text)))
            return bool(codes)

        await until(token_sms, WAIT, "the profile code in the outbox")
        await in_browser(session_phase, page, codes[-1], shots)
        console = await in_browser(page.console_errors)
        assert console == [], console
        # the daemon's side agrees with what the pages showed
        assert (await h.core.enrollment_status(identifier)).status == "active"
    finally:
        if driver is not None:
            await threads.deferToThread(driver.quit)
        await h.stop()


@pytest_twisted.ensureDeferred
async def test_enrollment_page_keeps_polling_through_a_429(
    browser_tools: None, sqlite_url: str, profile_dir: Path, tmp_path: Path
) -> None:
    """The page polls the status every 3 s; a 429 (here: the address's budget used up, on a frozen
    limiter clock) must not end the polling: it comes back after Retry-After and shows the callback's
    result."""
    from prometheus_client import REGISTRY

    now = [0.0]
    config = api_config(test_config(), public_requests_per_minute=60)  # 30 at once, then 1 a second
    h = ApiHarness(sqlite_url, config, limiter_clock=lambda: now[0])
    shots = tmp_path / "screenshots"
    shots.mkdir()
    limited = {"route": "/v1/enrollments/{identifier}", "method": "GET", "status": "429"}

    def refusals() -> float:
        return REGISTRY.get_sample_value("idtronic_http_requests_total", limited) or 0.0

    driver = None
    try:
        driver = await threads.deferToThread(start_browser, profile_dir)
        page = Page(driver, h.base)
        identifier = await threads.deferToThread(enrollment_phase, page, shots)
        while (await h.call("GET", f"/v1/enrollments/{identifier}")).status != 429:
            pass  # the test uses up what is left of the address's budget
        mine = refusals()
        await until(lambda: refusals() > mine, WAIT, "the page's poll to be refused")
        now[0] += 60  # the budget refills
        assert await h.answer_callback(LAST8) == "accepted"
        await threads.deferToThread(
            page.until, lambda: page.text("#enroll-status") == "actif", "the status after the 429"
        )
    finally:
        if driver is not None:
            await threads.deferToThread(driver.quit)
        await h.stop()
