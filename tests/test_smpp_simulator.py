"""The built-in SMSC simulator: our client against it over loopback, and its own protocol on a transport."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.testing import StringTransport

from idtronic_tel.config_schema import SmppBindConfig, SmppConfig
from idtronic_tel.core.ports import SmsState
from idtronic_tel.simulators.smsc import SmscProtocol, SmscService, SmscSimulator, makeService
from idtronic_tel.smpp import codec
from idtronic_tel.smpp.service import makeSmppService
from tests.fakes_smpp import FakeOutbox


def test_simulator_protocol_on_a_transport() -> None:
    clock = task.Clock()
    simulator = SmscSimulator(clock, "sys", "pw", receipt_delay=2.0, receipt_status="UNDELIV")
    protocol = SmscProtocol(simulator)
    transport = StringTransport()
    protocol.makeConnection(transport)
    framer = codec.SmppCodec()

    def answers(data: bytes) -> list[codec.Pdu]:
        protocol.dataReceived(data)
        out = framer.receive_data(transport.value())
        transport.clear()
        return [e for e in out if isinstance(e, codec.Pdu)]

    bind = dict(system_type="", addr_ton=0, addr_npi=0, address_range="")
    (refused,) = answers(codec.encode("bind_transceiver", 1, system_id="sys", password="no", **bind))
    assert refused.status == codec.ESME_RINVPASWD
    (ok,) = answers(codec.encode("bind_transceiver", 2, system_id="sys", password="pw", **bind))
    assert ok.status == 0
    (pong,) = answers(codec.encode_header_only(0x15, 3))
    assert (pong.command, pong.sequence) == ("enquire_link_resp", 3)
    (resp,) = answers(
        codec.encode(
            "submit_sm",
            4,
            source_addr="IDTRONIC",
            destination_addr="33611223344",
            registered_delivery=1,
            short_message=b"code 123456",
        )
    )
    assert resp.body.message_id == b"00000001"
    assert simulator.messages[0].text == "code 123456"
    clock.advance(2)
    (receipt,) = answers(b"")
    assert receipt.command == "deliver_sm" and receipt.body.message_state == 5
    assert b"stat:UNDELIV" in receipt.body.short_message
    (nack,) = answers(bytes.fromhex("00000010000000770000000000000009"))
    assert nack.command == "generic_nack" and nack.status == codec.ESME_RINVCMDID
    assert clock.getDelayedCalls() == []


@pytest_twisted.ensureDeferred
async def test_client_against_simulator(tmp_path: Path) -> None:
    record = tmp_path / "sms.jsonl"
    smsc = makeService(
        "tcp:0:interface=127.0.0.1", "idtronic", "s3cret", 0.05, "DELIVRD", str(record), reactor=reactor
    )
    assert isinstance(smsc, SmscService)
    smsc.startService()
    port = await smsc.when_listening()
    outbox = FakeOutbox()
    outbox.queue(text="code 654321 é")
    outbox.queue(text="ç" * 100)
    config = SmppConfig(
        binds=(
            SmppBindConfig(
                name="sim",
                endpoint=f"tcp:127.0.0.1:{port.getHost().port}",
                system_id="idtronic",
                password="s3cret",
            ),
        ),
    )
    client = makeSmppService(config, outbox, "pytest")
    client.startService()
    try:
        done = outbox.when(lambda: outbox.states() == {SmsState.DELIVERED: 2})
        await done.addTimeout(30, reactor)
    finally:
        await client.stopService()
        await smsc.stopService()
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    assert [line["text"] for line in lines] == ["code 654321 é", "ç" * 67, "ç" * 33]
    assert [line["data_coding"] for line in lines] == [0, 8, 8]


def test_main_rejects_bad_status() -> None:
    from idtronic_tel.simulators.smsc_command import main

    with pytest.raises(SystemExit):
        main(["--receipt-status", "NOPE"])
