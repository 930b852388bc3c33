"""No production module over 400 lines (issue 8, item 6): a module that grows past it is split by concern."""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "idtronic_tel"
LIMIT = 400


def lines_of(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


def test_no_module_over_the_limit() -> None:
    too_long = {
        path.relative_to(PACKAGE).as_posix(): lines_of(path)
        for path in sorted(PACKAGE.rglob("*.py"))
        if lines_of(path) > LIMIT
    }
    assert too_long == {}
