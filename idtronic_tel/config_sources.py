"""The configuration's raw values: the TOML file, then the `IDTRONIC_*` environment, each typed by its
field in config_schema (a wrong type is refused here, naming the key and where the value came from)."""

from __future__ import annotations

import difflib
import functools
import json
import re
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NoReturn

from .config_schema import Config, SmppBindConfig

ENV_PREFIX = "IDTRONIC_"
ENV_CONFIG = "IDTRONIC_CONFIG"
ENV_DATA_DIR = "IDTRONIC_DATA_DIR"


class ConfigError(Exception):
    """A configuration problem; the message names the key, what is wrong and what is allowed."""


SECTIONS: dict[str, type[Any]] = {
    f.name: typing.get_type_hints(Config)[f.name] for f in fields(Config) if f.name != "data_dir"
}
BIND = "smpp.bind"  # pseudo-section: one [[smpp.bind]] table
SECRET_KEYS = {"api": "operator_key", "ami": "secret", BIND: "password"}  # each has a `<key>_file` twin
KEY_FILE_KEYS = ("data_key_file", "hmac_key_file")  # [keys]: the keys come from files only
KEY_FILE_LISTS = ("data_key_previous_files", "hmac_key_previous_files")  # [keys]: key rotation
_HIDDEN = frozenset(
    f.name for cls in (*SECTIONS.values(), SmppBindConfig) for f in fields(cls) if f.metadata.get("hidden")
)
_KINDS: dict[Any, str] = {
    str: "str",
    int: "int",
    float: "float",
    bool: "bool",
    tuple[str, ...]: "list",
    int | str: "int_or_str",  # daemon.workers: 2 or "auto"
}


@functools.cache
def section_keys(section: str) -> dict[str, str]:
    """The TOML keys of a section (or of one [[smpp.bind]] table) and their kinds."""
    cls = SmppBindConfig if section == BIND else SECTIONS[section]
    hints = typing.get_type_hints(cls)
    found = {f.name: _KINDS[hints[f.name]] for f in fields(cls) if hints[f.name] in _KINDS}
    if section in SECRET_KEYS:
        found[SECRET_KEYS[section] + "_file"] = "path"
    if section == "keys":
        found |= dict.fromkeys(KEY_FILE_KEYS, "path") | dict.fromkeys(KEY_FILE_LISTS, "list")
    return found


@functools.cache
def _env_names() -> dict[str, tuple[str, str]]:
    return {f"{ENV_PREFIX}{s}_{k}".upper(): (s, k) for s in SECTIONS for k in section_keys(s)}


_BIND_ENV = re.compile(r"IDTRONIC_SMPP_BIND_(\d+)_(\w+)")


# --- Messages -------------------------------------------------------------------------------------


def key_name(section: str, key: str, index: int | None = None) -> str:
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
class Raw:
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
    "int_or_str": "must be an integer or a string",
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
    if kind == "int_or_str":
        return value if isinstance(value, int | str) else None
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
        if kind == "int_or_str":
            return int(text.strip()) if text.strip().isdigit() else text.strip()
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


def _from_document(doc: dict[str, Any]) -> Raw:
    raw = Raw()
    for section, table in doc.items():
        if section not in SECTIONS:
            what = f"[{section}]: unknown section" if isinstance(table, dict) else f"{section}: unknown key"
            raise ConfigError(f"{what}{_hint(section, SECTIONS)}; sections: {', '.join(SECTIONS)}")
        if not isinstance(table, dict):
            raise ConfigError(f"{section}: must be a section, written [{section}] on its own line")
        table = dict(table)
        if section == "smpp" and "bind" in table:
            raw.binds = _bind_tables(raw, table.pop("bind"))
        raw.sections[section] = _typed_table(raw, section, None, table)
    return raw


def _bind_tables(raw: Raw, tables: Any) -> list[dict[str, Any]]:
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigError("smpp.bind: must be tables written [[smpp.bind]], one per bind")
    return [_typed_table(raw, BIND, index, table) for index, table in enumerate(tables)]


def _typed_table(raw: Raw, section: str, index: int | None, table: dict[str, Any]) -> dict[str, Any]:
    known = section_keys(section)
    typed: dict[str, Any] = {}
    for key, value in table.items():
        name = key_name(section, key, index)
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
    if match and match[2].lower() in section_keys(BIND):
        if int(match[1]) < 1:
            raise ConfigError(f"{var}: binds are numbered from 1")
        return BIND, int(match[1]) - 1, match[2].lower()
    bind_names = [f"IDTRONIC_SMPP_BIND_1_{k}".upper() for k in section_keys(BIND)]
    raise ConfigError(f"{var}: not a configuration setting{_hint(var, [*_env_names(), *bind_names])}")


def _apply_env(raw: Raw, environ: Mapping[str, str]) -> None:
    targets = {
        var: _env_target(var)
        for var in sorted(environ)
        if var.startswith(ENV_PREFIX) and var not in (ENV_CONFIG, ENV_DATA_DIR)
    }
    _extend_binds(raw, targets)
    for var, (section, index, key) in targets.items():
        _set_from_env(raw, section, index, key, var, environ[var])


def _extend_binds(raw: Raw, targets: Mapping[str, tuple[str, int | None, str]]) -> None:
    """Environment variables may add binds after the file's, numbered without gaps."""
    wanted = {index: var for var, (_, index, _) in targets.items() if index is not None}
    for index in range(len(raw.binds), max(wanted, default=-1) + 1):
        if index not in wanted:
            last = wanted[max(wanted)]
            raise ConfigError(f"{last}: there is no bind {index + 1}; binds are numbered from 1 without gaps")
        raw.binds.append({})


def _set_from_env(raw: Raw, section: str, index: int | None, key: str, var: str, text: str) -> None:
    name = key_name(section, key, index)
    raw.origin[name] = var
    kind = section_keys(section)[key]
    value = _parse_env(kind, text)
    if value is None:
        problem = "must be one of true, false, 1, 0, yes, no" if kind == "bool" else _TYPE_PROBLEMS[kind]
        raw.fail(name, text, problem)
    table = raw.table(section, index)
    secret = SECRET_KEYS.get(section)
    if secret and key in (secret, secret + "_file"):
        twin = secret + "_file" if key == secret else secret
        if key_name(section, twin, index) not in raw.origin:
            table.pop(twin, None)  # the environment replaces the file's way of giving this secret
    table[key] = value


# --- Checks of single values: each returns the problem, or None ----------------------------------


def load_raw(path: Path | None, environ: Mapping[str, str]) -> Raw:
    """The file's values (none without a file), then the environment's over them."""
    raw = _from_document(_read_toml(path)) if path is not None else Raw()
    _apply_env(raw, environ)
    return raw
