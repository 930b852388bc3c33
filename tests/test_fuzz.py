"""The quick version of bench/fuzz.py (issue 9 §10): each target with a few hundred inputs, the same ones
every run (derandomized); the full run (100,000 each) and its results are in bench/RESULTS.md."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

FUZZ = Path(__file__).resolve().parent.parent / "bench" / "fuzz.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("idtronic_fuzz", FUZZ)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


fuzz = _load()


@pytest.mark.parametrize("target", fuzz.TARGETS, ids=lambda t: t.name)
def test_no_input_crashes_the_codecs(target) -> None:  # type: ignore[no-untyped-def]
    outcome = fuzz.run(target, 300, derandomize=True)
    assert outcome.crashes == 0, outcome.crash
    assert outcome.examples >= 300
