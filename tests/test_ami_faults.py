"""Fault test of issue 9 §9: the AMI connection dropped with callbacks in flight. The whole daemon against
the Asterisk emulator: five enrollment callbacks ring when Asterisk kicks the manager session (EOF, the
calls go on, their OriginateResponse goes to nobody). The daemon reconnects; each cardholder was called
exactly once (Originates counted at the emulator, each attempt id once), every call ended in an accepted
card, and the database agrees (one attempt per request, no call waiting)."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest_twisted
import sqlalchemy as sa
from conftest import test_config
from daemonharness import DaemonHarness, until
from sqlalchemy.orm import Session

from idtronic_tel.config_schema import CallbackConfig
from idtronic_tel.core.cards import luhn_check_digit
from idtronic_tel.core.models import CallbackAttempt, CallbackRequest
from idtronic_tel.simulators.asterisk_agi import first_run_handset
from idtronic_tel.simulators.handset import HandsetDirectory

CARDHOLDERS = 5


def card(i: int) -> tuple[str, str]:
    first8 = f"4976{i:04d}"
    return first8, "5678901" + luhn_check_digit(first8 + "5678901")


@pytest_twisted.ensureDeferred
async def test_ami_dropped_with_callbacks_in_flight_calls_each_cardholder_once(sqlite_url: str) -> None:
    handsets = HandsetDirectory()
    mobiles = [f"+336112233{i:02d}" for i in range(CARDHOLDERS)]
    for i, mobile in enumerate(mobiles):
        # Rings 6 s: the session is kicked while every call rings; then keys the right digits.
        handsets.add(mobile, replace(first_run_handset(card(i)[1]), ring_seconds=6.0))
    # A retry, were one wrongly placed, would come at once.
    base = replace(test_config(), callback=replace(CallbackConfig(), retry_interval=1))
    h = DaemonHarness(sqlite_url, base, handsets)
    core = h.daemon.core
    h.daemon.pool.start()
    try:
        identifiers = []  # enrolled before the daemon starts: the five calls go out together
        for i, mobile in enumerate(mobiles):
            identity = {"last_name": "M", "first_name": "C", "birth_date": "1980-01-01", "mobile": mobile}
            enrolled = await core.enroll({**identity, "card_first8": card(i)[0]}, "web", "cardholder")
            identifiers.append(enrolled.identifier)
        h.daemon.service.startService()
        await h.asterisk.when("originate", CARDHOLDERS)
        await until(lambda: len(h.asterisk.calls) == CARDHOLDERS, 5, "the five calls ringing")
        assert not any(call.answered for call in h.asterisk.calls)
        assert h.asterisk.kick_all() == 1
        await h.asterisk.when("login", 2)  # the daemon reconnected

        async def all_active() -> bool:
            states = [(await core.enrollment_status(i)).status for i in identifiers]
            return states == ["active"] * CARDHOLDERS

        await until(all_active, 90, "every enrollment accepted")
        await core.housekeeping()  # stale attempts resolved, if any were left

        def rows(s: Session) -> tuple[list[tuple[str, int]], list[tuple[int, str | None]]]:
            requests = s.execute(sa.select(CallbackRequest.state, CallbackRequest.calls_made)).all()
            attempts = s.execute(sa.select(CallbackAttempt.request_id, CallbackAttempt.outcome)).all()
            return [tuple(r) for r in requests], [tuple(a) for a in attempts]  # type: ignore[misc]

        requests, attempts = await core.pool.run(rows)
        assert requests == [("succeeded", 1)] * CARDHOLDERS
        assert sorted(outcome for _, outcome in attempts) == ["accepted"] * CARDHOLDERS
        assert len({request for request, _ in attempts}) == CARDHOLDERS
        assert (await core.counts())["queues"]["callbacks_waiting"] == 0
    finally:
        await h.stop()
    # Exactly one Originate per cardholder, each attempt id once.
    called = Counter(o.get("Channel") for o in h.asterisk.originates)
    assert sorted(called.values()) == [1] * CARDHOLDERS
    ids = Counter(
        v for o in h.asterisk.originates for v in o.get_all("Variable") if v.startswith("IDTRONIC_CALLBACK=")
    )
    assert len(ids) == CARDHOLDERS and set(ids.values()) == {1}
