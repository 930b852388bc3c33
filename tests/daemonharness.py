"""The whole daemon (core, API, FastAGI, AMI dialer, SMPP) in this process, wired to the built-in SMSC
simulator and the Asterisk emulator on loopback: for end-to-end tests of the telephony paths."""

from __future__ import annotations

import functools
import secrets
import socket
from dataclasses import replace
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from idtronic_tel.config_schema import (
    AmiConfig,
    ApiConfig,
    Config,
    SmppBindConfig,
    SmppConfig,
)
from idtronic_tel.daemon import Daemon, build
from idtronic_tel.simulators import smsc
from idtronic_tel.simulators.agi_options import EmulatorOptions, RecordLine
from idtronic_tel.simulators.asterisk_agi import run_agi_channel
from idtronic_tel.simulators.asterisk_ami import AmiEmulatorFactory
from idtronic_tel.simulators.handset import HandsetDirectory


def free_port() -> int:
    """A loopback port free right now (the daemon binds it a moment later)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class DaemonHarness:
    def __init__(
        self,
        url: str,
        base: Config,
        handsets: HandsetDirectory,
        receipt_status: str = "DELIVRD",
        speed: float = 8.0,
        seed: int | None = None,
        missing_prompts: frozenset[str] = frozenset(),
    ) -> None:
        # Distinctive secrets, so that a scan for them cannot match anything by chance.
        self.ami_secret = "ami-" + secrets.token_urlsafe(18)
        self.smpp_password = "Zq" + secrets.token_hex(3)  # SMPP 3.4: at most 8 characters
        self.operator_key = "idt_op_" + secrets.token_urlsafe(32)
        self.agi_lines: list[RecordLine] = []
        http, agi = free_port(), free_port()
        self.simulator = smsc.SmscSimulator(reactor, "idtronic", self.smpp_password, 0.05, receipt_status)  # type: ignore[arg-type]
        self.smsc_port = reactor.listenTCP(0, smsc.SmscFactory(self.simulator), interface="127.0.0.1")  # type: ignore[attr-defined]
        runner = functools.partial(
            run_agi_channel,
            options=EmulatorOptions(speed=speed, missing_prompts=missing_prompts),
            record=self.agi_lines,
        )
        self.asterisk = AmiEmulatorFactory(
            username="idtronic",
            secret=self.ami_secret,
            handsets=handsets,
            agi_endpoint=f"tcp:127.0.0.1:{agi}",
            reactor=reactor,
            agi_runner=runner,
            seed=seed,
        )
        self.ami_port = reactor.listenTCP(0, self.asterisk, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.config = replace(
            base,
            database=replace(base.database, url=url),
            http=replace(
                base.http,
                listen=f"tcp:{http}:interface=127.0.0.1",
                metrics_listen="tcp:0:interface=127.0.0.1",
            ),
            agi=replace(base.agi, listen=f"tcp:{agi}:interface=127.0.0.1"),
            api=replace(
                ApiConfig(),
                operator_key=self.operator_key,
                public_requests_per_minute=1000,
                identifier_requests_per_hour=1000,
            ),
            callback=replace(
                base.callback, first_call_delay=0, calling_hours="00:00-24:00", poll_interval=0.2
            ),
            ami=replace(
                AmiConfig(),
                endpoint=f"tcp:127.0.0.1:{self.ami_port.getHost().port}",
                secret=self.ami_secret,
                callback_channel="Local/{national}@callee",
            ),
            smpp=replace(
                SmppConfig(),
                poll_interval=0.1,
                binds=(
                    SmppBindConfig(
                        endpoint=f"tcp:127.0.0.1:{self.smsc_port.getHost().port}",
                        password=self.smpp_password,
                    ),
                ),
            ),
        )
        self.base_url = f"http://127.0.0.1:{http}"
        self.daemon: Daemon = build(self.config, reactor)

    def start(self) -> None:
        self.daemon.pool.start()
        self.daemon.service.startService()

    async def stop(self) -> None:
        await self.daemon.service.stopService()
        self.daemon.pool.stop()
        await self.ami_port.stopListening()
        await self.smsc_port.stopListening()


async def until(check: Any, seconds: float = 30.0, what: str = "condition") -> Any:
    """Poll an async or plain predicate until it returns something truthy."""
    for _ in range(int(seconds / 0.05)):
        value = check()
        if isinstance(value, Deferred) or hasattr(value, "__await__"):
            value = await value
        if value:
            return value
        await deferLater(reactor, 0.05, lambda: None)
    raise AssertionError(f"timed out waiting for {what}")
