"""A prompt missing on the Asterisk server, through the whole daemon (issue 9 §7): Asterisk answers the
welcome's STREAM FILE with `200 result=-1` at once while the channel lives on. The IVR tells it apart
from a hang-up (CHANNEL STATUS), ends the attempt as `prompt_missing` with a log line naming the file and
a metric, and the core fails the request: no second call, however short the retry interval."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest_twisted
import sqlalchemy as sa
from conftest import test_config
from daemonharness import DaemonHarness, until
from domain_helpers import FIRST8
from sqlalchemy.orm import Session
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher
from zope.interface import provider

from idtronic_tel.config_schema import CallbackConfig
from idtronic_tel.core.models import CallbackAttempt, Cardholder
from idtronic_tel.ivr.call_flows import PROMPTS_MISSING
from idtronic_tel.simulators.handset import Handset, HandsetDirectory

MOBILE = "+33611223344"


@pytest_twisted.ensureDeferred
async def test_missing_welcome_prompt_is_an_operator_error_not_retried(sqlite_url: str) -> None:
    handsets = HandsetDirectory()
    handsets.add(MOBILE, Handset(), Handset(), Handset())  # would answer a retry at once
    base = replace(test_config(), callback=replace(CallbackConfig(), retry_interval=1))
    h = DaemonHarness(sqlite_url, base, handsets, missing_prompts=frozenset({"idtronic-welcome"}))
    lines: list[str] = []

    @provider(ILogObserver)
    def observe(event: dict[str, Any]) -> None:
        lines.append(formatEvent(event) or "")

    globalLogPublisher.addObserver(observe)
    before = PROMPTS_MISSING.labels("idtronic-welcome")._value.get()
    h.start()
    core = h.daemon.core
    try:
        identity = {"last_name": "M", "first_name": "C", "birth_date": "1980-01-01", "mobile": MOBILE}
        enrolled = await core.enroll({**identity, "card_first8": FIRST8}, "web", "cardholder")
        identifier = enrolled.identifier

        async def failed() -> bool:
            return (await core.enrollment_status(identifier)).status == "failed"

        await until(failed, 60, "the enrollment call to fail")

        def attempts(s: Session) -> list[tuple[str | None, str, int]]:
            rows = s.execute(
                sa.select(CallbackAttempt.outcome, CallbackAttempt.detail, Cardholder.failures).join(
                    Cardholder, Cardholder.identifier == identifier
                )
            ).all()
            return [tuple(row) for row in rows]  # type: ignore[misc]

        assert await core.pool.run(attempts) == [("prompt_missing", "a prompt file is missing", 0)]
        await core.housekeeping()
        assert (await core.counts())["queues"]["callbacks_waiting"] == 0  # nothing will call again
        assert len(h.asterisk.originates) == 1
        agi = [line[2] for line in h.agi_lines]
        assert b'STREAM FILE idtronic-welcome "0123456789"\n' in agi and b"CHANNEL STATUS\n" in agi
        assert b"200 result=6\n" in agi  # the channel was up: not a hang-up
        assert PROMPTS_MISSING.labels("idtronic-welcome")._value.get() == before + 1
        assert any("idtronic-welcome" in line and "missing" in line for line in lines)
    finally:
        globalLogPublisher.removeObserver(observe)
        await h.stop()
