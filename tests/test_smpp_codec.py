"""The sans-I/O SMPP framer/codec, fed the bytes of the recorded node-smpp transcripts."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from idtronic_tel.smpp import codec

# PDUs from tests/recorded/smpp-node-session.txt, both directions.
TRANSCRIPT = [
    bytes.fromhex(h)
    for h in (
        "000000210000000900000000000000027465737400736563726574000034000000",
        "000000198000000900000000000000024e4f4445534d534300",
        "00000010000000150000000000000003",
        "00000010800000150000000000000003",
        "0000003e000000040000000000000004000500544553545352430001013333363131323233333434"
        "000000000000010000000b636f646520303030303030",
        "00000019800000040000000000000004303030303233323900",
        "000000b4000000050000000000000001000101333336313132323333343400050054455354535243"
        "000400000000000001006f69643a3030303032333239207375623a30303120646c7672643a303031"
        "207375626d697420646174653a3236313132363136303320646f6e6520646174653a323631313236"
        "3136303320737461743a44454c49565244206572723a30303020746578743a636f64652030303030"
        "3030001e00093030303032333239000427000102",
        "0000001180000005000000000000000100",
        "00000010000000060000000000000008",
        "00000010800000060000000000000008",
    )
]
STREAM = b"".join(TRANSCRIPT)
EXPECTED = [
    ("bind_transceiver", 2),
    ("bind_transceiver_resp", 2),
    ("enquire_link", 3),
    ("enquire_link_resp", 3),
    ("submit_sm", 4),
    ("submit_sm_resp", 4),
    ("deliver_sm", 1),
    ("deliver_sm_resp", 1),
    ("unbind", 8),
    ("unbind_resp", 8),
]


def summary(events: list[codec.Event]) -> list[tuple[str, int]]:
    out = []
    for event in events:
        assert isinstance(event, codec.Pdu), event
        out.append((event.command, event.sequence))
    return out


def test_transcript_decodes() -> None:
    events = codec.SmppCodec().receive_data(STREAM)
    assert summary(events) == EXPECTED
    receipt = events[6]
    assert isinstance(receipt, codec.Pdu)
    assert receipt.body.receipted_message_id == b"00002329"
    assert receipt.body.message_state == 2
    resp = events[5]
    assert isinstance(resp, codec.Pdu) and resp.body.message_id == b"00002329"


def test_every_split_point_of_every_pdu() -> None:
    for pdu in TRANSCRIPT:
        whole = codec.SmppCodec().receive_data(pdu)
        for cut in range(len(pdu) + 1):
            framer = codec.SmppCodec()
            events = framer.receive_data(pdu[:cut]) + framer.receive_data(pdu[cut:])
            assert summary(events) == summary(whole)
            assert framer.buffered == 0


def test_byte_by_byte() -> None:
    framer = codec.SmppCodec()
    events: list[codec.Event] = []
    for i in range(len(STREAM)):
        events += framer.receive_data(STREAM[i : i + 1])
    assert summary(events) == EXPECTED


def test_encode_matches_transcript() -> None:
    assert TRANSCRIPT[0] == codec.encode(
        "bind_transceiver",
        2,
        system_id="test",
        password="secret",
        system_type="",
        addr_ton=0,
        addr_npi=0,
        address_range="",
    )
    assert TRANSCRIPT[4] == codec.encode(
        "submit_sm",
        4,
        service_type="",
        source_addr_ton=5,
        source_addr_npi=0,
        source_addr="TESTSRC",
        dest_addr_ton=1,
        dest_addr_npi=1,
        destination_addr="33611223344",
        registered_delivery=1,
        short_message=b"code 000000",
    )
    assert TRANSCRIPT[7] == codec.encode("deliver_sm_resp", 1, message_id="")
    assert TRANSCRIPT[8] == codec.encode_header_only(0x00000006, 8)


def test_too_short_length_is_fatal() -> None:
    framer = codec.SmppCodec()
    events = framer.receive_data(struct.pack(">LLLL", 8, 0x15, 0, 1))
    assert len(events) == 1 and isinstance(events[0], codec.Fatal)
    assert framer.failed
    assert framer.receive_data(TRANSCRIPT[2]) == []  # nothing after Fatal


def test_too_long_length_is_fatal_before_buffering_it() -> None:
    framer = codec.SmppCodec(max_length=65536)
    events = framer.receive_data(struct.pack(">L", 100_000_000) + b"\0" * 12)
    assert isinstance(events[-1], codec.Fatal)
    assert framer.buffered == 0


def test_garbage_is_fatal() -> None:
    events = codec.SmppCodec().receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert isinstance(events[-1], codec.Fatal)


def test_unknown_command_is_nacked_invcmdid() -> None:
    events = codec.SmppCodec().receive_data(bytes.fromhex("00000010000000770000000000000009"))
    assert events == [codec.Undecodable(0x77, 9, codec.ESME_RINVCMDID, "unknown command_id 0x00000077")]
    assert codec.generic_nack(9, codec.ESME_RINVCMDID) == bytes.fromhex("00000010800000000000000300000009")


def test_undecodable_bodies_are_refused_with_their_own_response() -> None:
    body = TRANSCRIPT[4][16:] + b"\x04"  # a truncated TLV header after the message
    pdu = struct.pack(">LLLL", 16 + len(body), 4, 0, 7) + body
    (event,) = codec.SmppCodec().receive_data(pdu)
    assert isinstance(event, codec.Undecodable)
    assert (event.sequence, event.status) == (7, codec.ESME_RINVOPTPARSTREAM)
    assert codec.error_response(event) == bytes.fromhex("0000001080000004000000c000000007")
    cut = TRANSCRIPT[4][:30]  # submit_sm cut inside source_addr
    (event,) = codec.SmppCodec().receive_data(struct.pack(">L", 30) + cut[4:])
    assert isinstance(event, codec.Undecodable) and event.status == codec.ESME_RINVCMDLEN
    assert codec.error_response(event) == codec.encode_header_only(0x80000004, event.sequence, 2)
    response = struct.pack(">LLLL", 20, 0x80000004, 0, 9) + b"2329"  # message_id without its NUL
    (event,) = codec.SmppCodec().receive_data(response)
    assert isinstance(event, codec.Undecodable) and codec.error_response(event) is None


def test_repeated_undecodable_pdus_are_fatal_and_a_good_pdu_resets_the_count() -> None:
    unknown = bytes.fromhex("00000010000000770000000000000009")
    framer = codec.SmppCodec(max_consecutive_errors=3)
    events = framer.receive_data(unknown * 2 + TRANSCRIPT[2] + unknown * 2)
    assert not any(isinstance(e, codec.Fatal) for e in events)
    events = framer.receive_data(unknown)
    assert isinstance(events[-1], codec.Fatal)


def test_a_burst_is_linear() -> None:
    # 60,000 PDUs (~1 MB) in one read, then the rest of a partial PDU. A framer that copied the remaining
    # buffer once per PDU would move ~30 GB here and never finish; this one compacts every 64 KiB.
    framer = codec.SmppCodec()
    burst = TRANSCRIPT[2] * 60_000 + TRANSCRIPT[4][:10]
    events = framer.receive_data(burst)
    assert len(events) == 60_000
    assert framer.buffered == 10
    assert len(framer._buffer) < 2 * 65536 + len(burst) - 60_000 * 16 + 16
    (last,) = framer.receive_data(TRANSCRIPT[4][10:])
    assert isinstance(last, codec.Pdu) and last.command == "submit_sm"
    assert framer.buffered == 0


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=20))
def test_any_chunking_gives_the_same_pdus(cuts: list[int]) -> None:
    framer = codec.SmppCodec()
    events: list[codec.Event] = []
    start = 0
    for cut in sorted(cuts):
        events += framer.receive_data(STREAM[start:cut])
        start = cut
    events += framer.receive_data(STREAM[start:])
    assert summary(events) == EXPECTED


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=600), st.integers(min_value=1, max_value=64))
def test_fuzzed_input_never_raises(data: bytes, chunk: int) -> None:
    framer = codec.SmppCodec(max_length=4096)
    for i in range(0, len(data), chunk):
        for event in framer.receive_data(data[i : i + chunk]):
            assert isinstance(event, codec.Pdu | codec.Undecodable | codec.Fatal)
    assert framer.buffered <= 4096


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(TRANSCRIPT),
    st.integers(min_value=16, max_value=200),
    st.binary(min_size=0, max_size=200),
)
def test_fuzzed_bodies_behind_valid_headers(pdu: bytes, length: int, body: bytes) -> None:
    # A plausible header with a random body: decoded or refused, never an exception.
    raw = struct.pack(">L", length) + pdu[4:16] + body
    framer = codec.SmppCodec()
    events = framer.receive_data(raw)
    for event in events:
        assert isinstance(event, codec.Pdu | codec.Undecodable | codec.Fatal)
