"""The SMPP fast paths (layout.parse_into for decoding, encoding.encode_submit_sm) against smpplib, the
reference: the same objects and the same bytes on many generated PDUs, and the same refusal of malformed
ones as the generic path (the layout check, then smpplib's parse)."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from smpplib import smpp as smpplib_smpp

from idtronic_tel.smpp import codec, encoding
from idtronic_tel.smpp.commands import COMMAND_NAMES, NO_SEQUENCE, RESPONSE_BIT, fresh_body
from idtronic_tel.smpp.layout import layout_problem, parse_into
from tests.test_smpp_receipts import NODE_RECEIPT

C_STRINGS = st.binary(max_size=24).map(lambda b: b.replace(b"\0", b"x"))
TLVS = st.sampled_from(
    [
        (0x001E, b"0000232A\0"),  # receipted_message_id
        (0x001E, b"7"),  # without its NUL: smpplib drops the last octet all the same
        (0x001E, b""),  # empty C-string TLV: generic path
        (0x0427, b"\x02"),  # message_state
        (0x0427, b"\x02\x00"),  # wrong size: refused
        (0x0424, b"id:1 stat:DELIVRD"),  # message_payload
        (0x0423, b"\x03\x00\x01"),  # network_error_code
        (0x0204, b"\x00\x07"),  # user_message_reference (2 octets)
        (0x1403, b"vendor"),  # a TLV smpplib does not know: generic path
        (0x0210, b"\x01"),  # sc_interface_version: known, not a deliver_sm parameter
    ]
)


def generic_decode(raw: bytes) -> tuple[str, Any]:
    """What codec.decode did before the fast path: the layout check, then smpplib's parse."""
    command_id = struct.unpack_from(">L", raw, 4)[0]
    name = COMMAND_NAMES[command_id]
    body = fresh_body(name)
    if not (command_id & RESPONSE_BIT and len(raw) == 16):
        problem = layout_problem(name, body, raw, 16)
        if problem is not None:
            return "refused", problem[0]
    try:
        body.parse(raw)
    except Exception as exc:
        return "error", type(exc).__name__
    return "pdu", vars(body)


def check_decode(raw: bytes) -> None:
    kind, expected = generic_decode(raw)
    event = codec.decode(raw)
    if kind == "pdu":
        assert isinstance(event, codec.Pdu)
        assert vars(event.body) == expected
        reference = smpplib_smpp.parse_pdu(raw, client=NO_SEQUENCE, allow_unknown_opt_params=True)
        assert {k: v for k, v in vars(event.body).items() if k != "mandatory_fields"} == vars(reference)
    else:
        assert isinstance(event, codec.Undecodable)
        if kind == "refused":
            assert event.status == expected
        else:
            assert event.reason.endswith(expected)


def with_length(raw: bytes) -> bytes:
    return struct.pack(">L", len(raw)) + raw[4:]


@settings(max_examples=400, deadline=None)
@given(
    command=st.sampled_from(["deliver_sm", "submit_sm", "data_sm"]),
    addresses=st.tuples(C_STRINGS, C_STRINGS, C_STRINGS),
    octets=st.lists(st.integers(0, 255), min_size=8, max_size=8),
    message=st.binary(max_size=200),
    tlvs=st.lists(TLVS, max_size=3),
    cut=st.one_of(st.none(), st.integers(16, 400)),
    sequence=st.integers(1, 0x7FFFFFFF),
)
def test_decode_matches_smpplib(
    command: str,
    addresses: tuple[bytes, bytes, bytes],
    octets: list[int],
    message: bytes,
    tlvs: list[tuple[int, bytes]],
    cut: int | None,
    sequence: int,
) -> None:
    service_type, source, destination = (a.decode("latin-1") for a in addresses)
    fields: dict[str, Any] = {
        "service_type": service_type[:5],
        "source_addr_ton": octets[0],
        "source_addr_npi": octets[1],
        "source_addr": source[:20],
        "dest_addr_ton": octets[2],
        "dest_addr_npi": octets[3],
        "destination_addr": destination[:20],
        "esm_class": octets[4],
        "registered_delivery": octets[5],
        "data_coding": octets[6],
    }
    if command != "data_sm":
        fields.update(protocol_id=octets[7], validity_period="000000000459000R", short_message=message)
    raw = codec.encode(command, sequence, **fields)
    raw += b"".join(struct.pack(">HH", tag, len(value)) + value for tag, value in tlvs)
    check_decode(with_length(raw if cut is None else raw[:cut]))


