"""The checks of single configuration values. Each field of config_schema names its check; a check
returns what is wrong with a value (the message says what is allowed), or None."""

from __future__ import annotations

import json
import re
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.internet.testing import MemoryReactor

Check = Callable[[Any], str | None]


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


@dataclass(frozen=True)
class Between:
    """low <= value <= high; the documentation writes the bounds `low..high`."""

    low: float
    high: float
    unit: str = ""
    why: str = ""

    def __call__(self, value: Any) -> str | None:
        if self.low <= value <= self.high:
            return None
        suffix = (f" {self.unit}" if self.unit else "") + (f" ({self.why})" if self.why else "")
        return f"must be between {_num(self.low)} and {_num(self.high)}{suffix}"

    @property
    def bounds(self) -> str:
        return f"{_num(self.low)}..{_num(self.high)}"


def between(low: float, high: float, unit: str = "", why: str = "") -> Between:
    return Between(low, high, unit, why)


def seconds(low: float, high: float, why: str = "") -> Between:
    return Between(low, high, "seconds", why)


MAX_WORKERS = 64


def workers(value: Any) -> str | None:
    if value == "auto" or (isinstance(value, int) and 1 <= value <= MAX_WORKERS):
        return None
    return f'must be "auto" (one per core) or an integer between 1 and {MAX_WORKERS}'


def positive_up_to(high: float, unit: str) -> Check:
    def check(value: Any) -> str | None:
        return None if 0 < value <= high else f"must be greater than 0 and at most {_num(high)} {unit}"

    return check


def one_of(*allowed: str) -> Check:
    def check(value: Any) -> str | None:
        return None if value in allowed else "must be one of " + ", ".join(json.dumps(a) for a in allowed)

    return check


def matches(pattern: str, what: str) -> Check:
    regex = re.compile(pattern)

    def check(value: Any) -> str | None:
        return None if regex.fullmatch(value) else f"must be {what}"

    return check


def header_text(allow_empty: bool = True) -> Check:
    """Text sent in an AMI header: no line breaks (they would inject headers)."""

    def check(value: Any) -> str | None:
        if not value and not allow_empty:
            return "must not be empty"
        return "must not contain line breaks" if "\r" in value or "\n" in value else None

    return check


def c_octet(max_len: int, allow_empty: bool = False) -> Check:
    """An SMPP C-Octet string: printable ASCII, at most max_len characters (SMPP 3.4 section 4.1)."""
    low = 0 if allow_empty else 1

    def check(value: Any) -> str | None:
        ok = low <= len(value) <= max_len and all(" " <= c <= "~" for c in value)
        return None if ok else f"must be {low} to {max_len} printable ASCII characters"

    return check


def secret(min_len: int) -> Check:
    def check(value: Any) -> str | None:
        if len(value) < min_len or any(c.isspace() for c in value):
            return f"must be at least {min_len} characters without spaces"
        return None

    return check


def template(required: frozenset[str], allowed: frozenset[str]) -> Check:
    """A str.format template: the required placeholders, and no others (no format specs)."""
    names = " ".join(f"{{{n}}}" for n in sorted(allowed)) or "none"

    def check(value: Any) -> str | None:
        try:
            parsed = list(string.Formatter().parse(value))
        except ValueError as exc:
            return f"is not a valid template ({exc}; write {{{{ and }}}} for literal braces)"
        found: set[str] = set()
        for _, field_name, spec, conversion in parsed:
            if field_name is None:
                continue
            if field_name not in allowed or spec or conversion:
                return f"has an unknown placeholder {{{field_name}...}}: allowed placeholders: {names}"
            found.add(field_name)
        missing = required - found
        return f"must contain {{{min(missing)}}} (allowed placeholders: {names})" if missing else None

    return check


_CHANNEL_PLACEHOLDERS = frozenset({"e164", "digits", "national"})


def callback_channel(value: Any) -> str | None:
    problem = template(frozenset(), _CHANNEL_PLACEHOLDERS)(value) or header_text(False)(value)
    if problem is None and not any(f"{{{p}}}" in value for p in _CHANNEL_PLACEHOLDERS):
        problem = "must contain one of {e164}, {digits}, {national}"
    if problem is None and not re.match(r"[A-Za-z0-9_]+/\S", value):
        problem = 'must be an Asterisk dial string "TECHNOLOGY/resource", e.g. "PJSIP/{national}@trunk"'
    return problem


_PREFIX = re.compile(r"(\d{1,8})(?:-(\d{1,8}))?")


def card_prefixes(value: Any) -> str | None:
    if not value:
        return "must list at least one accepted card prefix"
    for spec in value:
        match = _PREFIX.fullmatch(spec)
        low, high = (match[1], match[2] or match[1]) if match else ("", "")
        if not match or len(low) != len(high) or low > high:
            return (
                f'entry "{spec}" must be 1 to 8 digits ("4") or a range of two such numbers of equal '
                'length, low first ("2221-2720")'
            )
    return None


def region(value: Any) -> str | None:
    if value in phonenumbers.SUPPORTED_REGIONS:
        return None
    return 'must be a two-letter region code known to phonenumbers, in capitals, e.g. "FR"'


def calling_hours(value: Any) -> str | None:
    match = re.fullmatch(r"([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]|24):([0-5]\d)", value)
    problem = 'must be "HH:MM-HH:MM" (24-hour clock) with the start before the end, e.g. "08:00-21:00"'
    if not match or (match[3] == "24" and match[4] != "00"):
        return problem
    return None if (match[1], match[2]) < (match[3], match[4]) else problem


def timezone(value: Any) -> str | None:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        return 'must be an IANA time zone name known to zoneinfo, e.g. "Europe/Paris"'
    return None


def endpoint(kind: str, allow_empty: bool = False) -> Check:
    """Checks a Twisted endpoint string by building it on a MemoryReactor: nothing listens or connects."""
    parse = serverFromString if kind == "server" else clientFromString

    def check(value: Any) -> str | None:
        if allow_empty and value == "":
            return None
        try:
            endpoint = parse(MemoryReactor(), value)
        except OSError as exc:
            return f"file {exc.filename} not found or unreadable (for ssl:, set certKey= and privateKey=)"
        except Exception as exc:  # the parsers raise ValueError, TypeError, OpenSSL errors...
            return f"is not a valid Twisted {kind} endpoint string ({exc})"
        port = getattr(endpoint, "_port", None)  # TCP/SSL endpoints; best effort
        low = 0 if kind == "server" else 1
        if isinstance(port, int) and not low <= port <= 65535:
            return f"port {port} must be between {low} and 65535"
        return None

    return check
