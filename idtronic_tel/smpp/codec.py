"""SMPP 3.4 framing and decoding, sans I/O; the package's one interface to the wire format.

`SmppCodec.receive_data(bytes)` returns what the bytes held: decoded PDUs, PDUs to refuse with a
`generic_nack`, or a signal to close the connection. `encode(...)` turns a PDU into bytes. No reactor, no
transport: the Twisted protocols (protocol.py, the simulator) feed bytes in and write what comes out.

smpplib is used only as a PDU coder (its classes parse and generate bodies); its client and sockets are not.
The constants (commands.py), the body-layout check (layout.py) and the encoders (encoding.py) live beside
this module; it re-exports what its callers use, so they import one module.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from .commands import (
    COMMAND_NAMES,
    ESME_RALYBND,
    ESME_RBINDFAIL,
    ESME_RINVBNDSTS,
    ESME_RINVCMDID,
    ESME_RINVCMDLEN,
    ESME_RINVMSGLEN,
    ESME_RINVOPTPARSTREAM,
    ESME_RINVPASWD,
    ESME_RINVSYSID,
    ESME_RMSGQFUL,
    ESME_ROK,
    ESME_RSYSERR,
    ESME_RTHROTTLED,
    ESME_RX_T_APPN,
    GENERIC_NACK,
    HEADER,
    HEADER_LENGTH,
    NO_RESPONSE_COMMANDS,
    RESPONSE_BIT,
    as_text,
    command_id_of,
    fresh_body,
    is_unsupported,
)
from .encoding import encode, encode_header_only, encode_submit_sm, generic_nack
from .layout import layout_problem, parse_into

__all__ = [
    "DEFAULT_MAX_LENGTH",
    "ESME_RALYBND",
    "ESME_RBINDFAIL",
    "ESME_RINVBNDSTS",
    "ESME_RINVCMDID",
    "ESME_RINVCMDLEN",
    "ESME_RINVMSGLEN",
    "ESME_RINVOPTPARSTREAM",
    "ESME_RINVPASWD",
    "ESME_RINVSYSID",
    "ESME_RMSGQFUL",
    "ESME_ROK",
    "ESME_RSYSERR",
    "ESME_RTHROTTLED",
    "ESME_RX_T_APPN",
    "GENERIC_NACK",
    "HEADER_LENGTH",
    "NO_RESPONSE_COMMANDS",
    "RESPONSE_BIT",
    "Event",
    "Fatal",
    "Pdu",
    "SmppCodec",
    "Undecodable",
    "as_text",
    "command_id_of",
    "decode",
    "encode",
    "encode_header_only",
    "encode_submit_sm",
    "error_response",
    "generic_nack",
]

DEFAULT_MAX_LENGTH: Final = 64 * 1024
# Undecodable PDUs in a row before we stop talking to a peer that is clearly not speaking SMPP.
DEFAULT_MAX_CONSECUTIVE_ERRORS: Final = 5
# Compact the receive buffer once this many consumed bytes sit in front of it (amortised O(1) per byte).
_COMPACT_AT: Final = 64 * 1024


class Pdu(NamedTuple):
    """One decoded PDU. `body` is the smpplib command object (its fields are attributes, strings as bytes).
    A NamedTuple: immutable like a frozen dataclass, built in a third of the time (two per message)."""

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


def decode(raw: bytes) -> Pdu | Undecodable:
    """Decode one whole PDU (header included). Never raises on malformed input."""
    length, command_id, status, sequence = HEADER.unpack_from(raw)
    name = COMMAND_NAMES.get(command_id)
    if name is None:
        return Undecodable(command_id, sequence, ESME_RINVCMDID, f"unknown command_id 0x{command_id:08x}")
    try:
        body = fresh_body(name)
        # SMPP 3.4 §3.3: a response with an error status may come without its body (and some SMSCs
        # drop the body of an OK one too: its message_id is then empty, as before).
        if command_id & RESPONSE_BIT and len(raw) == HEADER_LENGTH:
            body.parse(raw)
        elif parse_into(name, body, raw, HEADER_LENGTH):
            # what smpplib's parse sets from the header
            body.length, body.command, body.status, body.sequence = length, name, status, sequence
        else:  # not the plain case: the layout check says what is wrong, or smpplib parses the rest
            body = fresh_body(name)
            problem = layout_problem(name, body, raw, HEADER_LENGTH)
            if problem is not None:
                return Undecodable(command_id, sequence, problem[0], f"{name}: {problem[1]}")
            body.parse(raw)
    except Exception as exc:
        # smpplib raises a variety of things on truncated or inconsistent bodies (struct.error, KeyError,
        # its own errors, NotImplementedError for commands it names but cannot build): all mean "refuse".
        status_for = ESME_RINVCMDID if is_unsupported(exc) else ESME_RINVCMDLEN
        return Undecodable(command_id, sequence, status_for, f"{name}: {type(exc).__name__}")
    return Pdu(name, command_id, status, sequence, body)


def error_response(event: Undecodable) -> bytes | None:
    """The answer to an undecodable PDU: generic_nack for an unknown command (SMPP 3.4 §2.3); for a known
    request, its own response with the error status (§3.3: without a body); nothing for a response or a
    command that takes none (its requester's timeout deals with it)."""
    if event.status == ESME_RINVCMDID and event.command_id not in COMMAND_NAMES:
        return generic_nack(event.sequence, event.status)
    if event.command_id & RESPONSE_BIT or COMMAND_NAMES.get(event.command_id) in NO_RESPONSE_COMMANDS:
        return None
    return encode_header_only(event.command_id | RESPONSE_BIT, event.sequence, event.status)
