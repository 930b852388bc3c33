"""Configuration loading: the TOML file, environment overrides, secrets from files, validation.

Precedence, highest first: `IDTRONIC_<SECTION>_<KEY>` environment variables (`IDTRONIC_SMPP_BIND_<n>_<KEY>`
for the n-th `[[smpp.bind]]`, n from 1), the TOML file, the defaults of config_schema. Setting a secret
from the environment (`IDTRONIC_AMI_SECRET`) replaces the file's `secret_file`, and the other way round.

Paths:
- the data directory is the `data_dir` argument, else `IDTRONIC_DATA_DIR`, else `./idtronic-data`;
- relative paths in the file or the environment (key and secret files, the SQLite database path) are
  resolved against the current working directory, and the resulting Config holds absolute paths;
- unset, `database.url` is `sqlite:///<data_dir>/idtronic.db`, `api.operator_key_file`
  `<data_dir>/operator.key`, `keys.data_key_file` / `keys.hmac_key_file` `<data_dir>/data.key` /
  `<data_dir>/hmac.key`; `prepare_data_dir` creates those on first start.

Key files (`data.key`, `hmac.key`) hold 32 random bytes, base64-encoded (what `prepare_data_dir` writes)
or as 64 hex digits. Key files must not be accessible by group or others (chmod 600); secret files
(`ami.secret_file`, `smpp.bind[].password_file`) may be group-readable (root:idtronic 0640) but not
world-readable. Secret values never appear in error messages.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import functools
import json
import os
import re
import secrets
import string
import tomllib
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NoReturn
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from sqlalchemy import make_url
from sqlalchemy.exc import ArgumentError
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.internet.testing import MemoryReactor

from .config_schema import (
    AgiConfig,
    AmiConfig,
    ApiConfig,
    BudgetConfig,
    CallbackConfig,
    Config,
    DatabaseConfig,
    DemoConfig,
    EnrollmentConfig,
    HttpConfig,
    KeysConfig,
    ProfileConfig,
    SmppBindConfig,
    SmppConfig,
    TokensConfig,
    VoiceFallbackConfig,
)

ENV_PREFIX = "IDTRONIC_"
ENV_CONFIG = "IDTRONIC_CONFIG"
ENV_DATA_DIR = "IDTRONIC_DATA_DIR"
DEFAULT_DATA_DIR = Path("idtronic-data")
OPERATOR_KEY_FILE = "operator.key"
DATA_KEY_FILE = "data.key"
HMAC_KEY_FILE = "hmac.key"
DATABASE_FILE = "idtronic.db"
KEY_BYTES = 32
OPERATOR_KEY_PREFIX = "idt_op_"


class ConfigError(Exception):
    """A configuration problem; the message names the key, what is wrong and what is allowed."""


# --- Schema: the TOML keys, derived from the dataclasses -------------------------------------------

_SECTIONS: dict[str, type[Any]] = {
    "http": HttpConfig,
    "database": DatabaseConfig,
    "api": ApiConfig,
    "keys": KeysConfig,
    "enrollment": EnrollmentConfig,
    "tokens": TokensConfig,
    "budget": BudgetConfig,
    "profile": ProfileConfig,
    "callback": CallbackConfig,
    "voice_fallback": VoiceFallbackConfig,
    "agi": AgiConfig,
    "ami": AmiConfig,
    "smpp": SmppConfig,
    "demo": DemoConfig,
}
_BIND = "smpp.bind"  # pseudo-section: one [[smpp.bind]] table
_SECRET_KEYS = {"api": "operator_key", "ami": "secret", _BIND: "password"}  # each has a `<key>_file` twin
_KEY_FILES = {"data_key_file": ("data_key", DATA_KEY_FILE), "hmac_key_file": ("hmac_key", HMAC_KEY_FILE)}
_HIDDEN = frozenset(_SECRET_KEYS.values())
_KINDS: dict[Any, str] = {str: "str", int: "int", float: "float", bool: "bool", tuple[str, ...]: "list"}


@functools.cache
def _keys(section: str) -> dict[str, str]:
    """The TOML keys of a section (or of one [[smpp.bind]] table) and their kinds."""
    cls = SmppBindConfig if section == _BIND else _SECTIONS[section]
    hints = typing.get_type_hints(cls)
    keys = {f.name: _KINDS[hints[f.name]] for f in fields(cls) if hints[f.name] in _KINDS}
    if section in _SECRET_KEYS:
        keys[_SECRET_KEYS[section] + "_file"] = "path"
    if section == "keys":
        keys |= dict.fromkeys(_KEY_FILES, "path")
    return keys


@functools.cache
def _env_names() -> dict[str, tuple[str, str]]:
    return {f"{ENV_PREFIX}{s}_{k}".upper(): (s, k) for s in _SECTIONS for k in _keys(s)}


_BIND_ENV = re.compile(r"IDTRONIC_SMPP_BIND_(\d+)_(\w+)")


# --- Messages -------------------------------------------------------------------------------------


def _name(section: str, key: str, index: int | None = None) -> str:
    return f"smpp.bind[{index + 1}].{key}" if index is not None else f"{section}.{key}"


def _show(key: str, value: Any) -> str:
    if key in _HIDDEN:
        return "(hidden)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if isinstance(value, str | tuple | list):
        return json.dumps(list(value) if isinstance(value, tuple) else value)
    return str(value)


def _hint(word: str, candidates: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


# --- Raw values: the file, then the environment ---------------------------------------------------


@dataclass
class _Raw:
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)
    binds: list[dict[str, Any]] = field(default_factory=list)
    origin: dict[str, str] = field(default_factory=dict)  # "tokens.lifetime" -> "IDTRONIC_TOKENS_LIFETIME"

    def table(self, section: str, index: int | None) -> dict[str, Any]:
        return self.binds[index] if index is not None else self.sections.setdefault(section, {})

    def fail(self, name: str, value: Any, problem: str) -> NoReturn:
        source = self.origin.get(name)
        where = f" (from {source})" if source else ""
        raise ConfigError(f"{name} = {_show(name.rsplit('.', 1)[-1], value)}{where}: {problem}")


_TYPE_PROBLEMS = {
    "str": "must be a string",
    "path": "must be a string (a file path)",
    "int": "must be an integer",
    "float": "must be a number",
    "bool": "must be true or false",
    "list": "must be a list of strings",
}
_ENV_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _convert(kind: str, value: Any) -> Any:
    """`value` as the kind's Python type, or None when it has the wrong type."""
    if kind in ("str", "path"):
        return value if isinstance(value, str) else None
    if kind == "bool":
        return value if isinstance(value, bool) else None
    if isinstance(value, bool):
        return None
    if kind == "int":
        return value if isinstance(value, int) else None
    if kind == "float":
        return float(value) if isinstance(value, int | float) else None
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(value)
    return None