@settings(max_examples=200, deadline=None)
@given(
    command_id=st.sampled_from([0x80000004, 0x80000009, 0x80000005, 0x00000015, 0x80000015]),
    body=st.binary(max_size=40),
    status=st.sampled_from([0, 0x58]),
)
def test_responses_and_random_bodies_match_smpplib(command_id: int, body: bytes, status: int) -> None:
    check_decode(struct.pack(">LLLL", 16 + len(body), command_id, status, 7) + body)


def test_the_receipt_and_the_response_take_the_fast_path() -> None:
    for raw in (NODE_RECEIPT, codec.encode("submit_sm_resp", 9, message_id="0000232A")):
        name = COMMAND_NAMES[struct.unpack_from(">L", raw, 4)[0]]
        assert parse_into(name, fresh_body(name), raw, 16)
        check_decode(raw)


PLAIN_SUBMIT: dict[str, Any] = {
    "service_type": "",
    "source_addr_ton": 5,
    "source_addr_npi": 0,
    "source_addr": "IDTRONIC",
    "dest_addr_ton": 1,
    "dest_addr_npi": 1,
    "destination_addr": "33611223344",
    "esm_class": 0,
    "protocol_id": 0,
    "priority_flag": 0,
    "schedule_delivery_time": "",
    "validity_period": "000000000459000R",
    "registered_delivery": 1,
    "replace_if_present_flag": 0,
    "data_coding": 0,
    "sm_default_msg_id": 0,
    "short_message": b"code 483920",
}

TEXTS = st.one_of(st.none(), st.text(max_size=25), st.just("é" * 30), st.binary(max_size=3))
INTEGERS = st.one_of(st.none(), st.integers(-1, 300), st.booleans(), st.just(1.0))


def outcome(encode: Any, sequence: int, fields: dict[str, Any]) -> bytes | str:
    try:
        result: bytes = encode(sequence, fields)
        return result
    except Exception as exc:
        return type(exc).__name__


@settings(max_examples=500, deadline=None)
@given(
    changes=st.dictionaries(
        st.sampled_from(sorted(PLAIN_SUBMIT)),
        st.one_of(TEXTS, INTEGERS, st.binary(max_size=300)),
        max_size=6,
    ),
    dropped=st.sets(st.sampled_from(sorted(PLAIN_SUBMIT)), max_size=3),
    sequence=st.integers(1, 0x7FFFFFFF),
)
def test_submit_sm_encoder_matches_smpplib(changes: dict[str, Any], dropped: set[str], sequence: int) -> None:
    fields = {k: v for k, v in {**PLAIN_SUBMIT, **changes}.items() if k not in dropped}
    expected = outcome(lambda seq, f: codec.encode("submit_sm", seq, **f), sequence, fields)
    assert outcome(codec.encode_submit_sm, sequence, fields) == expected


def test_a_plain_submit_sm_is_not_generated_by_smpplib(monkeypatch: pytest.MonkeyPatch) -> None:
    expected = codec.encode("submit_sm", 3, **PLAIN_SUBMIT)

    def generic(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("generic path")

    monkeypatch.setattr(encoding, "encode", generic)
    assert codec.encode_submit_sm(3, PLAIN_SUBMIT) == expected
    long = {**PLAIN_SUBMIT, "short_message": b"x" * 255, "source_addr": "A" * 30}
    monkeypatch.undo()
    assert codec.encode_submit_sm(4, long) == codec.encode("submit_sm", 4, **long)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=60) | st.text(max_size=20))
def test_gsm_encoding_of_ascii_texts_matches_smpplib(text: str) -> None:
    from smpplib import gsm

    from idtronic_tel.smpp.messages import gsm_encode

    def encoded(encode: Any) -> bytes | None:
        try:
            result: bytes = encode(text)
            return result
        except UnicodeError:
            return None

    assert encoded(gsm_encode) == encoded(gsm.gsm_encode)
