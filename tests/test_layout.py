"""The package's shape: the core imports no edge, the edges never import each other, the production
assembly imports no simulator."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "idtronic_tel"
EDGES = ("api", "smpp", "ivr")


def imported(path: Path) -> set[str]:
    """The idtronic_tel modules a file imports (relative imports resolved), at any depth in the file."""
    here = path.relative_to(PACKAGE.parent).with_suffix("").parts
    package = here if path.name == "__init__.py" else here[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = list(package[: len(package) - node.level + 1]) if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found.add(module)
            found |= {f"{module}.{alias.name}" for alias in node.names}
    return {name for name in found if name.split(".")[0] == "idtronic_tel"}


def modules(folder: str) -> list[Path]:
    return sorted((PACKAGE / folder).rglob("*.py"))


@pytest.mark.parametrize("layer", ["core", *EDGES])
def test_the_core_imports_no_edge_and_the_edges_not_each_other(layer: str) -> None:
    forbidden = EDGES if layer == "core" else tuple(e for e in EDGES if e != layer)
    bad = [
        f"{path.relative_to(PACKAGE)} imports {name}"
        for path in modules(layer)
        for name in imported(path)
        if name.split(".")[1:2] and name.split(".")[1] in (*forbidden, "simulators", "demo", "daemon")
    ]
    assert bad == []


def test_the_production_assembly_imports_no_simulator() -> None:
    code = (
        "import sys, idtronic_tel.daemon, idtronic_tel.runner, idtronic_tel.tap\n"
        "prefixes = ('idtronic_tel.simulators', 'idtronic_tel.demo')\n"
        "print(sorted(m for m in sys.modules if m.startswith(prefixes)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip() == "[]"
