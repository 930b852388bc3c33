"""`idtronic-tel run --demo` (the README's first command) plays the whole product end to end: callback
answered by the simulated handset over AMI + FastAGI, token SMS over SMPP to the simulator, confirmed."""

from __future__ import annotations

from dataclasses import replace

import pytest_twisted
from conftest import test_config
from daemonharness import free_port

from idtronic_tel.config_schema import AgiConfig, DatabaseConfig, DemoConfig, HttpConfig
from idtronic_tel.daemon import make_service
from idtronic_tel.demo import DemoScenario


@pytest_twisted.ensureDeferred
async def test_demo_scenario_succeeds(sqlite_url: str) -> None:
    from twisted.internet import reactor

    config = replace(
        test_config(),
        database=DatabaseConfig(url=sqlite_url),
        http=HttpConfig(listen=f"tcp:{free_port()}:interface=127.0.0.1"),
        agi=AgiConfig(listen=f"tcp:{free_port()}:interface=127.0.0.1"),
        demo=DemoConfig(enabled=True),
    )
    service = make_service(config, reactor)
    service.startService()
    try:
        scenario = next(s for s in service if isinstance(s, DemoScenario))  # type: ignore[attr-defined]
        assert scenario.done is not None
        result = await scenario.done
        assert result["status"] == "validated"
    finally:
        await service.stopService()
