"""Hostile or broken deliver_sm from an SMSC, byte for byte on a StringTransport: every one is answered,
nothing raises out of a handler, and only a receipt we could use but not record asks for redelivery.

The receipts below are built by hand (not by smpplib, which would refuse to write most of them): header,
the mandatory parameters of SMPP 3.4 §4.6.1, then TLVs.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY
from twisted.internet import task
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, globalLogPublisher

from idtronic_tel.smpp import codec
from idtronic_tel.smpp.protocol import SessionSettings, SmppClientProtocol
from idtronic_tel.smpp.receipts import ReceiptHandler
from tests.fakes_smpp import FakeOutbox

SETTINGS = SessionSettings(system_id="test", password="secret")
RECEIPTED_MESSAGE_ID = 0x001E
MESSAGE_STATE = 0x0427
MESSAGE_PAYLOAD = 0x0424


def tlv(tag: int, value: bytes) -> bytes:
    return struct.pack(">HH", tag, len(value)) + value


def deliver_sm(sequence: int, short_message: bytes = b"", esm_class: int = 0x04, tlvs: bytes = b"") -> bytes:
    body = (
        b"\x00"  # service_type
        + b"\x01\x01"
        + b"33611223344\x00"  # source
        + b"\x05\x00"
        + b"IDTRONIC\x00"  # destination
        + bytes([esm_class, 0, 0])  # esm_class, protocol_id, priority_flag
        + b"\x00\x00"  # schedule_delivery_time, validity_period
        + b"\x00\x00\x01\x00"  # registered_delivery, replace_if_present, data_coding, sm_default_msg_id
        + bytes([len(short_message)])
        + short_message
        + tlvs
    )
    return struct.pack(">LLLL", 16 + len(body), 0x00000005, 0, sequence) + body


def resp_ok(sequence: int) -> bytes:
    """deliver_sm_resp, ESME_ROK, with its empty message_id."""
    return struct.pack(">LLLL", 17, 0x80000005, 0, sequence) + b"\x00"


def resp_error(sequence: int, status: int) -> bytes:
    return struct.pack(">LLLL", 16, 0x80000005, status, sequence)


class Wire:
    """One bound session whose deliver_sm go to a real ReceiptHandler over a FakeOutbox."""

    def __init__(self) -> None:
        self.clock = task.Clock()
        self.outbox = FakeOutbox()
        self.protocol = SmppClientProtocol(
            SETTINGS, self.clock, ReceiptHandler(self.outbox, "edge", clock=self.clock), "edge"
        )
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)
        self.protocol.bind("transceiver")
        self.transport.clear()
        self.protocol.dataReceived(codec.encode("bind_transceiver_resp", 1, system_id="SMSC"))
        self.events: list[dict[str, object]] = []

    def feed(self, data: bytes) -> bytes:
        """What the session answers to `data`, once every delay of the handler has run."""
        globalLogPublisher.addObserver(self.events.append)
        try:
            self.protocol.dataReceived(data)
            self.clock.pump([1.0] * 10)
        finally:
            globalLogPublisher.removeObserver(self.events.append)
        written = self.transport.value()
        self.transport.clear()
        return written

    def warnings(self) -> list[str]:
        return [
            str(e.get("why", "")) + str(e.get("reason", ""))
            for e in self.events
            if e.get("log_level") in (LogLevel.warn, LogLevel.error, LogLevel.critical)
        ]


@pytest.fixture
def wire() -> Iterator[Wire]:
    w = Wire()
    yield w
    assert not w.protocol.transport.disconnecting  # type: ignore[union-attr]


def metric(name: str) -> float:
    return REGISTRY.get_sample_value(name, {"bind": "edge"}) or 0.0


UNPARSEABLE = "idtronic_smpp_receipts_unparseable_total"
MOBILE_ORIGINATED = "idtronic_smpp_mobile_originated_total"


@pytest.mark.parametrize(
    "case",
    [
        deliver_sm(7, b"id:\xb2\xb3 sub:001 dlvrd:001 stat:DELIVRD err:000 text:"),
        deliver_sm(
            7, b"stat:DELIVRD", tlvs=tlv(RECEIPTED_MESSAGE_ID, b"\xb2\xb3\x00") + tlv(MESSAGE_STATE, b"\x02")
        ),
        deliver_sm(7, tlvs=tlv(RECEIPTED_MESSAGE_ID, b"1" * 5000 + b"\x00") + tlv(MESSAGE_STATE, b"\x02")),
        deliver_sm(7, tlvs=tlv(MESSAGE_PAYLOAD, b"id:" + b"9" * 5000 + b" stat:DELIVRD")),
        deliver_sm(7, b"\xff\xfe\x1b[2J garbage \r\n"),
        deliver_sm(7, b"id: stat:DELIVRD"),
        deliver_sm(7, b"id:\x1b]0;x\x07 stat:DELIVRD"),
    ],
    ids=[
        "latin1-text-id",
        "latin1-tlv-id",
        "5000-digit-tlv-id",
        "5000-digit-payload-id",
        "garbage",
        "empty-id",
        "escape-sequence-id",
    ],
)
def test_unusable_receipt_is_acknowledged_with_a_warning_and_a_metric(wire: Wire, case: bytes) -> None:
    before = metric(UNPARSEABLE)
    assert wire.feed(case) == resp_ok(7)
    assert metric(UNPARSEABLE) == before + 1
    assert len(wire.warnings()) == 1
    assert not [c for c in wire.outbox.calls if c[0] == "apply_receipt"]  # no database work for it
    # Nothing of the receipt's bytes in the log (its text quotes the message, code included).
    assert all("\x1b" not in repr(e) and "99999" not in repr(e) for e in wire.events)


def test_truncated_short_message_is_refused_invmsglen_not_taken_for_a_mobile_message(wire: Wire) -> None:
    good = deliver_sm(8, b"id:00002329 sub:001 dlvrd:001 stat:DELIVRD err:000 text:")
    cut = good[:60]
    before = metric(MOBILE_ORIGINATED)
    assert wire.feed(struct.pack(">L", len(cut)) + cut[4:]) == resp_error(8, codec.ESME_RINVMSGLEN)
    assert metric(MOBILE_ORIGINATED) == before
    assert wire.outbox.calls == []


@pytest.mark.parametrize("length", [17, 20, 30, 39, 40])
def test_truncated_mandatory_parameters_are_refused_invcmdlen(wire: Wire, length: int) -> None:
    cut = deliver_sm(9, b"id:1 stat:DELIVRD")[:length]
    before = metric(MOBILE_ORIGINATED)
    assert wire.feed(struct.pack(">L", length) + cut[4:]) == resp_error(9, codec.ESME_RINVCMDLEN)
    assert metric(MOBILE_ORIGINATED) == before


@pytest.mark.parametrize(
    "tlvs",
    [b"\x00", b"\x00\x1e\x00", tlv(RECEIPTED_MESSAGE_ID, b"2329\x00")[:-2], tlv(MESSAGE_STATE, b"\x02\x00")],
    ids=["one-octet", "three-octets", "value-cut", "int-tlv-wrong-length"],
)
def test_broken_tlvs_are_refused_invoptparstream(wire: Wire, tlvs: bytes) -> None:
    assert wire.feed(deliver_sm(10, b"id:1 stat:DELIVRD", tlvs=tlvs)) == resp_error(
        10, codec.ESME_RINVOPTPARSTREAM
    )
    assert wire.outbox.calls == []


def test_a_good_receipt_at_a_tlv_boundary_is_still_used(wire: Wire) -> None:
    sms = wire.outbox.queue()
    wire.outbox.claim("w", 1, 40.0)
    wire.outbox.mark_submitted("w", sms.sms_id, ["2329"], "edge", 0)
    answer = wire.feed(
        deliver_sm(11, b"id:00002329 stat:DELIVRD", tlvs=tlv(RECEIPTED_MESSAGE_ID, b"00002329\x00"))
    )
    assert answer == resp_ok(11)
    assert wire.outbox.records[sms.sms_id].state == "delivered"


def test_a_receipt_the_database_cannot_record_asks_for_redelivery(wire: Wire) -> None:
    wire.outbox.down.add("apply_receipt")
    assert wire.feed(deliver_sm(12, b"id:2329 stat:DELIVRD")) == resp_error(12, codec.ESME_RX_T_APPN)


def test_an_undecodable_response_is_not_answered(wire: Wire) -> None:
    submit_sm_resp = struct.pack(">LLLL", 20, 0x80000004, 0, 13) + b"2329"  # message_id without its NUL
    assert wire.feed(submit_sm_resp) == b""


def test_an_unknown_command_still_gets_generic_nack(wire: Wire) -> None:
    assert wire.feed(struct.pack(">LLLL", 16, 0x77, 0, 14)) == codec.generic_nack(14, codec.ESME_RINVCMDID)


def test_mobile_originated_source_with_control_bytes_is_logged_escaped(wire: Wire) -> None:
    data = bytearray(deliver_sm(15, b"hello", esm_class=0))
    data[20:31] = b"\x1b[31m\r\nEVIL"  # source_addr, same length
    assert wire.feed(bytes(data)) == resp_ok(15)
    assert all("\x1b" not in str(e.get("source", "")) for e in wire.events)
    assert any("\\x1b" in str(e.get("source", "")) for e in wire.events)
