"""A PDU body's layout as smpplib describes it, sans I/O: checking it, and parsing the plain case in one pass.

smpplib's parser accepts a body that stops anywhere (the missing fields are left unset): a truncated
deliver_sm would pass for a message with esm_class 0. So codec.decode refuses a body whose mandatory
parameters are cut short or whose TLVs do not fill the rest exactly (`layout_problem`).

`parse_into` does the check and smpplib's parse in one walk, for the plain case only: every mandatory
parameter whole, TLVs that smpplib knows for this command. smpplib's own walk is generic (a hasattr, a
dict lookup and a struct format per field: ~15 of the ~20 µs a delivery receipt cost); this one stores
exactly what smpplib's `parse` stores, in the same smpplib object (tests/test_smpp_fastpath.py compares
them). Anything else returns False and codec.decode takes the generic path, which says what is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from smpplib import consts as smpplib_consts
from smpplib.ptypes import ostr

from .commands import ESME_RINVCMDLEN, ESME_RINVMSGLEN, ESME_RINVOPTPARSTREAM

_INT, _CSTRING, _OCTETS = 0, 1, 2


@dataclass(frozen=True, slots=True)
class _Layout:
    """A command's body as smpplib describes it, read once: its mandatory parameters in order (name,
    kind, size of an integer, the earlier parameter holding an octet string's length), and per TLV tag
    that smpplib parses for this command (name, kind, size of an integer)."""

    steps: tuple[tuple[str, int, int, str], ...]
    tlvs: dict[int, tuple[str, int, int]]

    @classmethod
    def of(cls, body: Any) -> _Layout:
        params = body.params
        steps = []
        for name in body.params_order:
            if name not in body.mandatory_fields:
                continue
            param = params[name]
            if param.type is int:
                steps.append((name, _INT, param.size, ""))
            elif param.type is str:
                steps.append((name, _CSTRING, 0, ""))
            else:
                steps.append((name, _OCTETS, 0, param.len_field))
        tlvs: dict[int, tuple[str, int, int]] = {}
        for name, tag in smpplib_consts.OPTIONAL_PARAMS.items():
            param = params.get(name)
            if param is None or tag in tlvs:  # smpplib takes a tag's first name
                continue
            if param.type is int:
                tlvs[tag] = (name, _INT, param.size)
            elif param.type is str:
                tlvs[tag] = (name, _CSTRING, 0)
            elif param.type is ostr:
                tlvs[tag] = (name, _OCTETS, 0)
        return cls(tuple(steps), tlvs)


_LAYOUTS: dict[str, _Layout] = {}


def _layout(name: str, body: Any) -> _Layout:
    layout = _LAYOUTS.get(name)
    if layout is None:
        layout = _LAYOUTS[name] = _Layout.of(body)
    return layout


def layout_problem(name: str, body: Any, raw: bytes, pos: int) -> tuple[int, str] | None:
    """What is wrong with the layout of a body, as (status, reason); None when every mandatory parameter
    is whole and the TLVs fill the rest exactly."""
    layout = _layout(name, body)
    end = len(raw)
    lengths: dict[str, int] = {}
    for field, kind, size, len_field in layout.steps:
        if kind == _INT:
            if pos + size > end:
                return ESME_RINVCMDLEN, f"{field} cut short"
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
        tag = int.from_bytes(raw[pos : pos + 2])
        length = int.from_bytes(raw[pos + 2 : pos + 4])
        pos += 4 + length
        if pos > end:
            return ESME_RINVOPTPARSTREAM, f"TLV 0x{tag:04x} cut short"
        known = layout.tlvs.get(tag)
        if known is not None and known[1] == _INT and length != known[2]:
            # smpplib would read the integer's size in octets and lose its place in the stream
            return ESME_RINVOPTPARSTREAM, f"TLV 0x{tag:04x} of length {length}, not {known[2]}"
    return None


def parse_into(name: str, body: Any, raw: bytes, pos: int) -> bool:
    """Fill `body` (a blank smpplib object of command `name`) from the PDU `raw`, its body starting at
    `pos`, as smpplib's parse fills it. False when the body is not the plain case: `body` is then partly
    filled and must be thrown away."""
    layout = _layout(name, body)
    end = len(raw)
    values: dict[str, Any] = {}
    for field, kind, size, len_field in layout.steps:
        if pos == end:
            # smpplib stops at the end of the body: only empty octet strings may be left (it leaves them
            # unset)
            if kind != _OCTETS or values.get(len_field):
                return False
            continue
        if kind == _INT:
            if pos + size > end:
                return False
            values[field] = raw[pos] if size == 1 else int.from_bytes(raw[pos : pos + size])
            pos += size
        elif kind == _CSTRING:
            nul = raw.find(b"\0", pos)
            if nul < 0:
                return False
            values[field] = raw[pos:nul]
            pos = nul + 1
        else:
            length = values.get(len_field, 0)
            if pos + length > end:
                return False
            values[field] = raw[pos : pos + length]
            pos += length
    tlvs = layout.tlvs
    while pos < end:
        if end - pos < 4:
            return False
        known = tlvs.get((raw[pos] << 8) | raw[pos + 1])
        length = (raw[pos + 2] << 8) | raw[pos + 3]
        pos += 4
        if known is None or pos + length > end:
            return False  # cut short, or a TLV smpplib does not parse for this command (skips or refuses)
        field, kind, size = known
        if kind == _INT:
            if length != size:
                return False
            values[field] = int.from_bytes(raw[pos : pos + size])
        elif kind == _CSTRING:
            if length == 0:
                return False
            values[field] = raw[pos : pos + length - 1]  # smpplib drops the last octet (the NUL)
        else:
            values[field] = raw[pos : pos + length]
        pos += length
    body.__dict__.update(values)
    return True
