"""No secret leaks (docs/rules.md §1.7, §6, docs/api.md): the whole daemon runs a full flow on loopback
with every log captured, then every captured log text and event, every text column of every table, and
the AGI command stream the emulated Asterisk received are scanned for the secrets the flow handled.

The daemon is `idtronic_tel.daemon.build` (the same parts as `make_service`) wired to the built-in SMSC
simulator and the Asterisk emulator with two simulated handsets: one keys the right last 8 digits, the
other keys wrong ones three times. The SMSC simulator's echo of each SMS is off (`echo=None`): it is a test
peer's output, not the daemon's. A smaller second test scans the `run --demo` assembly from
`make_service`.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import secrets
import string
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import sqlalchemy as sa
import treq
from conftest import test_config
from daemonharness import DaemonHarness, free_port, until
from twisted.application.service import MultiService
from twisted.internet import reactor
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure

from idtronic_tel.config_schema import (
    AgiConfig,
    ApiConfig,
    DemoConfig,
    HttpConfig,
)
from idtronic_tel.core.cards import luhn_check_digit
from idtronic_tel.core.db import make_engine
from idtronic_tel.demo import DemoScenario, make_service
from idtronic_tel.simulators.agi_options import repo_sounds
from idtronic_tel.simulators.asterisk_agi import first_run_handset
from idtronic_tel.simulators.asterisk_ami import AmiEmulatorFactory
from idtronic_tel.simulators.handset import Handset, HandsetDirectory, Keys

MOBILE_OK = "+33611223344"
MOBILE_WRONG = "+33622334455"
SPEED = 5.0  # the emulated calls run five times faster than real ones
TOKEN = re.compile(r"code (\d{6})")
HEX_ADDRESS = re.compile(r"0x[0-9a-fA-F]+")


def _digits(n: int) -> str:
    return "".join(secrets.choice(string.digits) for _ in range(n))


def _card() -> tuple[str, str]:
    """A fresh Visa test card: (first 8, last 8), Luhn-valid."""
    first8 = "4" + _digits(7)
    body = _digits(7)
    return first8, body + luhn_check_digit(first8 + body)


def _wrong_last8(first8: str, right: str) -> str:
    """8 digits that fail the Luhn check with `first8` (and differ from the right ones)."""
    while True:
        guess = _digits(8)
        if guess != right and luhn_check_digit(first8 + guess[:7]) != guess[7]:
            return guess


# ---- log capture -------------------------------------------------------------------------------------


class LogCapture(logging.Handler):
    """Every twisted.logger event (formatted text, traceback of a failure, and the raw event's repr) and
    every stdlib logging record, while installed."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.texts: list[str] = []
        self._root_level = logging.root.level

    def observe(self, event: dict[str, Any]) -> None:
        # log_time is the time of the event: a float whose digits change every line, not data. Memory
        # addresses in reprs are noise too. Removing them keeps the digit scans free of coincidences.
        raw = {k: v for k, v in event.items() if k != "log_time"}
        self.texts.append(formatEvent(event))
        self.texts.append(HEX_ADDRESS.sub("0x", repr(raw)))
        failure = event.get("log_failure")
        if isinstance(failure, Failure):
            self.texts.append(failure.getTraceback())

    def emit(self, record: logging.LogRecord) -> None:
        self.texts.append(self.format(record))
        self.texts.append(repr(record.args))

    def install(self) -> None:
        globalLogPublisher.addObserver(self.observe)
        logging.root.addHandler(self)
        logging.root.setLevel(logging.DEBUG)

    def remove(self) -> None:
        globalLogPublisher.removeObserver(self.observe)
        logging.root.removeHandler(self)
        logging.root.setLevel(self._root_level)


@pytest.fixture
def captured() -> Iterator[LogCapture]:
    capture = LogCapture()
    capture.install()
    try:
        yield capture
    finally:
        capture.remove()


# ---- the scan ----------------------------------------------------------------------------------------


@dataclass
class Secrets:
    """What must appear nowhere. `digits` are matched as whole digit runs (a 6-digit token inside a
    20-digit number is a coincidence, not a leak); card digits are also matched as any 6-digit window
    of the card number inside any digit run, except runs that are public values (identifiers)."""

    strings: dict[str, str] = field(default_factory=dict)  # label -> secret, matched anywhere
    digits: dict[str, str] = field(default_factory=dict)  # label -> digit string, whole runs
    cards: dict[str, str] = field(default_factory=dict)  # label -> card digits, any 6-digit window
    public_runs: set[str] = field(default_factory=set)

    def add_card(self, label: str, digits: str) -> None:
        self.cards[label] = digits
        self.strings[label] = digits

    def windows(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for label, digits in self.cards.items():
            for i in range(len(digits) - 5):
                out.setdefault(digits[i : i + 6], f"{label}[{i}:{i + 6}]")
        return out

    def find(self, text: str) -> list[str]:
        hits = [label for label, secret in self.strings.items() if secret and secret in text]
        runs = set(re.findall(r"\d{6,}", text))
        hits += [label for label, value in self.digits.items() if value in runs]
        windows = self.windows()
        for run in runs - self.public_runs:
            hits += [label for window, label in windows.items() if window in run]
        return sorted(set(hits))

    def find_bytes(self, blob: bytes) -> list[str]:
        every = {**self.strings, **self.digits}
        return sorted(label for label, value in every.items() if value and value.encode() in blob)


def scan_texts(texts: list[str], hidden: Secrets) -> list[str]:
    problems = []
    for text in texts:
        hits = hidden.find(text)
        if hits:
            problems.append(f"{hits} in log: {text[:300]!r}")
    return problems


def scan_database(url: str, hidden: Secrets) -> tuple[list[str], int]:
    """Every String/Text column and every LargeBinary column of every table. Returns the problems and
    how many text values were read (to prove the scan saw data)."""
    engine = make_engine(url)
    problems: list[str] = []
    seen = 0
    try:
        with engine.connect() as conn:
            inspector = sa.inspect(conn)  # on this connection: SQLite's BEGIN IMMEDIATE takes one lock
            for table in inspector.get_table_names():
                columns = inspector.get_columns(table)
                texts = [c["name"] for c in columns if isinstance(c["type"], sa.String | sa.Text)]
                blobs = [c["name"] for c in columns if isinstance(c["type"], sa.LargeBinary)]
                if not texts and not blobs:
                    continue
                names = ", ".join(f'"{name}"' for name in texts + blobs)
                for row in conn.execute(sa.text(f'SELECT {names} FROM "{table}"')):
                    for name, value in zip(texts + blobs, row, strict=True):
                        if value is None:
                            continue
                        if isinstance(value, bytes | memoryview):
                            hits = hidden.find_bytes(bytes(value))
                        else:
                            seen += 1
                            hits = hidden.find(str(value))
                        if hits:
                            problems.append(f"{hits} in {table}.{name}: {str(value)[:200]!r}")
    finally:
        engine.dispose()
    return problems, seen


# ---- the daemon --------------------------------------------------------------------------------------


class Http:
    def __init__(self, base: str) -> None:
        self.base = base

    async def __call__(
        self, method: str, path: str, body: Any = None, auth: str | None = None, **extra: str
    ) -> tuple[int, Any]:
        headers = {"content-type": ["application/json"]}
        if auth is not None:
            headers["authorization"] = [auth]
        headers.update({name.replace("_", "-"): [value] for name, value in extra.items()})
        data = json.dumps(body).encode() if body is not None else None
        response = await treq.request(method, self.base + path, data=data, headers=headers, persistent=False)
        content = await response.content()
        return response.code, json.loads(content) if content else None


class Harness(DaemonHarness):
    """The daemon from `build`, the SMSC simulator and the Asterisk emulator on loopback, with
    distinctive secrets (see DaemonHarness), spoken to over HTTP."""

    def __init__(self, url: str, handsets: HandsetDirectory) -> None:
        super().__init__(url, test_config(), handsets, speed=SPEED, seed=7)
        self.http = Http(self.base_url)


def _wrong_handset(wrong8: str) -> Handset:
    """Answers, lets the welcome play, then keys `wrong8` three times, each while the daemon waits for
    an entry (after the "wrong, try again" prompt): the enrollment fails after the third."""
    welcome = repo_sounds().get("idtronic-welcome", 16000) / 8000 + 1.0
    entry = f"d{wrong8}#"
    return Handset.scripted(f"w{welcome:.2f}|{entry}|w8|{entry}|w8|{entry}")


def _keyed(handset: Handset) -> str:
    return "".join(step.digits for step in handset.script if isinstance(step, Keys))


@pytest_twisted.ensureDeferred
async def test_full_flow_leaves_no_secret_in_logs_database_or_agi(db_url: str, captured: LogCapture) -> None:
    first8, last8 = _card()
    other_first8, other_last8 = _card()
    wrong8 = _wrong_last8(other_first8, other_last8)
    handsets = HandsetDirectory()
    handsets.add(MOBILE_OK, first_run_handset(last8))
    handsets.add(MOBILE_WRONG, _wrong_handset(wrong8))
    h = Harness(db_url, handsets)
    hidden = Secrets()
    hidden.strings.update(
        operator_key=h.operator_key,
        ami_secret=h.ami_secret,
        smpp_password=h.smpp_password,
    )
    for name, key in (("data_key", h.config.keys.data_key), ("hmac_key", h.config.keys.hmac_key)):
        hidden.strings[name + " (hex)"] = key.hex()
        hidden.strings[name + " (base64)"] = base64.b64encode(key).decode()
    hidden.add_card("card", first8 + last8)
    hidden.add_card("card of the failed enrollment (first 8)", other_first8)
    hidden.add_card("wrong DTMF entry", wrong8)
    hidden.public_runs.update({"33611223344", "0611223344", "33622334455", "0622334455"})
    call = h.http
    operator = f"Bearer {h.operator_key}"
    h.start()
    try:
        # ---- operator: merchants; a wrong operator key is refused (and not logged either)
        bogus = "idt_op_" + secrets.token_urlsafe(32)
        hidden.strings["a wrong operator key"] = bogus
        status, _ = await call("POST", "/v1/admin/merchants", {"name": "Boutique"}, f"Bearer {bogus}")
        assert status == 401
        status, shop = await call(
            "POST", "/v1/admin/merchants", {"name": "Boutique Exemple", "domain": "shop.example"}, operator
        )
        assert status == 201, shop
        hidden.strings["merchant API key"] = shop["api_key"]
        status, other = await call("POST", "/v1/admin/merchants", {"name": "Autre Boutique"}, operator)
        assert status == 201, other
        hidden.strings["second merchant API key"] = other["api_key"]
        merchant = f"Bearer {shop['api_key']}"

        # ---- two web enrollments: one handset keys the right digits, the other wrong ones
        identity = {"last_name": "Martin", "first_name": "Claire", "birth_date": "1985-04-12"}
        status, enrolled = await call(
            "POST", "/v1/enrollments", {**identity, "mobile": "06 11 22 33 44", "card_first8": first8}
        )
        assert status == 201, enrolled
        identifier = enrolled["identifier"]
        status, failing = await call(
            "POST", "/v1/enrollments", {**identity, "mobile": MOBILE_WRONG, "card_first8": other_first8}
        )
        assert status == 201, failing
        hidden.public_runs.update({identifier, failing["identifier"]})
        core = h.daemon.core

        async def state(ident: str) -> str:
            return str((await core.enrollment_status(ident)).status)

        async def settled() -> bool:
            return await state(identifier) in ("active", "failed") and await state(failing["identifier"]) in (
                "active",
                "failed",
            )

        await until(settled, 45, "both callbacks answered and decided")
        assert await state(identifier) == "active"
        assert await state(failing["identifier"]) == "failed"
        status, seen = await call("GET", f"/v1/enrollments/{identifier}")
        assert (status, seen["status"]) == (200, "active")

        # ---- a payment: its token goes out over SMPP; a wrong token, then the right one
        async def next_token(destination: str, after: int) -> str:
            def found() -> str | None:
                for message in h.simulator.messages[after:]:
                    match = TOKEN.search(message.text)
                    if match and message.destination.endswith(destination[-9:]):
                        return match.group(1)
                return None

            token = str(await until(found, 20, f"an SMS to {destination}"))
            hidden.digits[f"token {len(hidden.digits) + 1}"] = token
            return token

        before = len(h.simulator.messages)
        status, payment = await call(
            "POST",
            "/v1/payments",
            {"identifier": identifier, "amount": 4990, "currency": "EUR", "reference": "order-1"},
            merchant,
            idempotency_key="order-1-key",
        )
        assert status == 201, payment
        assert payment["status"] == "pending"
        token = await next_token(MOBILE_OK, before)
        wrong = f"{(int(token) + 1) % 1_000_000:06d}"
        hidden.digits["a wrong payment token"] = wrong
        status, refused = await call(
            "POST", f"/v1/payments/{payment['id']}/confirm", {"token": wrong}, merchant
        )
        assert status == 422 and refused["error"] == "invalid_token", refused
        status, done = await call("POST", f"/v1/payments/{payment['id']}/confirm", {"token": token}, merchant)
        assert status == 200 and done["status"] == "validated", done
        status, again = await call(
            "POST", f"/v1/payments/{payment['id']}/confirm", {"token": token}, merchant
        )
        assert status == 409, again

        # the failed cardholder cannot pay; the answer says nothing more
        status, refused = await call(
            "POST",
            "/v1/payments",
            {"identifier": failing["identifier"], "amount": 100, "currency": "EUR", "reference": "o2"},
            merchant,
        )
        assert status == 422 and refused["error"] == "payment_refused", refused

        # ---- the personal section: challenge, a wrong token, the session, a change
        before = len(h.simulator.messages)
        status, _ = await call("POST", "/v1/profile/challenges", {"identifier": identifier})
        assert status == 202
        profile_token = await next_token(MOBILE_OK, before)
        wrong = f"{(int(profile_token) + 7) % 1_000_000:06d}"
        hidden.digits["a wrong profile token"] = wrong
        status, refused = await call(
            "POST", "/v1/profile/sessions", {"identifier": identifier, "token": wrong}
        )
        assert status == 422, refused
        status, opened = await call(
            "POST", "/v1/profile/sessions", {"identifier": identifier, "token": profile_token}
        )
        assert status == 201, opened
        hidden.strings["profile session"] = opened["session"]
        session = f"Session {opened['session']}"
        status, profile = await call("GET", "/v1/profile", auth=session)
        assert status == 200 and profile["first_name"] == "Claire", profile
        status, profile = await call("PATCH", "/v1/profile", {"first_name": "Claire-Marie"}, session)
        assert status == 200 and profile["first_name"] == "Claire-Marie", profile

        # ---- the delivery receipt of the payment's SMS comes back over SMPP
        async def delivered() -> bool:
            status, view = await call("GET", f"/v1/payments/{payment['id']}", auth=merchant)
            return status == 200 and view["sms"] == "delivered"

        await until(delivered, 20, "the delivery receipt")
    finally:
        await h.stop()

    assert len(hidden.digits) >= 4  # two tokens sent, two wrong ones tried
    # The scanner finds what it looks for (else a clean result would prove nothing).
    assert hidden.find(f"code={token}.") and not hidden.find(f"#1{token}")
    assert hidden.find(f"x{first8[3:8]}{last8[:1]}y") and hidden.find(f"pan {first8}{last8}")
    assert hidden.find_bytes(b"\x00" + shop["api_key"].encode()) and not hidden.find(identifier)
    # ---- (a) the logs
    assert len(captured.texts) > 50, "the log capture saw nothing: is the observer installed?"
    assert any("originated" in text for text in captured.texts), "no callback log line captured"
    problems = scan_texts(captured.texts, hidden)
    # ---- (b) every text column of every table, and the encrypted blobs
    found, values = scan_database(db_url, hidden)
    problems += found
    assert values > 20, "the database scan read almost nothing"
    # ---- (c) what the emulated Asterisk received: AGI commands and AMI actions
    to_asterisk = [line.decode(errors="replace") for _, direction, line in h.agi_lines if direction == ">AST"]
    from_asterisk = b"".join(line for _, direction, line in h.agi_lines if direction == "AST>")
    assert any(text.startswith("GET DATA") for text in to_asterisk), to_asterisk
    assert last8.encode() in from_asterisk and wrong8.encode() in from_asterisk, "the digits went over AGI"
    assert _keyed(handsets.take(MOBILE_WRONG)).count(wrong8) == 3
    for text in to_asterisk:
        hits = hidden.find(text)
        if hits:
            kind = "VERBOSE" if text.startswith("VERBOSE") else text.split(" ", 2)[:2]
            problems.append(f"{hits} in an AGI command to Asterisk ({kind}): {text!r}")
    for action in h.asterisk.actions:
        if (action.get("Action") or "").lower() == "login":
            continue
        text = repr(list(action))
        hits = hidden.find(text)
        if hits:
            problems.append(f"{hits} in an AMI action (channel variables included): {text[:300]}")
    assert not problems, "secrets leaked:\n" + "\n".join(problems)


def _services(top: Any) -> Iterator[Any]:
    for child in top:
        yield child
        if isinstance(child, MultiService):
            yield from _services(child)


@pytest_twisted.ensureDeferred
async def test_demo_run_logs_no_secret(sqlite_url: str, captured: LogCapture, tmp_path: Path) -> None:
    """`run --demo` as `make_service` assembles it: the scripted scenario's card digits, its token and
    the operator key appear in no log line, event or traceback, nor in any text column."""
    operator_key = "idt_op_" + secrets.token_urlsafe(32)
    base = test_config()
    config = replace(
        base,
        data_dir=tmp_path,
        database=replace(base.database, url=sqlite_url),
        http=replace(
            HttpConfig(),
            listen=f"tcp:{free_port()}:interface=127.0.0.1",
            metrics_listen="tcp:0:interface=127.0.0.1",
        ),
        agi=replace(AgiConfig(), listen=f"tcp:{free_port()}:interface=127.0.0.1"),
        api=replace(ApiConfig(), operator_key=operator_key),
        demo=replace(DemoConfig(), enabled=True),
    )
    root = make_service(config, reactor, io.StringIO())
    scenario = next(s for s in _services(root) if isinstance(s, DemoScenario))
    asterisk = next(
        s.factory for s in _services(root) if isinstance(getattr(s, "factory", None), AmiEmulatorFactory)
    )
    scenario.simulator.echo = None  # the simulator's own print of each SMS is not the daemon's log
    last8 = _keyed(asterisk.handsets.default).rstrip("#")
    hidden = Secrets()
    hidden.strings.update(operator_key=operator_key, ami_secret=asterisk.secret)
    hidden.add_card("demo card", scenario.card_first8 + last8)
    root.startService()
    try:
        assert scenario.done is not None
        result = await scenario.done
        assert result is not None and result["status"] == "validated", result
    finally:
        await root.stopService()
    tokens = [m.group(1) for m in map(TOKEN.search, (msg.text for msg in scenario.simulator.messages)) if m]
    assert tokens, "the demo sent no token"
    hidden.digits.update({f"token {i}": token for i, token in enumerate(tokens, 1)})
    hidden.public_runs.add(result["identifier"])
    problems = scan_texts(captured.texts, hidden)
    assert any(text.startswith("DEMO payment") for text in captured.texts), "no DEMO line captured"
    problems += scan_database(sqlite_url, hidden)[0]
    assert not problems, "secrets leaked:\n" + "\n".join(problems)
