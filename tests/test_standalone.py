"""The repository stands alone: users clone only it. No tracked file names the reference folder that
sat beside the project while it was built, or builds a path that leaves the repository; CI fails on a
skipped test; the contracts are the project's own documents (docs/) and cover what the code serves."""

from __future__ import annotations

import argparse
import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from idtronic_tel.api import errors
from idtronic_tel.api.app import build_router
from idtronic_tel.cli import _parser

ROOT = Path(__file__).resolve().parents[1]
# Written so that this file does not match what it looks for.
SIBLING = re.compile(r"\.\./" + "shared|shared/(?:design|protocols)|/work/" + "shared")
# A run of `..` path segments starting a relative path: `../x`, `"$(dirname "$0")/.."`, `".."`.
UP = re.compile(r"(?<![\w.])\.\.(?:/\.\.)*(?=[/\"'`\s)\]]|$)", re.MULTILINE)
DATA = ("tests/recorded/", "sounds/fr/")  # recorded bytes, not text we write


def tracked() -> list[Path]:
    listing = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z"], check=True, capture_output=True
    ).stdout.decode()
    return [ROOT / name for name in listing.split("\0") if name and not name.startswith(DATA)]


def text_of(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, FileNotFoundError):
        return None  # binary, or deleted in the working tree


def test_no_tracked_file_names_the_sibling_reference_folder() -> None:
    hits = [
        f"{path.relative_to(ROOT)}:{text[: m.start()].count(chr(10)) + 1}: {m.group(0)}"
        for path in tracked()
        if (text := text_of(path)) is not None
        for m in SIBLING.finditer(text)
    ]
    assert hits == [], "files the clone does not have:\n" + "\n".join(hits)


def test_no_relative_path_climbs_out_of_the_repository() -> None:
    hits = []
    for path in tracked():
        text = text_of(path)
        if text is None:
            continue
        depth = len(path.relative_to(ROOT).parts) - 1  # directories between the root and the file
        for m in UP.finditer(text):
            if m.group(0).count("..") > depth:
                line = text[: m.start()].count("\n") + 1
                hits.append(f"{path.relative_to(ROOT)}:{line}: {text.splitlines()[line - 1].strip()}")
    assert hits == [], "paths that leave the repository:\n" + "\n".join(hits)


def _levels_above(node: ast.AST) -> int | None:
    """How many directories above its own file's directory an expression built on __file__ points."""
    if isinstance(node, ast.Name) and node.id == "__file__":
        return -1  # the file itself; its .parent is level 0
    if isinstance(node, ast.Call):
        func = node.func
        if isinstance(func, ast.Name) and func.id == "Path" and node.args:
            return _levels_above(node.args[0])
        if isinstance(func, ast.Attribute) and func.attr in ("resolve", "absolute"):
            return _levels_above(func.value)
        if isinstance(func, ast.Attribute) and func.attr in ("dirname", "abspath") and node.args:
            base = _levels_above(node.args[0])
            return None if base is None else base + (func.attr == "dirname")
    if isinstance(node, ast.Attribute) and node.attr == "parent":
        base = _levels_above(node.value)
        return None if base is None else base + 1
    if (
        isinstance(node, ast.Subscript)
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == "parents"
        and isinstance(node.slice, ast.Constant)
        and isinstance(node.slice.value, int)
    ):
        base = _levels_above(node.value.value)
        return None if base is None else base + 1 + node.slice.value
    return None


def test_no_python_file_walks_above_the_repository_from_its_own_path() -> None:
    hits = []
    for path in (p for p in tracked() if p.suffix == ".py"):
        depth = len(path.relative_to(ROOT).parts) - 1
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            levels = _levels_above(node)
            if levels is not None and levels > depth:
                hits.append(f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}")
    assert hits == [], "paths built above the repository root:\n" + "\n".join(hits)


def test_the_checks_above_catch_what_they_look_for() -> None:
    # Written in pieces: this file is tracked too, and must not match its own checks.
    assert SIBLING.search("see .." + "/shared" + "/design/API.md")
    up2 = "/".join([".."] * 2)
    assert [m.group(0) for m in UP.finditer(f'cd "$(dirname "$0")/.." && cat {up2}/x')] == ["..", up2]
    assert not list(UP.finditer("bounds 0.05..60, 1..10, and an ellipsis..."))
    tree = ast.parse("Path(__file__).resolve().parents[2]; Path(__file__).parent.parent; dirname(__file__)")
    assert [_levels_above(n.value) for n in tree.body if isinstance(n, ast.Expr)] == [2, 1, None]


def test_a_skipped_test_fails_the_run_under_ci(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text((ROOT / "tests" / "conftest.py").read_text(encoding="utf-8"))
    test = "import pytest\n\n\ndef test_skips():\n    pytest.skip('missing tool')\n"
    (tmp_path / "test_x.py").write_text(test)
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)]
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    local = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    on_ci = subprocess.run(
        command, cwd=tmp_path, env={**env, "CI": "true"}, capture_output=True, text=True, timeout=120
    )
    assert local.returncode == 0, local.stdout
    assert on_ci.returncode == 1 and "test_skips: Skipped: missing tool" in on_ci.stdout, on_ci.stdout


SPY = """
import os, sys
DATA = tuple(os.path.join({root!r}, d) + os.sep for d in ("tests/recorded", "sounds", "docs", "config"))
opened = []
def hook(event, args):
    if event == "open" and isinstance(args[0], str) and os.path.abspath(args[0]).startswith(DATA):
        opened.append(args[0])
sys.addaudithook(hook)
def pytest_collection_finish(session):
    print("OPENED", sorted(set(opened)))
"""


def test_collecting_the_tests_reads_no_data_file(tmp_path: Path) -> None:
    """Module-level reads fail the whole collection when a file is missing: tests read their data when
    they run (fixtures, functions), never at import or parametrisation time."""
    (tmp_path / "collectspy.py").write_text(SPY.format(root=str(ROOT)))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "collectspy",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:]
    assert "OPENED []" in done.stdout, done.stdout[-2000:]


# ---- the contracts in docs/ cover what the code serves ------------------------------------------------


def doc(name: str) -> str:
    return (ROOT / "docs" / name).read_text(encoding="utf-8")


def test_api_document_lists_every_route_and_error_code() -> None:
    api = doc("api.md")
    router = build_router(None, dict)  # type: ignore[arg-type]  # routes only, never called
    missing = [f"{r.method} {r.template}" for r in router.routes if f"`{r.method} {r.template}`" not in api]
    missing += [f"error {code}" for code in errors.STATUS if f"`{code}`" not in api]
    assert missing == [], "docs/api.md does not describe: " + ", ".join(missing)


def test_operator_document_lists_every_command() -> None:
    """(Every configuration key: tests/test_config_docs.py.)"""
    operator = doc("operator.md")
    commands = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    missing = [f"command {name}" for name in commands if f"`{name}" not in operator]
    assert missing == [], "docs/operator.md does not describe: " + ", ".join(missing)


@pytest.mark.parametrize("name", ["api.md", "operator.md", "rules.md"])
def test_readme_links_the_contracts(name: str) -> None:
    assert f"(docs/{name})" in (ROOT / "README.md").read_text(encoding="utf-8")
