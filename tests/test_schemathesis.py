"""The published contract against the running daemon (issue 8 §4): schemathesis reads /v1/openapi.json and
sends what it generates from it, valid and invalid, with every check on; no failure is allowed.

The one setting: a body the schema accepts may still be refused with `422` by a rule no JSON Schema can
say (the check digit of an identification number, a cardholder who is unknown, a date that does not
exist, a phone number that is not a mobile): docs/api.md lists those answers."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest_twisted
from conftest import test_config
from daemonharness import DaemonHarness
from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue

from idtronic_tel.simulators.handset import HandsetDirectory

CONFIG = """\
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "401", "403", "404", "409", "422", "429"]
"""


@pytest_twisted.ensureDeferred
async def test_schemathesis_finds_nothing(sqlite_url: str, tmp_path: Path) -> None:
    h = DaemonHarness(sqlite_url, test_config(), HandsetDirectory())
    h.start()
    try:
        shop = await h.daemon.core.add_merchant("Boutique", None)
        (tmp_path / "schemathesis.toml").write_text(CONFIG)
        # The merchant's key on every route, then the operator's on the operator's routes.
        await run(h.base_url, tmp_path, f"Bearer {shop.api_key}")
        await run(
            h.base_url, tmp_path, f"Bearer {h.operator_key}", "--include-path-regex", "^/(v1/admin|metrics)"
        )
    finally:
        await h.stop()


async def run(base_url: str, folder: Path, authorization: str, *options: str) -> None:
    arguments = [
        "--config-file",
        str(folder / "schemathesis.toml"),
        "run",
        base_url + "/v1/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        "25",
        "--seed",
        "8",
        "--generation-database",
        "none",
        "--workers",
        "1",
        "--no-color",
        "--header",
        f"Authorization: {authorization}",
        "--report-dir",
        str(folder / "report"),
        *options,
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEMATHESIS")}
    command = Path(sys.executable).parent / "schemathesis"
    out, err, code = await getProcessOutputAndValue(
        str(command), arguments, env=env, path=str(folder), reactor=reactor
    )
    text = (out + err).decode("utf-8", "replace")
    assert code == 0, text[-20000:]
    assert " 0 passed" not in text and "passed" in text, text[-20000:]
