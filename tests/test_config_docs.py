"""Every key of the configuration schema is documented, with its default and its bounds, in the example
file (config/idtronic.toml) and in the operator's guide (docs/operator.md)."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from idtronic_tel.config_checks import Between
from idtronic_tel.config_schema import SmppBindConfig
from idtronic_tel.config_sources import BIND, SECTIONS, section_keys

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "idtronic.toml"
GUIDE = ROOT / "docs" / "operator.md"

KEYS = [(section, key) for section in [*SECTIONS, BIND] for key in section_keys(section)]


def field_of(section: str, key: str) -> dataclasses.Field[Any] | None:
    """The schema's field of a key (None for the `*_file` keys, which only name where a value is)."""
    cls = SmppBindConfig if section == BIND else SECTIONS[section]
    return {f.name: f for f in dataclasses.fields(cls)}.get(key)


def bounds(section: str, key: str) -> str | None:
    found = field_of(section, key)
    check = found.metadata.get("check") if found is not None else None
    return check.bounds if isinstance(check, Between) else None


def example_blocks() -> dict[str, list[str]]:
    """The example's lines by section; commented-out keys (`# key = ...`, the `# [[smpp.bind]]` block)
    count as shown, and comment text keeps its `#`."""
    blocks: dict[str, list[str]] = {}
    current = ""
    for line in EXAMPLE.read_text().splitlines():
        content = re.sub(r"^(# )*", "", line)
        header = re.fullmatch(r"\[\[?([\w.]+)\]\]?", content)
        if header:
            current = header[1]
        blocks.setdefault(current, []).append(line)
    return blocks


def guide_rows() -> dict[tuple[str, str], list[str]]:
    """The guide's configuration tables: (section, key) -> the row's cells. A heading names the sections
    of the tables under it; a row may name its own section (`[budget]` `max_consecutive_failures`)."""
    text = GUIDE.read_text()
    text = text[text.index("## Configuration file") : text.index("## Environment")]
    rows: dict[tuple[str, str], list[str]] = {}
    sections: list[str] = []
    for line in text.splitlines():
        if line.startswith("### "):
            sections = re.findall(r"`\[\[?([\w.]+)\]\]?`", line)
        elif line.startswith("| `"):
            cells = [cell.strip() for cell in line.strip("|").split(" | ")]
            names = re.findall(r"`([^`]+)`", cells[0])
            own = [n[1:-1] for n in names if n.startswith("[")]
            key = next(n for n in names if not n.startswith("["))
            rows[((own or sections)[0], key)] = cells
    return rows


@pytest.mark.parametrize(("section", "key"), KEYS, ids=[f"{s}.{k}" for s, k in KEYS])
def test_example_file_shows_every_key_with_its_bounds(section: str, key: str) -> None:
    lines = example_blocks()[section]
    shown = [i for i, line in enumerate(lines) if re.fullmatch(rf"(# )*{key} = .*", line)]
    mentioned = any(re.search(rf"\b{key}\b", line) for line in lines if line.startswith("#"))
    assert shown or mentioned, f"{section}.{key} is not in {EXAMPLE.name}"
    wanted = bounds(section, key)
    if wanted is None:
        return
    if shown:  # the comment above the key (or above the keys it is grouped with)
        i = shown[0]
        while i > 0 and re.fullmatch(r"(# )*\w+ = .*", lines[i - 1]):
            i -= 1
        comment = []
        while i > 0 and lines[i - 1].startswith("#") and not re.fullmatch(r"(# )*\w+ = .*", lines[i - 1]):
            i -= 1
            comment.append(lines[i])
    else:
        comment = lines
    assert any(wanted in line for line in comment), f"{section}.{key}: the example does not say {wanted}"


@pytest.mark.parametrize(("section", "key"), KEYS, ids=[f"{s}.{k}" for s, k in KEYS])
def test_operator_guide_gives_every_key_with_its_default_and_bounds(section: str, key: str) -> None:
    row = guide_rows().get((section, key))
    assert row is not None, f"{section}.{key} has no row in {GUIDE.name}"
    found = field_of(section, key)
    default = row[1].strip("`")
    if found is not None and "<" not in default and default != "—":
        value = tomllib.loads(f"v = {default}")["v"]
        value = tuple(value) if isinstance(value, list) else value
        assert value == found.default, f"{section}.{key}: the guide's default is {default}"
    wanted = bounds(section, key)
    assert wanted is None or wanted in row[2], f"{section}.{key}: the guide does not say {wanted}"
