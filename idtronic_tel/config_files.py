"""The files that hold secrets: reading a secret or a key file (refusing one others may read), and
creating new ones (mode 0600 from the start) on first start."""

from __future__ import annotations

import base64
import binascii
import os
import re
import secrets
from pathlib import Path

from .config_sources import ConfigError

OPERATOR_KEY_FILE = "operator.key"
DATA_KEY_FILE = "data.key"
HMAC_KEY_FILE = "hmac.key"
KEY_BYTES = 32
OPERATOR_KEY_PREFIX = "idt_op_"


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


def read_secret(name: str, path: Path, group_ok: bool) -> str:
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


def read_key(name: str, path: Path) -> bytes:
    key = _decode_key(_read_private(name, path, group_ok=False).strip())
    if key is None or len(key) != KEY_BYTES:
        raise ConfigError(
            f'{name} = "{path}": must hold {KEY_BYTES} random bytes, base64-encoded (44 characters) or as '
            f"{2 * KEY_BYTES} hex digits"
        )
    return key


def new_operator_key() -> bytes:
    return (OPERATOR_KEY_PREFIX + secrets.token_urlsafe(32) + "\n").encode()


def new_key() -> bytes:
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)) + b"\n"


def create_private(path: Path, content: bytes) -> None:
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
