"""Request bodies decoded safely: bounded nesting and number literals, and no text that cannot be stored,
shown or answered.

`json.loads` alone recurses once per nesting level (30,000 levels fit in 64 KiB: RecursionError), raises
ValueError on an integer literal over 4,300 digits (Python's int-from-string limit), accepts NaN and
Infinity, and returns lone surrogates ("\\ud800") that no UTF-8 encoder, database driver or JSON answer
takes. Here every such body is refused with the API's error (400, or 422 naming the field), and free text
(a payment's description, a notice, a reason) keeps its content with those characters escaped instead."""

from __future__ import annotations

import array
import itertools
import json
import math
import re
from typing import Any

from .errors import ApiError

MAX_DEPTH = 32  # every body of the API is one flat object
MAX_NUMBER_CHARS = 40  # amounts go up to 10**12; a longer literal is an attack or a mistake

# Fields whose text is shown back as written: a control character or lone surrogate in them is kept as
# the visible escape `\u0007` instead of refusing the whole request. Tab and line breaks stay as they are.
FREE_TEXT = frozenset({"description", "notice", "reason"})

_STRING = re.compile(rb'"[^"\\]*(?:\\[\s\S][^"\\]*)*"|"[\s\S]*')  # the second: unterminated, to the end
_NOT_BRACKETS = bytes(set(range(256)) - set(b"[]{}"))
_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")  # +1, +1, -1, -1 as signed bytes
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")  # control characters, lone surrogates
_UNSAFE_IN_FREE_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
UNSAFE_PROBLEM = "must not contain control characters or unpaired surrogates"


class _Refused(Exception):
    pass


def loads(raw: bytes) -> Any:
    """The body's JSON document, with its top-level text fields checked (see the module's text); raises
    ApiError otherwise."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError("invalid_json", "the body is not valid JSON: it must be UTF-8") from None
    if _too_deep(raw):
        raise ApiError("invalid_json", f"the body is not valid JSON or nests deeper than {MAX_DEPTH} levels")
    try:
        if text.startswith("\ufeff"):
            json.loads(text)  # raises json.loads's own error for a BOM, the message clients got before
        document = _DECODER.decode(text)
    except _Refused as exc:
        raise ApiError("invalid_json", f"the body is not valid JSON: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ApiError("invalid_json", f"the body is not valid JSON: {exc}") from None
    return _checked(document) if isinstance(document, dict) else document


def escape(text: str, unsafe: re.Pattern[str] = _UNSAFE_IN_FREE_TEXT) -> str:
    """Control characters and lone surrogates as visible `\\uXXXX` escapes (by default tab and line breaks
    are kept, as in free text)."""
    return unsafe.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _too_deep(raw: bytes) -> bool:
    """True when the brackets outside strings nest deeper than MAX_DEPTH. Linear and in C but for one
    addition per bracket: strings are removed by one regex pass, each bracket becomes +1 or -1 (a signed
    byte), and the running sum is the depth."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH:
        return False
    steps = _STRING.sub(b"", raw).translate(_STEPS, delete=_NOT_BRACKETS)
    return max(itertools.accumulate(array.array("b", steps)), default=0) > MAX_DEPTH  # all in strings: 0


def _integer(literal: str) -> int:
    if len(literal) > MAX_NUMBER_CHARS:
        raise _Refused(f"a number longer than {MAX_NUMBER_CHARS} characters")
    return int(literal)


def _decimal(literal: str) -> float:
    if len(literal) > MAX_NUMBER_CHARS:
        raise _Refused(f"a number longer than {MAX_NUMBER_CHARS} characters")
    value = float(literal)
    if not math.isfinite(value):
        raise _Refused("a number out of range")
    return value


def _constant(name: str) -> Any:
    raise _Refused(f"{name} is not JSON")


# json.loads makes a decoder per call when given hooks: one for all.
_DECODER = json.JSONDecoder(parse_int=_integer, parse_float=_decimal, parse_constant=_constant, strict=True)


def _checked(document: dict[str, Any]) -> dict[str, Any]:
    """Top-level fields: an unsafe name is an unknown field (400, shown escaped); an unsafe value is refused
    (422), or escaped in free text."""
    if any(_UNSAFE.search(name) for name in document):
        unsafe_names = sorted(escape(name, _UNSAFE) for name in document if _UNSAFE.search(name))
        raise ApiError("unknown_fields", "unknown fields: " + ", ".join(unsafe_names), fields=unsafe_names)
    problems: dict[str, str] = {}
    for name, value in document.items():
        if not isinstance(value, str):
            continue
        if name in FREE_TEXT:
            document[name] = escape(value)
        elif _UNSAFE.search(value):
            problems[name] = UNSAFE_PROBLEM
    if problems:
        raise ApiError("invalid_fields", "invalid fields: " + ", ".join(sorted(problems)), fields=problems)
    return document
