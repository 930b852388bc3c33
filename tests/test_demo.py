"""`idtronic-tel run --demo` (the README's first command) plays the whole product end to end: callback
answered by the simulated handset over AMI + FastAGI, token SMS over SMPP to the simulator, confirmed.
Then it hands the newcomer the keys: the block it prints is enough to confirm a payment with curl, and a
second run on the same data directory gives the same merchant and key."""

from __future__ import annotations

import io
import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest_twisted
from conftest import test_config
from daemonharness import free_port, until
from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue

from idtronic_tel.config_schema import AgiConfig, Config, DatabaseConfig, DemoConfig, HttpConfig
from idtronic_tel.demo import DEMO_MERCHANT, MERCHANT_FILE, DemoScenario, make_service


async def run_demo(config: Config, out: io.StringIO) -> tuple[Any, dict[str, str]]:
    service = make_service(config, reactor, out)
    service.startService()
    scenario = next(s for s in service if isinstance(s, DemoScenario))  # type: ignore[attr-defined]
    assert scenario.done is not None
    try:
        return service, await scenario.done
    except BaseException:
        await service.stopService()
        raise


async def shell(command: str) -> Any:
    stdout, stderr, code = await getProcessOutputAndValue("/bin/sh", ["-c", command])
    assert code == 0, stderr
    return json.loads(stdout)


@pytest_twisted.ensureDeferred
async def test_demo_hands_over_what_a_newcomer_needs_and_keeps_its_merchant(
    sqlite_url: str, tmp_path: Path
) -> None:
    http = free_port()
    config = replace(
        test_config(),
        data_dir=tmp_path,
        database=DatabaseConfig(url=sqlite_url),
        http=HttpConfig(listen=f"tcp:{http}:interface=127.0.0.1", metrics_listen="tcp:0:interface=127.0.0.1"),
        agi=AgiConfig(listen=f"tcp:{free_port()}:interface=127.0.0.1"),
        demo=DemoConfig(enabled=True),
    )
    out = io.StringIO()
    service, first = await run_demo(config, out)
    try:
        assert first["status"] == "validated"
        printed = out.getvalue()
        block = printed[printed.index("Try it yourself") :]
        base = f"http://127.0.0.1:{http}"
        for needed in (
            f"{base}/ ",
            f"{base}/profile",
            f"{DEMO_MERCHANT} ({first['merchant']}), API key {first['api_key']}",
            f"identification number {first['identifier']}",
            'printed here, as a line "SMS',
        ):
            assert needed in block, needed
        create, confirm = [line for line in block.splitlines() if line.startswith("curl ")]
        # What the README says a newcomer does: paste the first command, read the code from the SMS line
        # the simulator prints, paste the second with the payment's id and the code.
        payment = await shell(create)
        assert payment["status"] == "pending"
        sms = await until(
            lambda: re.search(r"code (\d{6}) pour payer 12,50 EUR", out.getvalue()), what="the SMS line"
        )
        confirmed = await shell(confirm.replace("PAYMENT_ID", payment["id"]).replace("CODE", sms.group(1)))
        assert confirmed["status"] == "validated"
    finally:
        await service.stopService()
    saved = json.loads((tmp_path / MERCHANT_FILE).read_text())
    assert saved == {"id": first["merchant"], "api_key": first["api_key"]}
    assert (tmp_path / MERCHANT_FILE).stat().st_mode & 0o777 == 0o600

    service, second = await run_demo(config, io.StringIO())
    try:
        assert (second["merchant"], second["api_key"]) == (first["merchant"], first["api_key"])
        merchants = await service.daemon.core.list_merchants()
        assert [m.name for m in merchants.merchants] == [DEMO_MERCHANT]
    finally:
        await service.stopService()
