"""Encoding SMPP 3.4 PDUs, sans I/O: smpplib generates the bodies (but for the plain submit_sm), we set
the header.

String fields are `str` (smpplib's convention), short_message is bytes.
"""

from __future__ import annotations

from typing import Any, Final

from smpplib import smpp as smpplib_smpp

from .commands import ESME_ROK, GENERIC_NACK, HEADER, HEADER_LENGTH, NO_SEQUENCE


def encode(command: str, sequence: int, status: int = ESME_ROK, **fields: Any) -> bytes:
    """Build one PDU."""
    pdu = smpplib_smpp.make_pdu(command, client=NO_SEQUENCE, **fields)
    pdu.sequence = sequence
    pdu.status = status
    result: bytes = pdu.generate()
    return result


# submit_sm, the PDU we send most, laid out here for the plain case rather than by smpplib's generic
# generator (a hasattr, a dict lookup and a struct format per field: ~8 µs even with the fields of a bind
# generated once): the mandatory fields only (we set no TLV on submit_sm), C-strings as `str` (or
# empty), integers of one octet (or None), short_message as bytes of at most 255 octets. Anything else
# goes to encode().
# The rules are smpplib's, and so are the bytes (tests/test_smpp_fastpath.py compares them):
# * a C-string longer than its maximum is cut to the maximum less one, then NUL-terminated, latin-1;
#   an empty or None one is a lone NUL;
# * an integer that is 0 or None is a NUL octet;
# * sm_length is the length of short_message, which is omitted when empty.
_SUBMIT_SM: Final = 0x00000004
_SUBMIT_SM_FIELDS: Final = frozenset(
    (
        "service_type",
        "source_addr_ton",
        "source_addr_npi",
        "source_addr",
        "dest_addr_ton",
        "dest_addr_npi",
        "destination_addr",
        "esm_class",
        "protocol_id",
        "priority_flag",
        "schedule_delivery_time",
        "validity_period",
        "registered_delivery",
        "replace_if_present_flag",
        "data_coding",
        "sm_default_msg_id",
        "sm_length",
        "short_message",
    )
)


def _c_string(value: object, maximum: int) -> bytes:
    if not value:
        return b"\0"
    if type(value) is not str:
        raise TypeError("not a str")
    return (value[: maximum - 1] + "\0").encode("latin-1")  # UnicodeEncodeError (a ValueError) beyond


def encode_submit_sm(sequence: int, fields: dict[str, Any]) -> bytes:
    """encode("submit_sm", sequence, **fields), faster (see above)."""
    get = fields.get
    message = get("short_message") or b""
    if not _SUBMIT_SM_FIELDS.issuperset(fields) or type(message) is not bytes or len(message) > 255:
        return encode("submit_sm", sequence, **fields)
    try:
        # bytes() refuses what struct.pack(">B") refuses: None or 0 is a NUL octet, as in smpplib
        body = b"".join(
            (
                _c_string(get("service_type"), 6),
                bytes((get("source_addr_ton") or 0, get("source_addr_npi") or 0)),
                _c_string(get("source_addr"), 21),
                bytes((get("dest_addr_ton") or 0, get("dest_addr_npi") or 0)),
                _c_string(get("destination_addr"), 21),
                bytes((get("esm_class") or 0, get("protocol_id") or 0, get("priority_flag") or 0)),
                _c_string(get("schedule_delivery_time"), 17),
                _c_string(get("validity_period"), 17),
                bytes(
                    (
                        get("registered_delivery") or 0,
                        get("replace_if_present_flag") or 0,
                        get("data_coding") or 0,
                        get("sm_default_msg_id") or 0,
                        len(message),
                    )
                ),
                message,
            )
        )
    except (TypeError, ValueError):  # not the plain case: smpplib encodes it, or says what is wrong
        return encode("submit_sm", sequence, **fields)
    return HEADER.pack(HEADER_LENGTH + len(body), _SUBMIT_SM, ESME_ROK, sequence) + body


def encode_header_only(
    command_id: int, sequence: int, status: int = ESME_ROK, length: int = HEADER_LENGTH
) -> bytes:
    """A body-less PDU (generic_nack, enquire_link(_resp), unbind(_resp)); also any *_resp with an error
    status, which SMPP 3.4 §3.3 lets us send without a body. `length` > 16 when the caller appends one."""
    return HEADER.pack(length, command_id, status, sequence)


def generic_nack(sequence: int, status: int) -> bytes:
    return encode_header_only(GENERIC_NACK, sequence, status)
