"""The voice fallback end to end (issue 4 §5): an SMS reported undeliverable makes the daemon call the
cardholder back through Asterisk; the FastAGI flow reads the token twice with SAY DIGITS, the attempt
ends `completed` and no second call follows (issue 8: the IVR's end reason and the core's test once
differed, and a read token was read again 5 minutes later); that token validates the payment."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest_twisted
import sqlalchemy as sa
from conftest import test_config
from daemonharness import DaemonHarness, until
from domain_helpers import FIRST8, LAST8
from sqlalchemy.orm import Session

from idtronic_tel.config_schema import CallbackConfig, VoiceFallbackConfig
from idtronic_tel.core.models import CallbackAttempt, CallbackRequest
from idtronic_tel.simulators.asterisk_agi import first_run_handset
from idtronic_tel.simulators.handset import Handset, HandsetDirectory

MOBILE = "+33611223344"


@pytest_twisted.ensureDeferred
async def test_undeliverable_sms_is_read_by_phone(sqlite_url: str) -> None:
    handsets = HandsetDirectory()
    handsets.add(MOBILE, first_run_handset(LAST8), Handset(), Handset())  # enrollment, then listeners
    base = replace(
        test_config(),
        voice_fallback=replace(VoiceFallbackConfig(), enabled=True, no_receipt_after=10),
        callback=replace(CallbackConfig(), retry_interval=1),  # a wrong retry would come at once
    )
    h = DaemonHarness(sqlite_url, base, handsets, receipt_status="UNDELIV")
    h.start()
    core = h.daemon.core
    try:
        shop = await core.add_merchant("Boutique", None)
        merchant = await core.authenticate_merchant(shop.api_key)
        enrolled = await core.enroll(
            {
                "last_name": "M",
                "first_name": "C",
                "birth_date": "1980-01-01",
                "mobile": MOBILE,
                "card_first8": FIRST8,
            },
            "web",
            "cardholder",
        )
        identifier = enrolled.identifier

        async def active() -> bool:
            return (await core.enrollment_status(identifier)).status == "active"

        await until(active, 60, "enrollment by callback")
        _, payment = await core.create_payment(
            merchant, {"identifier": identifier, "amount": 1250, "currency": "EUR", "reference": "r"}, None
        )

        async def undeliverable() -> bool:
            return (await core.get_payment(merchant, payment.id)).sms == "undeliverable"

        await until(undeliverable, 30, "the SMSC's UNDELIV receipt")
        sms_token = re.search(r"code (\d{6})", h.simulator.messages[-1].text).group(1)  # type: ignore[union-attr]
        assert (await core.housekeeping())["voice_fallbacks"] == 1

        def token_said() -> list[str]:
            return [line[2].decode() for line in h.agi_lines if line[2].startswith(b"SAY DIGITS")]

        said = await until(lambda: len(token_said()) >= 2 and token_said(), 60, "the token read twice")
        assert said[:2] == [f'SAY DIGITS {sms_token} ""\n'] * 2

        def voice_calls(s: Session) -> list[tuple[str, str, int, str | None]]:
            rows = s.execute(
                sa.select(CallbackRequest.state, CallbackAttempt.state, CallbackAttempt.attempt_no)
                .add_columns(CallbackAttempt.outcome)
                .join(CallbackAttempt, CallbackAttempt.request_id == CallbackRequest.id)
                .where(CallbackRequest.kind == "voice_token")
            ).all()
            return [tuple(row) for row in rows]  # type: ignore[misc]

        async def ended() -> list[tuple[str, str, int, str | None]]:
            calls = await core.pool.run(voice_calls)
            return calls if calls and calls[0][1] == "ended" else []

        assert await until(ended, 30, "the voice call to end") == [("succeeded", "ended", 1, "completed")]
        assert (await core.housekeeping())["voice_fallbacks"] == 0  # one call per token, never two
        validated = await core.confirm_payment(merchant, payment.id, sms_token)
        assert validated.status == "validated"
        kinds = [o.get("Variable") for o in h.asterisk.originates]
        assert len(h.asterisk.originates) == 2, kinds  # the enrollment callback, then the voice call
    finally:
        await h.stop()
