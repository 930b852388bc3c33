"""`idtronic-tel run --demo`: the daemon with its peers simulated on loopback, and a scripted first run.

The built-in SMSC simulator prints every SMS; the Asterisk emulator answers callbacks with a simulated
handset that keys the right last 8 digits. The scenario then walks the product end to end: a merchant,
an enrollment (callback answered, digits keyed), a payment whose token SMS goes out over SMPP, and its
confirmation with the code read from the simulator. The daemon keeps running afterwards."""

from __future__ import annotations

import re
import socket
import sys
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, cast

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.logger import Logger

from .config_schema import Config, SmppBindConfig
from .core.cards import luhn_check_digit
from .core.crypto import random_digits
from .simulators import smsc
from .simulators.asterisk_agi import first_run_handset
from .simulators.asterisk_ami import makeService as make_asterisk_emulator
from .simulators.handset import HandsetDirectory

if TYPE_CHECKING:
    from .daemon import Daemon

log = Logger()

DEMO_MOBILE = "+33611223344"
_DEMO_SECRET = "demo-secret"
_DEMO_SMPP_PASSWORD = "demo"  # SMPP 3.4 passwords are at most 8 characters


def demo_card(config: Config) -> tuple[str, str]:
    """A fresh test card for each run (a card can be enrolled once): Visa prefix, valid Luhn. With
    demo.handset_last8 set, the handset keys those digits instead (to watch a wrong entry)."""
    first8 = "4" + random_digits(7)
    body = random_digits(7)
    last8 = body + luhn_check_digit(first8 + body)
    return first8, config.demo.handset_last8 or last8


def _free_port() -> int:
    """A loopback port free right now (the demo peers bind it a moment later)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _port_of(listen: str, key: str, free_if_zero: bool = False) -> int:
    """The TCP port of a loopback server endpoint string; 0 picks a free one when allowed."""
    fields = listen.split(":")
    if fields[0] not in ("tcp", "tcp6") or len(fields) < 2 or not fields[1].isdigit():
        raise ValueError(f"demo mode needs {key} on TCP, not {listen!r}")
    if fields[1] == "0":
        if not free_if_zero:
            raise ValueError(f"demo mode needs {key} on a fixed TCP port, not {listen!r}")
        return _free_port()
    return int(fields[1])


@dataclass
class DemoPeers:
    service: MultiService
    smsc: smsc.SmscSimulator
    card_first8: str


def with_demo_peers(config: Config, reactor: Any) -> tuple[Config, DemoPeers]:
    """The configuration pointed at simulated peers, and the peers as services."""
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
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
        echo=sys.stdout,
    )
    sms.setServiceParent(peers)
    first8, last8 = demo_card(config)
    handsets = HandsetDirectory(default=first_run_handset(last8))
    make_asterisk_emulator(
        f"tcp:{ami_port}:interface=127.0.0.1",
        "idtronic",
        _DEMO_SECRET,
        f"tcp:127.0.0.1:{agi_port}",
        handsets,
        reactor=reactor,
    ).setServiceParent(peers)
    return config, DemoPeers(peers, cast(smsc.SmscService, sms).simulator, first8)


class DemoScenario(Service):
    """Runs the first-run scenario once the daemon is up; logs each step with `DEMO` in front."""

    def __init__(self, daemon: Daemon, peers: DemoPeers, reactor: Any = None) -> None:
        from twisted.internet import reactor as default_reactor

        self.daemon = daemon
        self.simulator = peers.smsc
        self.card_first8 = peers.card_first8
        self.reactor = reactor or default_reactor
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
        shop = await core.add_merchant("Boutique Démo", "demo.id-tronic.example")
        merchant = await core.authenticate_merchant(shop["api_key"])
        assert merchant is not None
        log.info("DEMO merchant {name} registered as {id}", name=shop["name"], id=shop["id"])
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
        identifier = enrolled["identifier"]
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
        log.info("DEMO payment {id} created: its token SMS goes to the SMSC simulator", id=payment["id"])
        token = await self._token_after(seen, 30)
        confirmed = await core.confirm_payment(merchant, payment["id"], token)
        view = await self._wait_for(
            lambda: core.get_payment(merchant, payment["id"]), ("delivered",), 30, key="sms"
        )
        log.info(
            "DEMO payment {id} is {status} (SMS {sms}): the end-to-end demo succeeded",
            id=payment["id"],
            status=confirmed["status"],
            sms=view["sms"],
        )
        return {"identifier": identifier, "payment": payment["id"], "status": confirmed["status"]}

    async def _wait_for(
        self, read: Any, wanted: tuple[str, ...], seconds: float, key: str = "status"
    ) -> dict[str, Any]:
        for _ in range(int(seconds * 4)):
            current = cast(dict[str, Any], await read())
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
