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


def test_the_core_reads_only_its_own_settings() -> None:
    """The core gets a CoreSettings (core/settings.py) from the assembly: it never imports the configuration
    loader, nor the whole Config or the sections of the edges (AMI, HTTP, SMPP, ...)."""
    allowed = {f"idtronic_tel.config_schema.{name}" for name in CORE_SECTIONS} | {
        "idtronic_tel.config_schema"
    }
    bad = [
        f"{path.relative_to(PACKAGE)} imports {name}"
        for path in modules("core")
        for name in imported(path)
        if name.split(".")[1].startswith("config") and name not in allowed
    ]
    assert bad == []


CORE_SECTIONS = (
    "BudgetConfig",
    "CallbackConfig",
    "EnrollmentConfig",
    "ProfileConfig",
    "TokensConfig",
    "VoiceFallbackConfig",
)


def private_names_of_the_core() -> set[str]:
    """Every private name the core defines: module-level, in classes, and `self._x` attributes."""
    names = set()
    for path in modules("core"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
    return {name for name in names if name.startswith("_") and not name.startswith("__")}


def test_no_module_outside_the_core_touches_a_private_name_of_the_core() -> None:
    """Adapters, the assembly and the command line use the facade's public methods: no `core._run`, no
    `from idtronic_tel.core.facade import _counts`. (`self._x` is a module's own business.)"""
    private = private_names_of_the_core()
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.is_relative_to(PACKAGE / "core"):
            continue
        here = path.relative_to(PACKAGE)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and "core" in node.module.split("."):
                bad += [f"{here}: imports {a.name}" for a in node.names if a.name.startswith("_")]
            elif isinstance(node, ast.Attribute) and node.attr in private:
                owner = node.value
                if not (isinstance(owner, ast.Name) and owner.id in ("self", "cls")):
                    bad.append(f"{here}:{node.lineno}: .{node.attr}")
    assert bad == []
