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
or as 64 hex digits; `keys.data_key_previous_files` / `keys.hmac_key_previous_files` list previous keys
(key rotation, same format). Key files must not be accessible by group or others (chmod 600); secret files
(`ami.secret_file`, `smpp.bind[].password_file`) may be group-readable (root:idtronic 0640) but not
world-readable. Secret values never appear in error messages.

The keys, their defaults and their checks are the fields of config_schema (checks in config_checks);
reading the file and the environment is config_sources', secret and key files config_files'. This module
builds the Config from them and checks what ties two keys together.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from sqlalchemy import make_url
from sqlalchemy.exc import ArgumentError

from .config_files import (
    DATA_KEY_FILE,
    HMAC_KEY_FILE,
    OPERATOR_KEY_FILE,
    create_private,
    new_key,
    new_operator_key,
    read_key,
    read_secret,
)
from .config_schema import Config, SmppBindConfig
from .config_sources import (
    BIND,
    ENV_CONFIG,
    ENV_DATA_DIR,
    SECRET_KEYS,
    SECTIONS,
    ConfigError,
    Raw,
    key_name,
    load_raw,
)

DEFAULT_DATA_DIR = Path("idtronic-data")
DATABASE_FILE = "idtronic.db"
_KEY_FILES = {"data_key_file": ("data_key", DATA_KEY_FILE), "hmac_key_file": ("hmac_key", HMAC_KEY_FILE)}
_PREVIOUS_KEY_FILES = {
    "data_key_previous_files": "data_key_previous",
    "hmac_key_previous_files": "hmac_key_previous",
}


def _resolve_secret(values: dict[str, Any], section: str, index: int | None, default: Path | None) -> None:
    """Replace `<key>_file` by the file's content under `<key>`; refuse both at once."""
    key = SECRET_KEYS[section]
    inline, path = values.pop(key, None), values.pop(key + "_file", None)
    if inline is not None and path is not None:
        both = f"{key_name(section, key, index)} and {key_name(section, key + '_file', index)}"
        raise ConfigError(f"{both} are both set: set one")
    if inline is not None:
        values[key] = inline
        return
    source = Path(path) if path is not None else default
    if source is not None:  # the operator key is a key file (0600); other secrets may be group-readable
        values[key] = read_secret(key_name(section, key + "_file", index), source, group_ok=section != "api")


# --- Building the Config --------------------------------------------------------------------------


def _instance(raw: Raw, cls: type[Any], section: str, index: int | None, values: dict[str, Any]) -> Any:
    """The section's dataclass, each value passed through the check its field names."""
    obj = cls(**values)
    for f in fields(cls):
        check = f.metadata.get("check")
        problem = check(getattr(obj, f.name)) if check is not None else None
        if problem:
            raw.fail(key_name(section, f.name, index), getattr(obj, f.name), problem)
    return obj


def _database_values(raw: Raw, values: dict[str, Any], data_dir: Path) -> None:
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
        values[field_name] = read_key(f"keys.{file_key}", path)
    for list_key, field_name in _PREVIOUS_KEY_FILES.items():
        paths = values.pop(list_key, ())
        values[field_name] = tuple(
            read_key(f"keys.{list_key}[{index}]", Path(path)) for index, path in enumerate(paths, 1)
        )


def _bind(raw: Raw, index: int, table: dict[str, Any]) -> SmppBindConfig:
    values = {"name": f"smsc{index + 1}", **table}
    _resolve_secret(values, BIND, index, None)
    bind: SmppBindConfig = _instance(raw, SmppBindConfig, BIND, index, values)
    _check_source_addr(raw, bind, index)
    return bind


def _check_source_addr(raw: Raw, bind: SmppBindConfig, index: int) -> None:
    addr = bind.source_addr
    if bind.source_ton == 5:
        if not 1 <= len(addr) <= 11 or not all(" " <= c <= "~" for c in addr):
            raw.fail(
                key_name(BIND, "source_addr", index), addr, "must be 1 to 11 characters with source_ton = 5"
            )
    elif not re.fullmatch(r"\d{1,20}", addr):
        raw.fail(
            key_name(BIND, "source_addr", index),
            addr,
            f"must be 1 to 20 digits with source_ton = {bind.source_ton} (11 characters need source_ton = 5)",
        )


def _section_values(raw: Raw, section: str, data_dir: Path) -> dict[str, Any]:
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


def _cross_checks(raw: Raw, config: Config) -> None:
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
    if config.budget.max_lock_duration < config.budget.lock_duration:
        raw.fail(
            "budget.max_lock_duration",
            config.budget.max_lock_duration,
            "must be at least budget.lock_duration",
        )
    if config.ami.secret and not config.ami.username:
        raw.fail("ami.username", "", "must be set when ami.secret is")
    if config.keys.data_key == config.keys.hmac_key:
        raise ConfigError(
            "keys.hmac_key_file: holds the same key as keys.data_key_file; use two different keys"
        )
    _check_previous_keys(config)
    seen: dict[str, int] = {}
    for index, bind in enumerate(config.smpp.binds):
        if bind.name in seen:
            raw.fail(
                key_name(BIND, "name", index), bind.name, f"already used by smpp.bind[{seen[bind.name] + 1}]"
            )
        seen[bind.name] = index


def _check_previous_keys(config: Config) -> None:
    """A previous key equal to a current one is a mistake in the rotation (the new key not in place)."""
    keys = config.keys
    for name, current, previous in (
        ("data_key", keys.data_key, keys.data_key_previous),
        ("hmac_key", keys.hmac_key, keys.hmac_key_previous),
    ):
        for index, key in enumerate(previous, 1):
            if key in (keys.data_key, keys.hmac_key) or key in previous[: index - 1]:
                same = f"keys.{name}_file" if key == current else "another configured key"
                raise ConfigError(
                    f"keys.{name}_previous_files[{index}]: holds the same key as {same}; "
                    "list each previous key once, and put the new key in place first (docs/operations.md)"
                )


def _build(raw: Raw, data_dir: Path) -> Config:
    parts = {
        section: _instance(raw, cls, section, None, _section_values(raw, section, data_dir))
        for section, cls in SECTIONS.items()
    }
    config = Config(data_dir=data_dir, **parts)
    _cross_checks(raw, config)
    return config


# --- Public API -----------------------------------------------------------------------------------


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


def _load_raw(path: Path | None, environ: Mapping[str, str]) -> Raw:
    return load_raw(resolve_config_path(path, environ), environ)


def load_config(path: Path | None, data_dir: Path | None, environ: Mapping[str, str]) -> Config:
    """Read, override from the environment and validate; raises ConfigError naming the first problem."""
    return _build(_load_raw(path, environ), resolve_data_dir(data_dir, environ))


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
    makers = {OPERATOR_KEY_FILE: new_operator_key, DATA_KEY_FILE: new_key, HMAC_KEY_FILE: new_key}
    for filename, make in makers.items():
        target = data_dir / filename
        if filename not in explicit or explicit[filename] == target:
            create_private(target, make())


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
