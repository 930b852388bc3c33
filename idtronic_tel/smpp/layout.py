"""Checking a PDU body's layout before smpplib parses it, sans I/O.

smpplib's parser accepts a body that stops anywhere (the missing fields are left unset): a truncated
deliver_sm would pass for a message with esm_class 0. So codec.decode first walks the mandatory parameters
and the TLVs as smpplib describes them, and refuses a body that is cut short or overlong.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from .commands import ESME_RINVCMDLEN, ESME_RINVMSGLEN, ESME_RINVOPTPARSTREAM, TLV_NAMES

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
            for tag, name in TLV_NAMES.items()
            if name in body.params and body.params[name].type is int
        }
        return cls(tuple(steps), sizes)


_LAYOUTS: dict[str, _Layout] = {}


def layout_problem(name: str, body: Any, raw: bytes, pos: int) -> tuple[int, str] | None:
    """What is wrong with the layout of a body, as (status, reason); None when every mandatory parameter
    is whole and the TLVs fill the rest exactly."""
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
