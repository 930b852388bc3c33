"""bench/e2e_bench.py --quick: the end-to-end path (HTTP create -> SMS over SMPP to the node-smpp SMSC ->
receipt -> confirm with the code the SMSC received) runs, and every payment is accounted for.
No timing assertion: the figures are the bench's business (bench/RESULTS.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.fakes_smpp import node_or_skip

BENCH = Path(__file__).resolve().parent.parent / "bench" / "e2e_bench.py"


@pytest.mark.parametrize("config", ["sqlite", "two-daemons"])
def test_quick_run_accounts_for_every_payment(config: str, request: pytest.FixtureRequest) -> None:
    node_or_skip()
    if config != "sqlite":
        request.getfixturevalue("pg_url")  # skip (fail on CI) when PostgreSQL is unreachable
    run = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--config", config, "--binds", "2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    steps = [line for line in run.stdout.splitlines() if " pay " in line]
    assert len(steps) == 4, run.stdout  # warm-up, two open-loop steps, the closed loop
    assert all(line.endswith(" ok") for line in steps), run.stdout
    assert "every payment validated, every SMS delivered" in run.stdout
    assert run.stdout.rstrip().endswith("every payment accounted for")