def _parse_env(kind: str, text: str) -> Any:
    """An environment string as the kind's Python type, or None when it does not parse."""
    try:
        if kind == "int":
            return int(text.strip())
        if kind == "float":
            return float(text.strip())
    except ValueError:
        return None
    if kind == "bool":
        return _ENV_BOOLS.get(text.strip().lower())
    if kind == "list":
        return tuple(item.strip() for item in text.split(",") if item.strip())
    return text


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"configuration file {path}: not found") from None
    except OSError as exc:
        raise ConfigError(f"configuration file {path}: cannot be read ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"configuration file {path}: invalid TOML ({exc})") from None


def _from_document(doc: dict[str, Any]) -> _Raw:
    raw = _Raw()
    for section, table in doc.items():
        if section not in _SECTIONS:
            what = f"[{section}]: unknown section" if isinstance(table, dict) else f"{section}: unknown key"
            raise ConfigError(f"{what}{_hint(section, _SECTIONS)}; sections: {', '.join(_SECTIONS)}")
        if not isinstance(table, dict):
            raise ConfigError(f"{section}: must be a section, written [{section}] on its own line")
        table = dict(table)
        if section == "smpp" and "bind" in table:
            raw.binds = _bind_tables(raw, table.pop("bind"))
        raw.sections[section] = _typed_table(raw, section, None, table)
    return raw


def _bind_tables(raw: _Raw, tables: Any) -> list[dict[str, Any]]:
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigError("smpp.bind: must be tables written [[smpp.bind]], one per bind")
    return [_typed_table(raw, _BIND, index, table) for index, table in enumerate(tables)]


def _typed_table(raw: _Raw, section: str, index: int | None, table: dict[str, Any]) -> dict[str, Any]:
    known = _keys(section)
    typed: dict[str, Any] = {}
    for key, value in table.items():
        name = _name(section, key, index)
        if key not in known:
            raise ConfigError(f"{name}: unknown key{_hint(key, known)}")
        converted = _convert(known[key], value)
        if converted is None:
            raw.fail(name, value, _TYPE_PROBLEMS[known[key]])
        typed[key] = converted
    return typed


def _env_target(var: str) -> tuple[str, int | None, str]:
    """(section, bind index or None, key) that an IDTRONIC_* variable sets."""
    if var in _env_names():
        section, key = _env_names()[var]
        return section, None, key
    match = _BIND_ENV.fullmatch(var)
    if match and match[2].lower() in _keys(_BIND):
        if int(match[1]) < 1:
            raise ConfigError(f"{var}: binds are numbered from 1")
        return _BIND, int(match[1]) - 1, match[2].lower()
    bind_names = [f"IDTRONIC_SMPP_BIND_1_{k}".upper() for k in _keys(_BIND)]
    raise ConfigError(f"{var}: not a configuration setting{_hint(var, [*_env_names(), *bind_names])}")


def _apply_env(raw: _Raw, environ: Mapping[str, str]) -> None:
    targets = {
        var: _env_target(var)
        for var in sorted(environ)
        if var.startswith(ENV_PREFIX) and var not in (ENV_CONFIG, ENV_DATA_DIR)
    }
    _extend_binds(raw, targets)
    for var, (section, index, key) in targets.items():
        _set_from_env(raw, section, index, key, var, environ[var])


def _extend_binds(raw: _Raw, targets: Mapping[str, tuple[str, int | None, str]]) -> None:
    """Environment variables may add binds after the file's, numbered without gaps."""
    wanted = {index: var for var, (_, index, _) in targets.items() if index is not None}
    for index in range(len(raw.binds), max(wanted, default=-1) + 1):
        if index not in wanted:
            last = wanted[max(wanted)]
            raise ConfigError(f"{last}: there is no bind {index + 1}; binds are numbered from 1 without gaps")
        raw.binds.append({})


def _set_from_env(raw: _Raw, section: str, index: int | None, key: str, var: str, text: str) -> None:
    name = _name(section, key, index)
    raw.origin[name] = var
    kind = _keys(section)[key]
    value = _parse_env(kind, text)
    if value is None:
        problem = "must be one of true, false, 1, 0, yes, no" if kind == "bool" else _TYPE_PROBLEMS[kind]
        raw.fail(name, text, problem)
    table = raw.table(section, index)
    secret = _SECRET_KEYS.get(section)
    if secret and key in (secret, secret + "_file"):
        twin = secret + "_file" if key == secret else secret
        if _name(section, twin, index) not in raw.origin:
            table.pop(twin, None)  # the environment replaces the file's way of giving this secret
    table[key] = value


# --- Checks of single values: each returns the problem, or None ----------------------------------

Check = Callable[[Any], str | None]


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _between(low: float, high: float, unit: str = "", why: str = "") -> Check:
    suffix = (f" {unit}" if unit else "") + (f" ({why})" if why else "")

    def check(value: Any) -> str | None:
        return None if low <= value <= high else f"must be between {_num(low)} and {_num(high)}{suffix}"

    return check


def _seconds(low: float, high: float, why: str = "") -> Check:
    return _between(low, high, "seconds", why)


def _positive_up_to(high: float, unit: str) -> Check:
    def check(value: Any) -> str | None:
        return None if 0 < value <= high else f"must be greater than 0 and at most {_num(high)} {unit}"

    return check


def _one_of(*allowed: str) -> Check:
    def check(value: Any) -> str | None:
        return None if value in allowed else "must be one of " + ", ".join(json.dumps(a) for a in allowed)

    return check


def _matches(pattern: str, what: str) -> Check:
    regex = re.compile(pattern)

    def check(value: Any) -> str | None:
        return None if regex.fullmatch(value) else f"must be {what}"

    return check


def _header_text(allow_empty: bool = True) -> Check:
    """Text sent in an AMI header: no line breaks (they would inject headers)."""

    def check(value: Any) -> str | None:
        if not value and not allow_empty:
            return "must not be empty"
        return "must not contain line breaks" if "\r" in value or "\n" in value else None

    return check


def _c_octet(max_len: int, allow_empty: bool = False) -> Check:
    """An SMPP C-Octet string: printable ASCII, at most max_len characters (SMPP 3.4 section 4.1)."""
    low = 0 if allow_empty else 1

    def check(value: Any) -> str | None:
        ok = low <= len(value) <= max_len and all(" " <= c <= "~" for c in value)
        return None if ok else f"must be {low} to {max_len} printable ASCII characters"

    return check


def _secret(min_len: int) -> Check:
    def check(value: Any) -> str | None:
        if len(value) < min_len or any(c.isspace() for c in value):
            return f"must be at least {min_len} characters without spaces"
        return None

    return check


def _template(required: frozenset[str], allowed: frozenset[str]) -> Check:
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


def _callback_channel(value: Any) -> str | None:
    problem = _template(frozenset(), _CHANNEL_PLACEHOLDERS)(value) or _header_text(False)(value)
    if problem is None and not any(f"{{{p}}}" in value for p in _CHANNEL_PLACEHOLDERS):
        problem = "must contain one of {e164}, {digits}, {national}"
    if problem is None and not re.match(r"[A-Za-z0-9_]+/\S", value):
        problem = 'must be an Asterisk dial string "TECHNOLOGY/resource", e.g. "PJSIP/{national}@trunk"'
    return problem


_PREFIX = re.compile(r"(\d{1,8})(?:-(\d{1,8}))?")


def _card_prefixes(value: Any) -> str | None:
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


def _region(value: Any) -> str | None:
    if value in phonenumbers.SUPPORTED_REGIONS:
        return None
    return 'must be a two-letter region code known to phonenumbers, in capitals, e.g. "FR"'


def _calling_hours(value: Any) -> str | None:
    match = re.fullmatch(r"([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]|24):([0-5]\d)", value)
    problem = 'must be "HH:MM-HH:MM" (24-hour clock) with the start before the end, e.g. "08:00-21:00"'
    if not match or (match[3] == "24" and match[4] != "00"):
        return problem
    return None if (match[1], match[2]) < (match[3], match[4]) else problem


def _timezone(value: Any) -> str | None:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        return 'must be an IANA time zone name known to zoneinfo, e.g. "Europe/Paris"'
    return None


def _endpoint(kind: str, allow_empty: bool = False) -> Check:
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


_PAYMENT_FIELDS = frozenset({"code", "amount", "currency", "merchant", "minutes"})
_ASTERISK_NAME = r"[A-Za-z0-9_.+-]{1,79}"

_CHECKS: dict[str, Check] = {
    "http.listen": _endpoint("server"),
    "http.max_body_bytes": _between(1024, 10 * 1024 * 1024, "bytes"),
    "http.header_timeout": _seconds(1, 300),
    "http.body_timeout": _seconds(1, 600),
    "http.max_connections_per_address": _between(1, 100_000, "connections"),
    "http.metrics_listen": _endpoint("server", allow_empty=True),
    "database.pool_threads": _between(1, 64, "threads"),
    "api.operator_key": _secret(16),
    "api.merchant_requests_per_minute": _between(1, 1_000_000, "requests per minute"),
    "api.merchant_payments_per_minute": _between(1, 1_000_000, "requests per minute"),
    "api.public_requests_per_minute": _between(1, 10_000, "requests per minute"),
    "api.identifier_requests_per_hour": _between(1, 1000, "requests per hour"),
    "enrollment.card_prefixes": _card_prefixes,
    "enrollment.default_region": _region,
    "tokens.lifetime": _seconds(60, 600, "NIST SP 800-63B"),
    "tokens.max_attempts": _between(1, 10),
    "tokens.max_resends": _between(0, 10),
    "tokens.resend_interval": _seconds(10, 600),
    "tokens.per_cardholder_limit": _between(1, 100, "tokens"),
    "tokens.per_cardholder_window": _seconds(60, 86400),
    "tokens.payment_template": _template(frozenset({"code"}), _PAYMENT_FIELDS),
    "tokens.profile_template": _template(frozenset({"code"}), frozenset({"code", "minutes"})),
    "tokens.mobile_change_notice": _template(frozenset(), frozenset()),
    "budget.max_consecutive_failures": _between(3, 5, why="PSD2 RTS art. 4(3)(b) allows at most 5"),
    "profile.session_idle": _seconds(60, 300, "PSD2 RTS art. 4(3)(d) allows at most 5 minutes"),
    "callback.first_call_delay": _seconds(0, 3600),
    "callback.max_calls": _between(1, 10),
    "callback.retry_interval": _seconds(60, 3600),
    "callback.calling_hours": _calling_hours,
    "callback.timezone": _timezone,
    "callback.max_entries": _between(1, 5),
    "callback.dtmf_timeout": _seconds(3, 30),
    "callback.poll_interval": _seconds(0.1, 60),
    "voice_fallback.no_receipt_after": _seconds(10, 600),
    "voice_fallback.repeats": _between(1, 5),
    "agi.listen": _endpoint("server"),
    "agi.backlog": _between(1, 65535),
    "agi.command_timeout": _seconds(5, 600),
    "agi.language": _matches(
        r"[a-z]{2,3}(_[A-Za-z]{2,4})?", 'an Asterisk language code such as "fr" or "en_GB"'
    ),
    "ami.endpoint": _endpoint("client"),
    "ami.username": _header_text(),
    "ami.secret": _header_text(),
    "ami.auth": _one_of("md5", "plain"),
    "ami.callback_channel": _callback_channel,
    "ami.callback_context": _matches(_ASTERISK_NAME, "an Asterisk context name (letters, digits, _ . + -)"),
    "ami.callback_exten": _matches(_ASTERISK_NAME, "an Asterisk extension (letters, digits, _ . + -)"),
    "ami.caller_id": _header_text(),
    "ami.originate_timeout": _seconds(5, 300),
    "ami.action_timeout": _seconds(1, 120),
    "ami.ping_interval": _seconds(1, 600),
    "ami.outcome_grace": _seconds(0, 3600),
    "ami.reconnect_max_delay": _seconds(1, 3600),
    "smpp.enquire_link_interval": _seconds(5, 600),
    "smpp.link_dead_timeout": _seconds(10, 3600),
    "smpp.response_timeout": _seconds(1, 120),
    "smpp.reconnect_max_delay": _seconds(1, 3600),
    "smpp.bind_refused_retry": _seconds(10, 86400),
    "smpp.poll_interval": _seconds(0.05, 60),
    "smpp.bind.name": _matches(r"[A-Za-z0-9_.-]{1,32}", "1 to 32 letters, digits, _ . -"),
    "smpp.bind.endpoint": _endpoint("client"),
    "smpp.bind.system_id": _c_octet(15),
    "smpp.bind.password": _c_octet(64, allow_empty=True),  # SMPP 3.4 says 8; some SMSCs issue longer
    "smpp.bind.system_type": _c_octet(12, allow_empty=True),
    "smpp.bind.mode": _one_of("transceiver", "transmitter_receiver"),
    "smpp.bind.window": _between(1, 1000, "outstanding requests"),
    "smpp.bind.max_tps": _positive_up_to(10000, "messages per second"),
    "smpp.bind.source_ton": _between(0, 6, why="SMPP 3.4 TON"),
    "smpp.bind.source_npi": _between(0, 18, why="SMPP 3.4 NPI"),
    "smpp.bind.dest_ton": _between(0, 6, why="SMPP 3.4 TON"),
    "smpp.bind.dest_npi": _between(0, 18, why="SMPP 3.4 NPI"),
    "demo.smsc_listen": _endpoint("server"),
    "demo.ami_listen": _endpoint("server"),
    "demo.handset_last8": _matches(r"(\d{8})?", "empty or exactly 8 digits"),
}


# --- Secret and key files -------------------------------------------------------------------------


def _read_private(name: str, path: Path, group_ok: bool) -> bytes:
    """A file's bytes, refusing one that group (unless group_ok) or others may access."""
    shown = f'{name} = "{path}"'
    try:
        with path.open("rb") as fh:
            mode = os.fstat(fh.fileno()).st_mode
            data = fh.read()
    except FileNotFoundError:
        raise ConfigError(f"{shown}: file not found") from None
    except OSError as exc:
        raise ConfigError(f"{shown}: cannot be read ({exc.strerror})") from None
    if mode & (0o007 if group_ok else 0o077):
        who = "others" if group_ok else "group or others"
        raise ConfigError(
            f"{shown}: the file is accessible by {who} (mode {mode & 0o777:04o}); "
            f"fix it with: chmod 600 {path}"
        )
    return data


def _read_secret(name: str, path: Path, group_ok: bool) -> str:
    try:
        text = _read_private(name, path, group_ok).decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise ConfigError(f'{name} = "{path}": the file is not UTF-8 text') from None
    if not text:
        raise ConfigError(f'{name} = "{path}": the file is empty')
    return text


def _decode_key(text: bytes) -> bytes | None:
    if re.fullmatch(rb"[0-9a-fA-F]{64}", text):
        return bytes.fromhex(text.decode())
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        return None


def _read_key(name: str, path: Path) -> bytes:
    key = _decode_key(_read_private(name, path, group_ok=False).strip())
    if key is None or len(key) != KEY_BYTES:
        raise ConfigError(
            f'{name} = "{path}": must hold {KEY_BYTES} random bytes, base64-encoded (44 characters) or as '
            f"{2 * KEY_BYTES} hex digits"
        )
    return key


def _resolve_secret(values: dict[str, Any], section: str, index: int | None, default: Path | None) -> None:
    """Replace `<key>_file` by the file's content under `<key>`; refuse both at once."""
    key = _SECRET_KEYS[section]
    inline, path = values.pop(key, None), values.pop(key + "_file", None)
    if inline is not None and path is not None:
        raise ConfigError(
            f"{_name(section, key, index)} and {_name(section, key + '_file', index)} are both set: set one"
        )
    if inline is not None:
        values[key] = inline
        return
    source = Path(path) if path is not None else default
    if source is not None:  # the operator key is a key file (0600); other secrets may be group-readable
        values[key] = _read_secret(_name(section, key + "_file", index), source, group_ok=section != "api")


# --- Building the Config --------------------------------------------------------------------------


def _instance(raw: _Raw, cls: type[Any], section: str, index: int | None, values: dict[str, Any]) -> Any:
    obj = cls(**values)
    for key in _keys(section):
        check = _CHECKS.get(f"{section}.{key}")
        value = getattr(obj, key, None)
        if check is not None and value is not None:
            problem = check(value)
            if problem:
                raw.fail(_name(section, key, index), value, problem)
    return obj


def _database_values(raw: _Raw, values: dict[str, Any], data_dir: Path) -> None:
    """Default URL in the data directory; a relative SQLite path made absolute."""
    url = values.get("url", f"sqlite:///{data_dir / DATABASE_FILE}")
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        masked = re.sub(r"://([^:/@]*):[^@]*@", r"://\1:***@", url)
        raw.fail(
            "database.url", masked, "is not a database URL (sqlite:///path/to/file.db or postgresql://...)"
        )
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql", "postgres"):
        raw.fail(
            "database.url",
            parsed.render_as_string(),
            f"backend {backend} not supported: sqlite or postgresql",
        )
    database = parsed.database
    if backend == "sqlite" and database and database != ":memory:" and not database.startswith("file:"):
        url = parsed.set(database=str(Path(database).absolute())).render_as_string(hide_password=False)
    values["url"] = url


def _key_values(values: dict[str, Any], data_dir: Path) -> None:
    for file_key, (field_name, default) in _KEY_FILES.items():
        path = Path(values.pop(file_key, data_dir / default))
        values[field_name] = _read_key(f"keys.{file_key}", path)


def _bind(raw: _Raw, index: int, table: dict[str, Any]) -> SmppBindConfig:
    values = {"name": f"smsc{index + 1}", **table}
    _resolve_secret(values, _BIND, index, None)
    bind: SmppBindConfig = _instance(raw, SmppBindConfig, _BIND, index, values)
    _check_source_addr(raw, bind, index)
    return bind


def _check_source_addr(raw: _Raw, bind: SmppBindConfig, index: int) -> None:
    addr = bind.source_addr
    if bind.source_ton == 5:
        if not 1 <= len(addr) <= 11 or not all(" " <= c <= "~" for c in addr):
            raw.fail(
                _name(_BIND, "source_addr", index), addr, "must be 1 to 11 characters with source_ton = 5"
            )
    elif not re.fullmatch(r"\d{1,20}", addr):
        raw.fail(
            _name(_BIND, "source_addr", index),
            addr,
            f"must be 1 to 20 digits with source_ton = {bind.source_ton} (11 characters need source_ton = 5)",
        )


def _section_values(raw: _Raw, section: str, data_dir: Path) -> dict[str, Any]:
    values = dict(raw.sections.get(section, {}))
    if section == "api":
        _resolve_secret(values, "api", None, data_dir / OPERATOR_KEY_FILE)
    elif section == "ami":
        _resolve_secret(values, "ami", None, None)
    elif section == "keys":
        _key_values(values, data_dir)
    elif section == "database":
        _database_values(raw, values, data_dir)
    elif section == "smpp":
        values["binds"] = tuple(_bind(raw, index, table) for index, table in enumerate(raw.binds))
    return values


def _cross_checks(raw: _Raw, config: Config) -> None:
    """Rules that tie two settings together."""
    if config.agi.command_timeout <= config.callback.dtmf_timeout:
        raw.fail(
            "agi.command_timeout", config.agi.command_timeout, "must be longer than callback.dtmf_timeout"
        )
    if config.smpp.link_dead_timeout <= config.smpp.enquire_link_interval:
        raw.fail(
            "smpp.link_dead_timeout",
            config.smpp.link_dead_timeout,
            "must be longer than smpp.enquire_link_interval",
        )
    if config.ami.secret and not config.ami.username:
        raw.fail("ami.username", "", "must be set when ami.secret is")
    if config.keys.data_key == config.keys.hmac_key:
        raise ConfigError(
            "keys.hmac_key_file: holds the same key as keys.data_key_file; use two different keys"
        )
    seen: dict[str, int] = {}
    for index, bind in enumerate(config.smpp.binds):
        if bind.name in seen:
            raw.fail(
                _name(_BIND, "name", index), bind.name, f"already used by smpp.bind[{seen[bind.name] + 1}]"
            )
        seen[bind.name] = index


def _build(raw: _Raw, data_dir: Path) -> Config:
    parts = {
        section: _instance(raw, cls, section, None, _section_values(raw, section, data_dir))
        for section, cls in _SECTIONS.items()
    }
    config = Config(data_dir=data_dir, **parts)
    _cross_checks(raw, config)
    return config


# --- Public API -----------------------------------------------------------------------------------


def resolve_data_dir(data_dir: Path | None, environ: Mapping[str, str]) -> Path:
    """The data directory (absolute): the argument, else IDTRONIC_DATA_DIR, else ./idtronic-data."""
    chosen = data_dir if data_dir is not None else Path(environ.get(ENV_DATA_DIR) or DEFAULT_DATA_DIR)
    return chosen.absolute()


def resolve_config_path(path: Path | None, environ: Mapping[str, str]) -> Path | None:
    """The configuration file: the argument, else IDTRONIC_CONFIG, else none (defaults only)."""
    if path is not None:
        return path
    named = environ.get(ENV_CONFIG)
    return Path(named) if named else None


def _load_raw(path: Path | None, environ: Mapping[str, str]) -> _Raw:
    chosen = resolve_config_path(path, environ)
    raw = _from_document(_read_toml(chosen)) if chosen is not None else _Raw()
    _apply_env(raw, environ)
    return raw


def load_config(path: Path | None, data_dir: Path | None, environ: Mapping[str, str]) -> Config:
    """Read, override from the environment and validate; raises ConfigError naming the first problem."""
    return _build(_load_raw(path, environ), resolve_data_dir(data_dir, environ))


def _new_operator_key() -> bytes:
    return (OPERATOR_KEY_PREFIX + secrets.token_urlsafe(32) + "\n").encode()


def _new_key() -> bytes:
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)) + b"\n"


