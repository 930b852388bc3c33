"""`idtronic-tel run --demo`: the daemon with its peers simulated on loopback, and a scripted first run.

The built-in SMSC simulator prints every SMS; the Asterisk emulator answers callbacks with a simulated
handset that keys the right last 8 digits. The scenario then walks the product end to end: a merchant,
an enrollment (callback answered, digits keyed), a payment whose token SMS goes out over SMPP, and its
confirmation with the code read from the simulator. It then prints what a newcomer needs to do the same
by hand (page URLs, the merchant's key, the identification number, two curl commands), and the daemon
keeps running. The demo merchant and its key are kept in the data directory (demo-merchant.json, mode
0600): every run on the same data directory uses the same ones."""

from __future__ import annotations

import json
import os
import re
import socket
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any, cast

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from . import demo_pages, endpoints
from .api.routing import Route
from .config_schema import Config, SmppBindConfig
from .core.cards import luhn_check_digit
from .core.crypto import random_digits
from .core.views import wire
from .daemon import Daemon, DaemonService
from .daemon import make_service as make_daemon_service
from .simulators import smsc
from .simulators.asterisk_agi import first_run_handset
from .simulators.asterisk_ami import makeService as make_asterisk_emulator
from .simulators.phones import PhoneBoard

log = Logger()

DEMO_MOBILE = "+33611223344"
DEMO_MERCHANT = "Boutique Démo"
MERCHANT_FILE = "demo-merchant.json"  # {"id": ..., "api_key": ...} in the data directory, mode 0600
_DEMO_SECRET = "demo-secret"
_DEMO_SMPP_PASSWORD = "demo"  # SMPP 3.4 passwords are at most 8 characters


def demo_card(config: Config) -> tuple[str, str]:
    """A fresh test card for each run (a card can be enrolled once): Visa prefix, valid Luhn. With
    demo.handset_last8 set, the handset keys those digits instead (to watch a wrong entry)."""
    first8, last8 = fresh_card()
    return first8, config.demo.handset_last8 or last8


