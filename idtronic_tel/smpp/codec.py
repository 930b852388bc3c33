"""SMPP 3.4 framing and PDU coding, sans I/O.

`SmppCodec.receive_data(bytes)` returns what the bytes held: decoded PDUs, PDUs to refuse with a
`generic_nack`, or a signal to close the connection. `encode(...)` turns a PDU into bytes. No reactor, no
transport: the Twisted protocols (protocol.py, the simulator) feed bytes in and write what comes out.

smpplib is used only as a PDU coder (its classes parse and generate bodies); its client and sockets are not.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Final

from smpplib import command_codes
from smpplib import consts as smpplib_consts
from smpplib import smpp as smpplib_smpp

HEADER_LENGTH: Final = 16
DEFAULT_MAX_LENGTH: Final = 64 * 1024
# Undecodable PDUs in a row before we stop talking to a peer that is clearly not speaking SMPP.
DEFAULT_MAX_CONSECUTIVE_ERRORS: Final = 5
# Compact the receive buffer once this many consumed bytes sit in front of it (amortised O(1) per byte).
_COMPACT_AT: Final = 64 * 1024

_HEADER = struct.Struct(">LLLL")

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


class _NoSequence:
    """smpplib asks a 'client' for the next sequence number when it builds a request; we always set the
    sequence ourselves, so this stand-in only keeps smpplib from touching its module-level default."""

    sequence = 0

    def next_sequence(self) -> int:
        return 0


_NO_SEQUENCE: Final = _NoSequence()


@dataclass(frozen=True, slots=True)
class Pdu:
    """One decoded PDU. `body` is the smpplib command object (its fields are attributes, strings as bytes)."""

    command: str  # smpplib's name, e.g. "submit_sm_resp"
    command_id: int
    status: int
    sequence: int
    body: Any

    @property
    def is_response(self) -> bool:
        return bool(self.command_id & RESPONSE_BIT)


@dataclass(frozen=True, slots=True)
class Undecodable:
    """A PDU that was framed but could not be decoded: answer it with `error_response(event)`."""

    command_id: int
    sequence: int
    # ESME_RINVCMDID (unknown command), ESME_RINVCMDLEN (a mandatory parameter cut short, or a body that
    # does not parse), ESME_RINVMSGLEN (short_message shorter than sm_length), ESME_RINVOPTPARSTREAM (a
    # TLV cut short or of the wrong length)
    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class Fatal:
    """The stream cannot be trusted any more (impossible length, repeated garbage): close the connection."""

    reason: str


Event = Pdu | Undecodable | Fatal


class SmppCodec:
    """Frames a byte stream into PDUs.

    `command_length` includes its own 4 bytes, so it must be at least 16 (the header) and at most
    `max_length`; anything else leaves no way to find the next PDU boundary, so it is Fatal. A framed PDU
    that does not decode is Undecodable (the caller answers generic_nack); `max_consecutive_errors` of
    those in a row are Fatal too. After Fatal, the codec ignores further input.
    """

    def __init__(
        self,
        max_length: int = DEFAULT_MAX_LENGTH,
        max_consecutive_errors: int = DEFAULT_MAX_CONSECUTIVE_ERRORS,
    ) -> None:
        if max_length < HEADER_LENGTH:
            raise ValueError(f"max_length must be at least {HEADER_LENGTH}")
        self.max_length = max_length
        self.max_consecutive_errors = max_consecutive_errors
        self._buffer = bytearray()
        self._offset = 0  # bytes of _buffer already consumed
        self._errors_in_a_row = 0
        self.failed = False

    @property
    def buffered(self) -> int:
        """Bytes received but not yet framed (for tests and metrics)."""
        return len(self._buffer) - self._offset

    def receive_data(self, data: bytes) -> list[Event]:
        if self.failed:
            return []
        buf = self._buffer
        buf += data
        events: list[Event] = []
        offset = self._offset
        end = len(buf)
        while end - offset >= 4:
            (length,) = struct.unpack_from(">L", buf, offset)
            if length < HEADER_LENGTH or length > self.max_length:
                events.append(
                    self._fail(f"command_length {length} outside {HEADER_LENGTH}..{self.max_length}")
                )
                break
            if end - offset < length:
                break
            raw = bytes(buf[offset : offset + length])
            offset += length
            event = decode(raw)
            if isinstance(event, Pdu):
                self._errors_in_a_row = 0
            else:
                self._errors_in_a_row += 1
            events.append(event)
            if self._errors_in_a_row >= self.max_consecutive_errors:
                events.append(self._fail(f"{self._errors_in_a_row} undecodable PDUs in a row"))
                break
        if self.failed:
            return events
        # Drop consumed bytes only now and then: deleting the front of a bytearray is a memmove, so doing
        # it per PDU would make a burst of small PDUs quadratic.
        if offset == end:
            buf.clear()
            offset = 0
        elif offset >= _COMPACT_AT:
            del buf[:offset]
            offset = 0
        self._offset = offset
        return events

    def _fail(self, reason: str) -> Fatal:
        self.failed = True
        self._buffer = bytearray()
        self._offset = 0
        return Fatal(reason)


# smpplib's get_command_name walks its table for every PDU; the reverse mapping, once.
_COMMAND_NAMES: Final[dict[int, str]] = {code: name for name, code in command_codes.commands.items()}
_TLV_NAMES: Final[dict[int, str]] = {tag: name for name, tag in smpplib_consts.OPTIONAL_PARAMS.items()}
# Requests that take no response (SMPP 3.4 §4.12): an undecodable one is not answered either.
NO_RESPONSE_COMMANDS: Final = frozenset({"alert_notification", "outbind"})


def decode(raw: bytes) -> Pdu | Undecodable:
    """Decode one whole PDU (header included). Never raises on malformed input."""
    _length, command_id, status, sequence = _HEADER.unpack_from(raw)
    name = _COMMAND_NAMES.get(command_id)
    if name is None:
        return Undecodable(command_id, sequence, ESME_RINVCMDID, f"unknown command_id 0x{command_id:08x}")
    try:
        body = _fresh_body(name)
        # SMPP 3.4 §3.3: a response with an error status may come without its body (and some SMSCs
        # drop the body of an OK one too: its message_id is then empty, as before).
        if not command_id & RESPONSE_BIT or len(raw) > HEADER_LENGTH:
            problem = _layout_problem(name, body, raw, HEADER_LENGTH)
            if problem is not None:
                return Undecodable(command_id, sequence, problem[0], f"{name}: {problem[1]}")
        body.parse(raw)
    except Exception as exc:
        # smpplib raises a variety of things on truncated or inconsistent bodies (struct.error, KeyError,
        # its own errors, NotImplementedError for commands it names but cannot build): all mean "refuse".
        status_for = ESME_RINVCMDID if _is_unsupported(exc) else ESME_RINVCMDLEN
        return Undecodable(command_id, sequence, status_for, f"{name}: {type(exc).__name__}")
    return Pdu(name, command_id, status, sequence, body)


_INT, _LENGTH, _CSTRING, _OCTETS = 0, 1, 2, 3  # _LENGTH: a one-octet integer an octet string's length is in


@dataclass(frozen=True, slots=True)
class _Layout:
    """A command's body as smpplib describes it, read once: its mandatory parameters in order (name,
    kind, size of an integer, the earlier parameter holding an octet string's length) and the size of
    each integer TLV it knows."""

    steps: tuple[tuple[str, int, int, str], ...]
    tlv_sizes: dict[int, int]

    @classmethod
    def of(cls, body: Any) -> _Layout:
        steps = []
        mandatory = [name for name in body.params_order if name in body.mandatory_fields]
        length_fields = {getattr(body.params[name], "len_field", None) for name in mandatory}
        for name in mandatory:
            param = body.params[name]
            if param.type is int:
                steps.append((name, _LENGTH if name in length_fields else _INT, param.size, ""))
            elif param.type is str:
                steps.append((name, _CSTRING, 0, ""))
            else:
                steps.append((name, _OCTETS, 0, param.len_field))
        sizes = {
            tag: body.params[name].size
            for tag, name in _TLV_NAMES.items()
            if name in body.params and body.params[name].type is int
        }
        return cls(tuple(steps), sizes)


_LAYOUTS: dict[str, _Layout] = {}


def _layout_problem(name: str, body: Any, raw: bytes, pos: int) -> tuple[int, str] | None:
    """What is wrong with the layout of a body, as (status, reason); None when every mandatory parameter
    is whole and the TLVs fill the rest exactly. smpplib's parser accepts a body that stops anywhere (the
    missing fields are left unset): a truncated deliver_sm would pass for a message with esm_class 0."""
    layout = _LAYOUTS.get(name)
    if layout is None:
        layout = _LAYOUTS[name] = _Layout.of(body)
    end = len(raw)
    lengths: dict[str, int] = {}
    for field, kind, size, len_field in layout.steps:
        if kind <= _LENGTH:
            if pos + size > end:
                return ESME_RINVCMDLEN, f"{field} cut short"
            if kind == _LENGTH:
                lengths[field] = int.from_bytes(raw[pos : pos + size])
            pos += size
        elif kind == _CSTRING:  # C-Octet String: up to and with its NUL
            nul = raw.find(b"\0", pos)
            if nul < 0:
                return ESME_RINVCMDLEN, f"{field} without its NUL"
            pos = nul + 1
        else:  # Octet String, its length in an earlier (one-octet) parameter
            length = lengths.get(len_field, 0)
            if pos + length > end:
                return ESME_RINVMSGLEN, f"{field} shorter than {len_field}={length}"
            pos += length
    while pos < end:
        if end - pos < 4:
            return ESME_RINVOPTPARSTREAM, "TLV header cut short"
        tag, length = struct.unpack_from(">HH", raw, pos)
        pos += 4 + length
        if pos > end:
            return ESME_RINVOPTPARSTREAM, f"TLV 0x{tag:04x} cut short"
        expected = layout.tlv_sizes.get(tag)
        if expected is not None and length != expected:
            # smpplib would read `expected` octets and lose its place in the stream
            return ESME_RINVOPTPARSTREAM, f"TLV 0x{tag:04x} of length {length}, not {expected}"
    return None


def error_response(event: Undecodable) -> bytes | None:
    """The answer to an undecodable PDU: generic_nack for an unknown command (SMPP 3.4 §2.3); for a known
    request, its own response with the error status (§3.3: without a body); nothing for a response or a
    command that takes none (its requester's timeout deals with it)."""
    if event.status == ESME_RINVCMDID and event.command_id not in _COMMAND_NAMES:
        return generic_nack(event.sequence, event.status)
    if event.command_id & RESPONSE_BIT or _COMMAND_NAMES.get(event.command_id) in NO_RESPONSE_COMMANDS:
        return None
    return encode_header_only(event.command_id | RESPONSE_BIT, event.sequence, event.status)


def _declare_mandatory_fields(pdu: Any) -> None:
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


def _fresh_body(name: str) -> Any:
    blank = _BLANK_BODIES.get(name)
    if blank is None:
        template = smpplib_smpp.make_pdu(name, client=_NO_SEQUENCE, allow_unknown_opt_params=True)
        _declare_mandatory_fields(template)
        blank = (type(template), dict(vars(template)))
        _BLANK_BODIES[name] = blank
    cls, attributes = blank
    body: Any = object.__new__(cls)
    body.__dict__.update(attributes)
    return body


def _is_unsupported(exc: Exception) -> bool:
    # smpplib's factory knows fewer commands than its code table (e.g. outbind, submit_multi).
    return type(exc).__name__ == "UnknownCommandError" and "not supported" in str(exc)


def encode(command: str, sequence: int, status: int = ESME_ROK, **fields: Any) -> bytes:
    """Build one PDU. String fields are `str` (smpplib's convention), short_message is bytes."""
    pdu = smpplib_smpp.make_pdu(command, client=_NO_SEQUENCE, **fields)
    pdu.sequence = sequence
    pdu.status = status
    result: bytes = pdu.generate()
    return result


# submit_sm, the PDU we send most, generated by smpplib in two pieces: the fields a bind never changes
# (service_type, source ton/npi/address, destination ton/npi), generated once per bind, and the rest,
# generated per message by one reused smpplib object whose parameter order stops at the mandatory fields
# (we set no TLV on submit_sm). A fresh object per message walked its ~30 optional parameters and cost
# ~43 µs; this costs ~8 µs and gives the same bytes. Fields outside these two lists (TLVs) take encode().
_SUBMIT_SM_CONSTANT: Final = (
    "service_type",
    "source_addr_ton",
    "source_addr_npi",
    "source_addr",
    "dest_addr_ton",
    "dest_addr_npi",
)
_SUBMIT_SM_PER_MESSAGE: Final = (
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
_SUBMIT_SM_FIELDS: Final = frozenset(_SUBMIT_SM_CONSTANT + _SUBMIT_SM_PER_MESSAGE)
_SUBMIT_SM: Final = 0x00000004


class _SubmitSmEncoder:
    def __init__(self) -> None:
        self._prefixes: dict[tuple[Any, ...], bytes] = {}
        self._blank = vars(smpplib_smpp.make_pdu("submit_sm", client=_NO_SEQUENCE)).copy()
        self._suffix = self._smpplib_object(_SUBMIT_SM_PER_MESSAGE)

    def _smpplib_object(self, order: tuple[str, ...]) -> Any:
        pdu = smpplib_smpp.make_pdu("submit_sm", client=_NO_SEQUENCE)
        _declare_mandatory_fields(pdu)
        pdu.params_order = order
        return pdu

    def encode(self, sequence: int, fields: dict[str, Any]) -> bytes:
        if not _SUBMIT_SM_FIELDS.issuperset(fields):
            return encode("submit_sm", sequence, **fields)
        get = fields.get
        key = (
            get("service_type"),
            get("source_addr_ton"),
            get("source_addr_npi"),
            get("source_addr"),
            get("dest_addr_ton"),
            get("dest_addr_npi"),
        )
        prefix = self._prefixes.get(key)
        if prefix is None:
            head = self._smpplib_object(_SUBMIT_SM_CONSTANT)
            for name in _SUBMIT_SM_CONSTANT:
                if name in fields:
                    setattr(head, name, fields[name])
            prefix = head.generate_params()
            if len(self._prefixes) >= 64:  # one per bind in practice
                self._prefixes.clear()
            self._prefixes[key] = prefix
        suffix = self._suffix
        attributes = suffix.__dict__  # none of these fields is a property: plain attributes
        attributes.update(self._blank)
        attributes.update(fields)  # the constant fields too: not in the suffix's params_order
        body: bytes = prefix + suffix.generate_params()
        suffix.short_message = None  # do not keep a message (and its token) alive
        return _HEADER.pack(HEADER_LENGTH + len(body), _SUBMIT_SM, ESME_ROK, sequence) + body


_submit_sm_encoder = _SubmitSmEncoder()


def encode_submit_sm(sequence: int, fields: dict[str, Any]) -> bytes:
    """encode("submit_sm", sequence, **fields), faster (see _SubmitSmEncoder)."""
    return _submit_sm_encoder.encode(sequence, fields)


def encode_header_only(
    command_id: int, sequence: int, status: int = ESME_ROK, length: int = HEADER_LENGTH
) -> bytes:
    """A body-less PDU (generic_nack, enquire_link(_resp), unbind(_resp)); also any *_resp with an error
    status, which SMPP 3.4 §3.3 lets us send without a body. `length` > 16 when the caller appends one."""
    return _HEADER.pack(length, command_id, status, sequence)


def generic_nack(sequence: int, status: int) -> bytes:
    return encode_header_only(GENERIC_NACK, sequence, status)


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