def _create_private(path: Path, content: bytes) -> None:
    """Write a new file with mode 0600 from the start; an existing file is left alone."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be created ({exc.strerror})") from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(content)
        fh.flush()
        os.fsync(fh.fileno())


def prepare_data_dir(
    data_dir: Path, path: Path | None = None, environ: Mapping[str, str] | None = None
) -> None:
    """First start: create `data_dir` (mode 0700) and, when absent, `operator.key`, `data.key` and
    `hmac.key` in it (mode 0600; never overwritten).

    With `path`/`environ` (the same as given to load_config), a key that the configuration takes from
    elsewhere (another file, or inline) is not generated; one configured at its default place is."""
    data_dir = data_dir.absolute()
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"data directory {data_dir}: cannot be created ({exc.strerror})") from None
    explicit = _explicit_sources(path, environ) if path is not None or environ is not None else {}
    makers = {OPERATOR_KEY_FILE: _new_operator_key, DATA_KEY_FILE: _new_key, HMAC_KEY_FILE: _new_key}
    for filename, make in makers.items():
        target = data_dir / filename
        if filename not in explicit or explicit[filename] == target:
            _create_private(target, make())


def _explicit_sources(path: Path | None, environ: Mapping[str, str] | None) -> dict[str, Path | None]:
    """For each generated file the configuration sets explicitly: the absolute path it names, or None
    when the value is inline."""
    raw = _load_raw(path, environ or {})
    api, keys = raw.sections.get("api", {}), raw.sections.get("keys", {})
    settings = {
        OPERATOR_KEY_FILE: (api, "operator_key_file", "operator_key"),
        DATA_KEY_FILE: (keys, "data_key_file", ""),
        HMAC_KEY_FILE: (keys, "hmac_key_file", ""),
    }
    explicit: dict[str, Path | None] = {}
    for filename, (table, file_key, inline_key) in settings.items():
        if inline_key in table:
            explicit[filename] = None
        elif file_key in table:
            explicit[filename] = Path(table[file_key]).absolute()
    return explicit
