"""SMPP 3.4 constants and smpplib used as a table of commands: the header layout, the command_status
values we produce or react to, and fresh smpplib command objects (codec.py decodes into them, encoding.py
generates from them). No reactor, no transport."""

from __future__ import annotations

import struct
from typing import Any, Final

from smpplib import command_codes
from smpplib import consts as smpplib_consts
from smpplib import smpp as smpplib_smpp

HEADER_LENGTH: Final = 16
HEADER: Final = struct.Struct(">LLLL")

# command_status values we produce or react to (SMPP 3.4 §5.1.3)
ESME_ROK: Final = 0x00000000
ESME_RINVMSGLEN: Final = 0x00000001
ESME_RINVCMDLEN: Final = 0x00000002
ESME_RINVCMDID: Final = 0x00000003
ESME_RINVBNDSTS: Final = 0x00000004
ESME_RALYBND: Final = 0x00000005
ESME_RSYSERR: Final = 0x00000008
ESME_RBINDFAIL: Final = 0x0000000D
ESME_RINVPASWD: Final = 0x0000000E
ESME_RINVSYSID: Final = 0x0000000F
ESME_RMSGQFUL: Final = 0x00000014
ESME_RTHROTTLED: Final = 0x00000058
ESME_RX_T_APPN: Final = 0x00000064
ESME_RINVOPTPARSTREAM: Final = 0x000000C0

GENERIC_NACK: Final = 0x80000000
RESPONSE_BIT: Final = 0x80000000

# smpplib's get_command_name walks its table for every PDU; the reverse mapping, once.
COMMAND_NAMES: Final[dict[int, str]] = {code: name for name, code in command_codes.commands.items()}
# Requests that take no response (SMPP 3.4 §4.12): an undecodable one is not answered either.
NO_RESPONSE_COMMANDS: Final = frozenset({"alert_notification", "outbind"})


class _NoSequence:
    """smpplib asks a 'client' for the next sequence number when it builds a request; we always set the
    sequence ourselves, so this stand-in only keeps smpplib from touching its module-level default."""

    sequence = 0

    def next_sequence(self) -> int:
        return 0


NO_SEQUENCE: Final = _NoSequence()


def declare_mandatory_fields(pdu: Any) -> None:
    """smpplib asks `field_is_optional(field)` for every field it parses or generates; without a
    `mandatory_fields` attribute the answer for a mandatory field costs a lookup in its TLV table and a
    call. Declaring the fields smpplib would find mandatory anyway (those of params_order that are not
    TLVs) makes that answer a set lookup and changes nothing else."""
    if not hasattr(pdu, "mandatory_fields"):
        pdu.mandatory_fields = frozenset(
            field for field in pdu.params_order if field not in smpplib_consts.OPTIONAL_PARAMS
        )


# smpplib's command classes set every one of their parameters in __init__ through a generic hasattr /
# getattr / setattr walk (~17 µs for a deliver_sm, more than parsing it). The state it leaves is the same
# every time, so it is captured once per command and copied into each new object; smpplib's own `parse`
# then fills it in, as smpplib.smpp.parse_pdu would.
_BLANK_BODIES: dict[str, tuple[Any, dict[str, Any]]] = {}


def fresh_body(name: str) -> Any:
    blank = _BLANK_BODIES.get(name)
    if blank is None:
        template = smpplib_smpp.make_pdu(name, client=NO_SEQUENCE, allow_unknown_opt_params=True)
        declare_mandatory_fields(template)
        blank = (type(template), dict(vars(template)))
        _BLANK_BODIES[name] = blank
    cls, attributes = blank
    body: Any = object.__new__(cls)
    body.__dict__.update(attributes)
    return body


def is_unsupported(exc: Exception) -> bool:
    # smpplib's factory knows fewer commands than its code table (e.g. outbind, submit_multi).
    return type(exc).__name__ == "UnknownCommandError" and "not supported" in str(exc)


def command_id_of(name: str) -> int:
    code: int = command_codes.get_command_code(name)
    return code


def as_text(value: object) -> str:
    """smpplib hands C-strings back as bytes (or None when absent)."""
    if value is None:
        return ""
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("latin-1")
    return str(value)
