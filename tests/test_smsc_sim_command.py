"""`idtronic-tel smsc-sim` as a separate process with the options docs/operator.md lists, our SMPP client
against it; and what each option changes, on the simulator itself."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from idtronic_tel.cli import main
from idtronic_tel.config_schema import SmppBindConfig, SmppConfig
from idtronic_tel.core.ports import SmsState
from idtronic_tel.simulators.smsc import SmscProtocol, SmscSimulator
from idtronic_tel.smpp import codec
from idtronic_tel.smpp.service import makeSmppService
from tests.fakes_smpp import FakeOutbox

IDTRONIC_TEL = str(Path(sys.executable).parent / "idtronic-tel")


class Simulator(ProcessProtocol):
    """The process's stdout lines; `listening` fires with its port."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.stderr = b""
        self.listening: Deferred[int] = Deferred()
        self.ended: Deferred[int] = Deferred()
        self._partial = b""

    def outReceived(self, data: bytes) -> None:
        *lines, self._partial = (self._partial + data).split(b"\n")
        for line in (raw.decode() for raw in lines):
            self.lines.append(line)
            if line.startswith("SMSC simulator listening on smpp://127.0.0.1:"):
                self.listening.callback(int(line.split(":")[2].split()[0]))

    def errReceived(self, data: bytes) -> None:
        self.stderr += data

    def processEnded(self, reason: Failure) -> None:
        if not self.listening.called:
            self.listening.errback(RuntimeError(self.stderr.decode(errors="replace")))
        self.ended.callback(0 if reason.check(ProcessDone) else reason.value.exitCode)  # type: ignore[union-attr]


def spawn(*options: str) -> tuple[Simulator, Any]:
    protocol = Simulator()
    args = [IDTRONIC_TEL, "smsc-sim", "--listen", "tcp:0:interface=127.0.0.1", *options]
    process = reactor.spawnProcess(protocol, IDTRONIC_TEL, args, env=None)  # type: ignore[attr-defined]
    return protocol, process


def client(port: int, outbox: FakeOutbox, system_id: str, password: str) -> Any:
    bind = SmppBindConfig(
        name="sim", endpoint=f"tcp:127.0.0.1:{port}", system_id=system_id, password=password
    )
    return makeSmppService(SmppConfig(binds=(bind,)), outbox, "pytest")


@pytest_twisted.ensureDeferred
async def test_smsc_sim_process_with_every_option(tmp_path: Path) -> None:
    record = tmp_path / "sms.jsonl"
    simulator, process = spawn(
        *("--system-id", "simtest", "--password", "s3cret", "--receipts", "--receipt-delay", "0.05"),
        *("--receipt-status", "UNDELIV", "--max-tps", "2", "--record", str(record)),
    )
    port = await simulator.listening
    outbox = FakeOutbox()
    for n in range(5):
        outbox.queue(text=f"code 00000{n}")
    service = client(port, outbox, "simtest", "s3cret")
    service.startService()
    try:
        # Every message reaches the simulator, is recorded and printed, and its receipt says UNDELIV.
        await outbox.when(lambda: outbox.states() == {SmsState.UNDELIVERABLE: 5}).addTimeout(60, reactor)
        # Two submits a second: the client was throttled and slowed down.
        assert service.binds[0].bucket.rate < SmppBindConfig().max_tps
    finally:
        await service.stopService()
        process.signalProcess("TERM")
        assert await simulator.ended == 0
    recorded = [json.loads(line)["text"] for line in record.read_text().splitlines()]
    assert sorted(recorded) == [f"code 00000{n}" for n in range(5)]
    printed = [line for line in simulator.lines if line.startswith("SMS ")]
    assert len(printed) == 5 and all("to +33611223344: code 00000" in line for line in printed)


@pytest_twisted.ensureDeferred
async def test_smsc_sim_process_without_receipts_and_quiet() -> None:
    simulator, process = spawn("--no-receipts", "--quiet")
    port = await simulator.listening
    outbox = FakeOutbox()
    outbox.queue(text="code 123456")
    service = client(port, outbox, "idtronic", "")  # the default system_id and (empty) password
    service.startService()
    try:
        await outbox.when(lambda: outbox.states() == {SmsState.SUBMITTED: 1}).addTimeout(60, reactor)
    finally:
        await service.stopService()
        process.signalProcess("TERM")
        assert await simulator.ended == 0
    assert [line for line in simulator.lines if line.startswith("SMS ")] == []


def test_receipts_off_and_throttling_on_the_simulator() -> None:
    clock = task.Clock()
    simulator = SmscSimulator(clock, "sys", "pw", receipt_delay=1.0, receipts=False, max_tps=1)
    protocol = SmscProtocol(simulator)
    sent: list[bytes] = []
    protocol.write = sent.append  # type: ignore[method-assign]
    bind = dict(system_type="", addr_ton=0, addr_npi=0, address_range="")
    protocol.dataReceived(codec.encode("bind_transceiver", 1, system_id="sys", password="pw", **bind))
    submit = dict(source_addr="IDTRONIC", destination_addr="33611223344", registered_delivery=1)
    for sequence in (2, 3):
        protocol.dataReceived(codec.encode("submit_sm", sequence, short_message=b"code 1", **submit))
    clock.advance(1)
    protocol.dataReceived(codec.encode("submit_sm", 4, short_message=b"code 2", **submit))
    clock.advance(5)
    framer = codec.SmppCodec()
    answers = [p for p in framer.receive_data(b"".join(sent)) if isinstance(p, codec.Pdu)]
    assert [(p.command, p.sequence, p.status) for p in answers] == [
        ("bind_transceiver_resp", 1, 0),
        ("submit_sm_resp", 2, 0),
        ("submit_sm_resp", 3, codec.ESME_RTHROTTLED),  # one a second
        ("submit_sm_resp", 4, 0),  # the next second
    ]  # and no deliver_sm: receipts are off
    assert [m.text for m in simulator.messages] == ["code 1", "code 2"]


def test_smsc_sim_refuses_bad_options_with_status_2(capsys: Any) -> None:
    for bad in (["--receipt-status", "NOPE"], ["--max-tps", "many"], ["--listen"]):
        try:
            main(["smsc-sim", *bad])
        except SystemExit as exc:
            assert exc.code == 2
        else:
            raise AssertionError(f"{bad} accepted")
    assert "--listen ENDPOINT" in capsys.readouterr().err