def _free_port() -> int:
    """A loopback port free right now (the demo peers bind it a moment later)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _port_of(listen: str, key: str, free_if_zero: bool = False) -> int:
    """The TCP port of a loopback server endpoint string; 0 picks a free one when allowed."""
    parsed = endpoints.server(listen)
    if parsed.kind not in ("tcp", "tcp6") or parsed.port is None:
        raise ValueError(f"demo mode needs {key} on TCP, not {listen!r}")
    if parsed.port == 0:
        if not free_if_zero:
            raise ValueError(f"demo mode needs {key} on a fixed TCP port, not {listen!r}")
        return _free_port()
    return parsed.port


@dataclass
class DemoPeers:
    service: MultiService
    smsc: smsc.SmscSimulator
    phones: PhoneBoard
    card_first8: str
    merchant_file: Path
    saved_merchant: dict[str, str]  # what merchant_file held at start ({} if nothing usable)
    out: IO[str]  # where the SMS and the closing block are printed
    merchant: dict[str, str] = field(default_factory=dict)  # the shop's id and key, once registered


def read_saved_merchant(path: Path) -> dict[str, str]:
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    ok = isinstance(saved, dict) and all(isinstance(saved.get(k), str) for k in ("id", "api_key"))
    return {"id": saved["id"], "api_key": saved["api_key"]} if ok else {}


def save_merchant(path: Path, merchant: dict[str, str]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        json.dump({"id": merchant["id"], "api_key": merchant["api_key"]}, file)
        file.write("\n")


def with_demo_peers(config: Config, reactor: Any, out: IO[str]) -> tuple[Config, DemoPeers]:
    """The configuration pointed at simulated peers, and the peers as services."""
    smsc_port = _port_of(config.demo.smsc_listen, "demo.smsc_listen", free_if_zero=True)
    ami_port = _port_of(config.demo.ami_listen, "demo.ami_listen", free_if_zero=True)
    agi_port = _port_of(config.agi.listen, "agi.listen")
    config = replace(
        config,
        ami=replace(
            config.ami,
            endpoint=f"tcp:127.0.0.1:{ami_port}",
            username="idtronic",
            secret=_DEMO_SECRET,
            callback_channel="Local/{national}@idtronic-demo-callee",
        ),
        smpp=replace(
            config.smpp,
            binds=(
                SmppBindConfig(
                    name="demo-smsc",
                    endpoint=f"tcp:127.0.0.1:{smsc_port}",
                    system_id="idtronic",
                    password=_DEMO_SMPP_PASSWORD,
                ),
            ),
        ),
        # The demo calls at once, whatever the time of day.
        callback=replace(config.callback, first_call_delay=1.0, calling_hours="00:00-24:00"),
    )
    peers = MultiService()
    sms = smsc.makeService(
        f"tcp:{smsc_port}:interface=127.0.0.1",
        "idtronic",
        _DEMO_SMPP_PASSWORD,
        receipt_delay=1.0,
        reactor=reactor,
        echo=out,
    )
    sms.setServiceParent(peers)
    first8, last8 = demo_card(config)
    simulator = cast(smsc.SmscService, sms).simulator
    # The demo cardholder's phone answers on its own; any other number rings on /demo/phone.
    handsets = PhoneBoard(reactor, simulator)
    handsets.add(DEMO_MOBILE, first_run_handset(last8))
    make_asterisk_emulator(
        f"tcp:{ami_port}:interface=127.0.0.1",
        "idtronic",
        _DEMO_SECRET,
        f"tcp:127.0.0.1:{agi_port}",
        handsets,
        reactor=reactor,
    ).setServiceParent(peers)
    merchant_file = config.data_dir / MERCHANT_FILE
    saved = read_saved_merchant(merchant_file)
    return config, DemoPeers(peers, simulator, handsets, first8, merchant_file, saved, out)


class DemoService(MultiService):
    """The daemon with its peers simulated on loopback and the scripted first run: the peers start before
    the daemon and stop after it."""

    def __init__(self, daemon_service: DaemonService, peers: DemoPeers, reactor: Any) -> None:
        super().__init__()
        self.daemon = daemon_service.daemon
        self.peers = peers
        peers.service.setServiceParent(self)
        daemon_service.setServiceParent(self)
        DemoScenario(self.daemon, peers, reactor).setServiceParent(self)


def make_service(config: Config, reactor: Any = None, out: IO[str] | None = None) -> DemoService:
    """`daemon.make_service` pointed at simulated peers (`run --demo`); `out`: where the SMS and the closing
    block are printed (stdout by default)."""
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    config, peers = with_demo_peers(config, reactor, out or sys.stdout)

    def pages(daemon: Daemon) -> list[Route]:
        return demo_pages.routes(daemon, peers.phones, lambda: peers.merchant.get("api_key"), reactor)

    return DemoService(make_daemon_service(config, reactor, more_routes=pages), peers, reactor)


class DemoScenario(Service):
    """Runs the first-run scenario once the daemon is up; logs each step with `DEMO` in front."""

    def __init__(self, daemon: Daemon, peers: DemoPeers, reactor: Any = None) -> None:
        from twisted.internet import reactor as default_reactor

        self.daemon = daemon
        self.peers = peers
        self.simulator = peers.smsc
        self.card_first8 = peers.card_first8
        self.reactor: Any = reactor or default_reactor
        self.done: Deferred[dict[str, str]] | None = None

    def startService(self) -> None:
        super().startService()
        self.done = Deferred.fromCoroutine(self.run())
        self.done.addErrback(self._failed)

    def _failed(self, failure: Any) -> None:
        log.failure("DEMO failed", failure)

    async def run(self) -> dict[str, str]:
        core = self.daemon.core
        await deferLater(self.reactor, 0.5, lambda: None)
        shop = await self._merchant()
        merchant = await core.authenticate_merchant(shop["api_key"])
        assert merchant is not None
        self.peers.merchant.update(shop)  # the demo shop pays with this key
        enrolled = await core.enroll(
            {
                "last_name": "Martin",
                "first_name": "Claire",
                "birth_date": "1985-04-12",
                "mobile": DEMO_MOBILE,
                "card_first8": self.card_first8,
            },
            "web",
            "demo",
        )
        identifier = enrolled.identifier
        log.info(
            "DEMO enrollment {identifier}: waiting for the callback (the simulated handset answers)",
            identifier=identifier,
        )
        status = await self._wait_for(lambda: core.enrollment_status(identifier), ("active", "failed"), 120)
        log.info("DEMO enrollment {identifier} is {status}", identifier=identifier, status=status["status"])
        if status["status"] != "active":
            raise RuntimeError(f"demo enrollment ended {status['status']}")
        seen = len(self.simulator.messages)
        _, payment = await core.create_payment(
            merchant,
            {"identifier": identifier, "amount": 4990, "currency": "EUR", "reference": "demo-1"},
            None,
        )
        log.info("DEMO payment {id} created: its token SMS goes to the SMSC simulator", id=payment.id)
        token = await self._token_after(seen, 30)
        confirmed = await core.confirm_payment(merchant, payment.id, token)
        view = await self._wait_for(
            lambda: core.get_payment(merchant, payment.id), ("delivered",), 30, key="sms"
        )
        log.info(
            "DEMO payment {id} is {status} (SMS {sms}): the end-to-end demo succeeded",
            id=payment.id,
            status=confirmed.status,
            sms=view["sms"],
        )
        self.peers.out.write(try_it(self.daemon.listeners["http"].url, shop, identifier, fresh_card()))
        self.peers.out.flush()
        return {
            "identifier": identifier,
            "payment": payment.id,
            "status": confirmed.status,
            "merchant": shop["id"],
            "api_key": shop["api_key"],
        }

    async def _merchant(self) -> dict[str, str]:
        """The demo merchant of earlier runs on this data directory, else a new one (saved)."""
        core = self.daemon.core
        saved = self.peers.saved_merchant
        if saved and await core.authenticate_merchant(saved["api_key"]) is not None:
            log.info(
                "DEMO merchant {name} ({id}) from {file}",
                name=DEMO_MERCHANT,
                id=saved["id"],
                file=self.peers.merchant_file,
            )
            return saved
        # The key file was lost (or the database replaced): a merchant of that name gets a new key.
        known = [m for m in (await core.list_merchants()).merchants if m.name == DEMO_MERCHANT]
        if known:
            shop = await core.rotate_merchant_key(known[0].id)
        else:
            shop = await core.add_merchant(DEMO_MERCHANT, "demo.id-tronic.example")
        merchant = {"id": shop.id, "api_key": shop.api_key}
        pool = self.reactor.getThreadPool()
        try:
            await deferToThreadPool(self.reactor, pool, save_merchant, self.peers.merchant_file, merchant)
            kept = f"its key kept in {self.peers.merchant_file}"
        except OSError as exc:  # the demo goes on; the next run registers a new key
            kept = f"its key not kept in {self.peers.merchant_file} ({exc.strerror})"
        log.info(
            "DEMO merchant {name} registered as {id}, {kept}",
            name=DEMO_MERCHANT,
            id=merchant["id"],
            kept=kept,
        )
        return merchant

    async def _wait_for(
        self, read: Any, wanted: tuple[str, ...], seconds: float, key: str = "status"
    ) -> dict[str, Any]:
        for _ in range(int(seconds * 4)):
            current = wire(await read())
            if current[key] in wanted:
                return current
            await deferLater(self.reactor, 0.25, lambda: None)
        raise RuntimeError(f"demo: {key} did not reach {wanted} within {seconds} s")

    async def _token_after(self, seen: int, seconds: float) -> str:
        for _ in range(int(seconds * 4)):
            for message in self.simulator.messages[seen:]:
                found = re.search(r"code (\d{6})", message.text)
                if found:
                    return found.group(1)
            await deferLater(self.reactor, 0.25, lambda: None)
        raise RuntimeError("demo: no token SMS reached the SMSC simulator")


def fresh_card() -> tuple[str, str]:
    """A fresh test card for a newcomer's own enrollment on the pages: (first 8, last 8)."""
    first8 = "4" + random_digits(7)
    body = random_digits(7)
    return first8, body + luhn_check_digit(first8 + body)


