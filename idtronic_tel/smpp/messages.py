"""From an OutgoingSms to the fields of its submit_sm PDUs: coding, splitting, addresses, validity period.

GSM 7-bit (data_coding 0, one septet per octet as SMPP carries it) when every character is in the GSM
03.38 default alphabet or its extension table, UCS-2 (data_coding 8) otherwise. Longer texts are split
into parts carrying a concatenation UDH (esm_class 0x40). Encoding uses smpplib's GSM table; the split is
ours because smpplib's `make_parts` may cut a GSM escape pair or a UTF-16 surrogate pair in two, and
draws the UDH reference at random (ours comes from the message id, so tests are deterministic).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Final

from smpplib import gsm

DATA_CODING_GSM7: Final = 0x00
DATA_CODING_UCS2: Final = 0x08
ESM_CLASS_DEFAULT: Final = 0x00
ESM_CLASS_UDHI: Final = 0x40

# Octets of user data in one SMS: 160 septets for GSM 7-bit, 140 octets for UCS-2.
_GSM7_SINGLE: Final = 160
_UCS2_SINGLE: Final = 140
# With the 6-octet concatenation UDH: 153 septets (7 septets of UDH + padding) / 134 octets.
_GSM7_PART: Final = 153
_UCS2_PART: Final = 134
MAX_PARTS: Final = 255
_GSM_ESCAPE: Final = 0x1B


def _gsm_translation() -> dict[int, str]:
    """smpplib's GSM 03.38 table as a str.translate table (code point -> the octet(s) as latin-1), with
    gsm.gsm_encode's rules: a character's first position in the table, positions from 0x80 as an escape
    (0x1B) followed by the position minus 0x80. gsm_encode looks every character up with a linear
    `str.index` (~10 µs per message); this does the same in C."""
    table: dict[int, str] = {}
    for index, char in enumerate(gsm.GSM_CHARACTER_TABLE):
        if ord(char) not in table:
            table[ord(char)] = chr(index) if index < 0x80 else "\x1b" + chr(index - 0x80)
    return table


_GSM_TRANSLATION: Final = _gsm_translation()
_GSM_CHARACTERS: Final = frozenset(chr(code) for code in _GSM_TRANSLATION)
# The ASCII characters that are their own septet (letters, digits, space, most punctuation): a text made
# of them only, the usual case, is its ASCII encoding, found without a per-character lookup.
_GSM_AS_ASCII: Final = bytes(code for code in range(0x80) if _GSM_TRANSLATION.get(code) == chr(code))


def gsm_encode(text: str) -> bytes:
    """The same octets as smpplib's gsm.gsm_encode; UnicodeError when a character is not in its table."""
    if text.isascii():
        octets = text.encode("ascii")
        if not octets.translate(None, _GSM_AS_ASCII):  # nothing left once those characters are deleted
            return octets
    if not _GSM_CHARACTERS.issuperset(text):
        raise UnicodeError("not in the GSM 7-bit alphabet")
    return text.translate(_GSM_TRANSLATION).encode("latin-1")


@dataclass(frozen=True, slots=True)
class EncodedPart:
    short_message: bytes  # UDH included when esm_class has 0x40
    data_coding: int
    esm_class: int


def encode_text(text: str, reference: int) -> list[EncodedPart]:
    """Split `text` into the parts to submit, in order. `reference` is the concatenation reference
    (taken modulo 256); all parts of one message carry the same one."""
    try:
        encoded = gsm_encode(text)
        data_coding, single, part_size = DATA_CODING_GSM7, _GSM7_SINGLE, _GSM7_PART
    except UnicodeError:
        encoded = text.encode("utf-16-be")
        data_coding, single, part_size = DATA_CODING_UCS2, _UCS2_SINGLE, _UCS2_PART
    if len(encoded) <= single:
        return [EncodedPart(encoded, data_coding, ESM_CLASS_DEFAULT)]
    chunks = _split(encoded, part_size, data_coding)
    if len(chunks) > MAX_PARTS:
        raise ValueError(f"text needs {len(chunks)} parts, more than {MAX_PARTS}")
    ref = reference & 0xFF
    total = len(chunks)
    return [
        EncodedPart(bytes((0x05, 0x00, 0x03, ref, total, index)) + chunk, data_coding, ESM_CLASS_UDHI)
        for index, chunk in enumerate(chunks, start=1)
    ]


def _split(encoded: bytes, part_size: int, data_coding: int) -> list[bytes]:
    chunks: list[bytes] = []
    start = 0
    while start < len(encoded):
        end = min(start + part_size, len(encoded))
        if end < len(encoded):
            if data_coding == DATA_CODING_GSM7:
                # Never end a part on the escape octet of a two-septet extension character (€, [, ...).
                escapes = 0
                i = end - 1
                while i >= start and encoded[i] == _GSM_ESCAPE:
                    escapes += 1
                    i -= 1
                if escapes % 2 == 1:
                    end -= 1
            elif 0xD8 <= encoded[end - 2] <= 0xDB:
                # UTF-16: a high surrogate must stay with its low surrogate.
                end -= 2
        chunks.append(encoded[start:end])
        start = end
    return chunks


def destination_address(e164: str) -> str:
    """International number without '+', as SMPP wants it with TON 1 / NPI 1."""
    digits = e164[1:] if e164.startswith("+") else e164
    if not digits.isdigit() or not 1 <= len(digits) <= 15:
        raise ValueError("destination is not an E.164 number")
    return digits


def relative_validity(now: datetime, expires_at: datetime) -> str | None:
    """SMPP relative time `YYMMDDhhmmss000R` for the time left, whole seconds rounded down.

    None when less than one second is left: such a message must not leave (it would arrive expired).
    """
    return validity_for((expires_at - now).total_seconds())


_VALIDITY_CACHE: dict[int, str] = {}


def validity_for(seconds_left: float) -> str | None:
    """relative_validity for a number of seconds left (the same string for every message of one second:
    formatted once)."""
    left = int(seconds_left)
    if left < 1:
        return None
    cached = _VALIDITY_CACHE.get(left)
    if cached is not None:
        return cached
    if len(_VALIDITY_CACHE) > 4096:
        _VALIDITY_CACHE.clear()
    _VALIDITY_CACHE[left] = text = _relative_time(left)
    return text


def _relative_time(left: int) -> str:
    days, rest = divmod(left, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days > 99:
        raise ValueError("validity longer than 99 days")
    # Years and months stay 0: a relative period is a sum of its fields, and days up to 99 are allowed.
    return f"0000{days:02d}{hours:02d}{minutes:02d}{seconds:02d}000R"
