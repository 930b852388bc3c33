"""Delivery receipts: text form, TLVs, id normalisation, state mapping, unknown ids, MO messages."""

from __future__ import annotations

from prometheus_client import REGISTRY

from idtronic_tel.core.ports import SmsState
from idtronic_tel.smpp import codec
from idtronic_tel.smpp.receipts import ReceiptHandler, normalise_id, parse_receipt
from tests.fakes_smpp import FakeOutbox

NODE_RECEIPT = bytes.fromhex(
    "000000b4000000050000000000000001000101333336313132323333343400050054455354535243"
    "000400000000000001006f69643a3030303032333239207375623a30303120646c7672643a303031"
    "207375626d697420646174653a3236313132363136303320646f6e6520646174653a323631313236"
    "3136303320737461743a44454c49565244206572723a30303020746578743a636f64652030303030"
    "3030001e00093030303032333239000427000102"
)


def deliver(text: bytes, esm_class: int = 0x04, **tlvs: object) -> codec.Pdu:
    raw = codec.encode(
        "deliver_sm",
        5,
        service_type="",
        source_addr_ton=1,
        source_addr_npi=1,
        source_addr="33611223344",
        dest_addr_ton=5,
        dest_addr_npi=0,
        destination_addr="IDTRONIC",
        esm_class=esm_class,
        data_coding=1,
        short_message=text,
        **tlvs,
    )
    (pdu,) = codec.SmppCodec().receive_data(raw)
    assert isinstance(pdu, codec.Pdu)
    return pdu


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_normalise_id() -> None:
    assert normalise_id(b"00002329\x00") == "2329"
    assert normalise_id("0000232a") == "232A"
    assert normalise_id(" 0 ") == "0"
    assert normalise_id("ABC") == "ABC"


def test_node_receipt() -> None:
    (pdu,) = codec.SmppCodec().receive_data(NODE_RECEIPT)
    assert isinstance(pdu, codec.Pdu)
    receipt = parse_receipt(pdu)
    assert receipt is not None
    assert (receipt.message_id, receipt.state, receipt.stat) == ("2329", SmsState.DELIVERED, "DELIVRD")


def test_text_only_receipts_map_states() -> None:
    cases = {
        "DELIVRD": SmsState.DELIVERED,
        "UNDELIV": SmsState.UNDELIVERABLE,
        "REJECTD": SmsState.UNDELIVERABLE,
        "DELETED": SmsState.UNDELIVERABLE,
        "EXPIRED": SmsState.EXPIRED,
        "ACCEPTD": None,
        "ENROUTE": None,
    }
    for stat, state in cases.items():
        receipt = parse_receipt(deliver(f"id:0A1b sub:001 dlvrd:000 stat:{stat} err:000 text:".encode()))
        assert receipt is not None
        assert (receipt.message_id, receipt.state) == ("A1B", state)


def test_message_state_tlv_wins() -> None:
    pdu = deliver(b"id:1 stat:DELIVRD", receipted_message_id="0001", message_state=5)
    receipt = parse_receipt(pdu)
    assert receipt is not None and receipt.state is SmsState.UNDELIVERABLE


def test_handler_applies_and_acknowledges() -> None:
    outbox = FakeOutbox()
    sms = outbox.queue()
    outbox.claim("w", 1, 40.0)
    outbox.mark_submitted("w", sms.sms_id, ["2329"], "smsc1", 0)
    (pdu,) = codec.SmppCodec().receive_data(NODE_RECEIPT)
    assert isinstance(pdu, codec.Pdu)
    status = ReceiptHandler(outbox, "t-apply")(pdu)
    assert status.result == codec.ESME_ROK
    assert outbox.records[sms.sms_id].state is SmsState.DELIVERED


def test_decimal_text_id_matched_as_hex() -> None:
    outbox = FakeOutbox()
    sms = outbox.queue()
    outbox.claim("w", 1, 40.0)
    outbox.mark_submitted("w", sms.sms_id, ["2329"], "smsc1", 0)  # 0x2329 == 9001
    ReceiptHandler(outbox, "t-dec")(deliver(b"id:9001 sub:001 dlvrd:001 stat:DELIVRD err:000"))
    assert outbox.records[sms.sms_id].state is SmsState.DELIVERED


def test_unknown_id_is_counted_not_raised() -> None:
    before = sample("idtronic_smpp_receipts_unknown_total", bind="t-unknown")
    status = ReceiptHandler(FakeOutbox(), "t-unknown")(deliver(b"id:FFFF stat:DELIVRD"))
    assert status.result == codec.ESME_ROK
    assert sample("idtronic_smpp_receipts_unknown_total", bind="t-unknown") == before + 1


def test_intermediate_receipt_is_ignored() -> None:
    outbox = FakeOutbox()
    ReceiptHandler(outbox, "t-int")(deliver(b"id:1 stat:ENROUTE"))
    assert not [c for c in outbox.calls if c[0] == "apply_receipt"]


def test_mobile_originated_is_acknowledged_and_not_logged() -> None:
    from twisted.logger import globalLogPublisher

    seen: list[dict[str, object]] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        before = sample("idtronic_smpp_mobile_originated_total", bind="t-mo")
        status = ReceiptHandler(FakeOutbox(), "t-mo")(deliver(b"secret 123456", esm_class=0))
    finally:
        globalLogPublisher.removeObserver(seen.append)
    assert status.result == codec.ESME_ROK
    assert sample("idtronic_smpp_mobile_originated_total", bind="t-mo") == before + 1
    assert seen and all("123456" not in repr(event) for event in seen)