def try_it(base: str, merchant: dict[str, str], identifier: str, card: tuple[str, str]) -> str:
    """What to do by hand now, with the values of this run: the pages first (the shop, the phone, the
    enrollment with a test card), then the merchant's key, the cardholder, and two curl commands ready
    to paste (create a payment, confirm it)."""
    auth = f"-H 'Authorization: Bearer {merchant['api_key']}' -H 'Content-Type: application/json'"
    payment = json.dumps({"identifier": identifier, "amount": 1250, "currency": "EUR", "reference": "try-1"})
    rule = "-" * 100
    return f"""
{rule}
Try it yourself: the daemon keeps running on {base} (Ctrl-C stops it). In a browser:
  Shop                {base}/demo/shop (pay with id-tronic: identification number, then the code by SMS)
  Phone               {base}/demo/phone (the calls and SMS of every mobile number: answer, key, read codes)
  Enrollment          {base}/ (any mobile number, e.g. 06 12 34 56 78: it rings on the phone page; this
                      test card: first 8 digits {card[0]} on the form, last 8 digits {card[1]} on the phone)
  Personal section    {base}/profile
  Operator console    {base}/admin (log in with the operator key: the file operator.key of the data directory)
  Demo merchant       {DEMO_MERCHANT} ({merchant["id"]}), API key {merchant["api_key"]}
  Demo cardholder     identification number {identifier}, mobile {DEMO_MOBILE}
  SMS                 every SMS the daemon sends is printed here, as a line "SMS <id> to {DEMO_MOBILE}: ..."

1. Create a payment; its 6-digit code goes out by SMS (watch for the new SMS line):
curl -s -X POST {base}/v1/payments {auth} -d '{payment}'

2. Confirm it: put the "id" of the answer in place of PAYMENT_ID and the code in place of CODE:
curl -s -X POST {base}/v1/payments/PAYMENT_ID/confirm {auth} -d '{{"token": "CODE"}}'

The answer says "status": "validated". The same merchant and key come back on every run with this
data directory; the API is described in docs/api.md and at {base}/v1/openapi.json.
{rule}
"""
