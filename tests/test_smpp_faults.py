"""Fault tests of the SMS path, with exact counts at the SMSC (node-smpp 0.5.1, tests/smsc_fixture) and in
the database: kill -9 of a real daemon with a thousand SMS queued, the SMSC dropping the connection ten
times mid-window, a throttling storm, and PostgreSQL restarted under a running daemon.

The policy checked (docs/operations.md, "Nothing lost on the wire"): every SMS whose token is valid is
delivered, none is sent after its token expired, and a copy is sent twice only when the first may have
arrived unanswered: at most one window of them per incident, each counted in its row's `resends`.

The SMSC runs with `--accept-on-receipt 1` where duplicates are the point: like a real one, it accepts a
submit_sm as it arrives and delivers it even if the connection dies before the answer.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from sqlalchemy import func, select, update
from twisted.internet import reactor, threads

from idtronic_tel.config_schema import Config, SmppBindConfig, SmppConfig
from idtronic_tel.core.crypto import Vault
from idtronic_tel.core.db import DBPool, make_engine, migrate
from idtronic_tel.core.facade import Core, CoreSmsOutbox
from idtronic_tel.core.models import AuditEntry, SmsMessage
from idtronic_tel.core.rules import Rules
from idtronic_tel.smpp.service import SmppService, makeSmppService
from tests.conftest import test_config
from tests.fakes_smpp import NodeSmsc, node_or_skip
from tests.faultharness import (
    DaemonProcess,
    Outbox,
    PrivatePostgres,
    Row,
    prepared,
    private_postgres,
    seed_sms,
    smpp_sections,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.node


async def started_smsc(**options: Any) -> NodeSmsc:
    smsc = NodeSmsc(reactor, node_or_skip(), **options)
    await smsc.start().addTimeout(20, reactor)
    return smsc


def copies(smsc: NodeSmsc, since: int = 0) -> Counter[str]:
    """Destination -> submit_sm the SMSC accepted for it (from its `since`-th acceptance on)."""
    return Counter(s["destination"] for s in smsc.submits()[since:])


def events(smsc: NodeSmsc, name: str) -> list[dict[str, Any]]:
    return [e for e in smsc.events if e["event"] == name]


def final(rows: dict[int, Row], states: frozenset[str] = frozenset({"delivered", "expired"})) -> bool:
    return all(row.state in states for row in rows.values())


def check_duplicates(smsc: NodeSmsc, rows: dict[int, Row], bound: int) -> Counter[str]:
    """No copy beyond what each row's `resends` records, and at most `bound` extra copies in all."""
    accepted = copies(smsc)
    by_destination = {row.destination[1:]: row for row in rows.values()}
    extra = {d: n - 1 for d, n in accepted.items() if n > 1}
    assert all(by_destination[d].resends >= n for d, n in extra.items()), extra
    assert sum(extra.values()) <= bound, extra
    return accepted


# ---------------------------------------------------------------------------------------------------------
# kill -9


WINDOW = 50


@pytest_twisted.ensureDeferred
async def test_kill_9_with_a_thousand_queued_then_restart_loses_nothing(db_url: str, tmp_path: Path) -> None:
    """1,200 SMS queued; the daemon (`idtronic-tel run`, a real process) is killed with SIGKILL once the SMSC
    accepted 300, with a window of submits accepted but unanswered. While it is down, the tokens of the last
    100 queued SMS and of 10 in flight run out. Restarted under the same name, it sends again what it
    left in flight (those 10 excepted), then the rest: every unexpired SMS is delivered, no expired one is
    sent after the kill, and only messages that were in flight reach the SMSC twice (one window at most)."""
    smsc = await started_smsc(accept_on_receipt=1, submit_delay=200)
    config_file = tmp_path / "idtronic.toml"
    write_config(config_file, db_url, **smpp_sections(smsc.endpoint, window=WINDOW, max_tps=400))
    config = prepared(config_file, tmp_path / "data")
    seeded = seed_sms(db_url, config, 1200)
    outbox = Outbox(db_url)
    daemon = DaemonProcess(tmp_path, "daemon", config_file, tmp_path / "data")
    try:
        daemon.start()
        await wait_for(lambda: len(smsc.submits()) >= 300, "300 SMS accepted by the SMSC")
        await daemon.kill()
        await wait_for(lambda: len(events(smsc, "session_closed")) == 1, "the SMSC to see the link go")
        at_kill = len(smsc.submits())
        rows = await outbox.rows()
        in_flight = sorted(r.sms_id for r in rows.values() if r.state == "sending")
        queued = sorted(r.sms_id for r in rows.values() if r.state == "queued")
        assert 0 < len(in_flight) <= WINDOW  # claims never exceed the window
        assert len(queued) >= 800
        expired = set(in_flight[:10]) | set(queued[-100:])
        await outbox.run(expire_now, sorted(expired))

        daemon.start()
        await wait_for(lambda: outbox.rows().addCallback(final), "every SMS delivered or expired", 120)
        rows = await outbox.rows()
        audited = await outbox.run(crash_audits)
    finally:
        await daemon.stop()
        outbox.close()
        await smsc.stop()
    by_id = {s.sms_id: s for s in seeded}
    assert {i for i, r in rows.items() if r.state == "expired"} == expired
    assert Counter(r.state for r in rows.values()) == {"delivered": 1090, "expired": 110}
    accepted = check_duplicates(smsc, rows, WINDOW)
    expired_digits = {by_id[i].digits for i in expired}
    assert not expired_digits & set(copies(smsc, since=at_kill))  # none sent after its expiry
    assert set(accepted) - expired_digits == {s.digits for s in seeded} - expired_digits  # none lost
    assert {i for i, r in rows.items() if r.resends} == set(in_flight) - expired  # recorded resends
    assert all(r.resends == 1 and not r.in_doubt for i, r in rows.items() if i in in_flight)
    assert {d for d, n in accepted.items() if n > 1} <= {by_id[i].digits for i in in_flight}
    assert audited == len(in_flight)
    assert "sent again" in daemon.tail(200_000)


def expire_now(s: Any, ids: list[int]) -> None:
    """The tokens of these SMS run out (as time passing while the daemon is down would do)."""
    past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    s.execute(update(SmsMessage).where(SmsMessage.id.in_(ids)).values(expires_at=past))


def crash_audits(s: Any) -> int:
    return int(
        s.scalar(
            select(func.count()).select_from(AuditEntry).where(AuditEntry.action == "sms.crash-recovery")
        )
    )


# ---------------------------------------------------------------------------------------------------------
# one daemon in this process (the real core on the test database), for the SMSC's faults


class InProcess:
    def __init__(self, url: str, config: Config) -> None:
        self.pool = DBPool(reactor, make_engine(url), 4)  # type: ignore[arg-type]
        self.pool.start()
        core = Core(reactor, self.pool, Rules(config, Vault(config.keys.data_key, config.keys.hmac_key)))  # type: ignore[arg-type]
        self.outbox = CoreSmsOutbox(core)
        self.service: SmppService | None = None

    def smpp(self, smsc: NodeSmsc, **bind: Any) -> SmppService:
        config = SmppConfig(
            binds=(
                SmppBindConfig(
                    name="node", endpoint=smsc.endpoint, system_id="test", password="secret", **bind
                ),
            ),
            response_timeout=5.0,
            poll_interval=0.1,
            reconnect_max_delay=1.0,
        )
        self.service = makeSmppService(config, self.outbox, "in-process", reactor, jitter=lambda: 0.0)
        self.service.startService()
        return self.service

    async def stop(self) -> None:
        if self.service is not None and self.service.running:
            await self.service.stopService()
        self.pool.stop()


@pytest_twisted.ensureDeferred
async def test_smsc_drops_the_connection_ten_times_mid_window(db_url: str) -> None:
    """Each of the SMSC's first ten sessions is cut (no unbind) at its 61st submit_sm, with up to a window
    of submits accepted but not answered yet. All 800 SMS are delivered; an SMS reaches the SMSC twice only
    if it was unanswered when a link dropped (its row says so), at most a window per drop."""
    config = test_config()
    smsc = await started_smsc(accept_on_receipt=1, submit_delay=20, close_after=60, close_connections=10)
    seeded = seed_sms(db_url, config, 800)
    daemon = InProcess(db_url, config)
    outbox = Outbox(db_url)
    try:
        daemon.smpp(smsc, window=20, max_tps=2000.0)
        await wait_for(lambda: outbox.rows().addCallback(final), "800 SMS delivered", 90)
        rows = await outbox.rows()
    finally:
        await daemon.stop()
        outbox.close()
        await smsc.stop()
    assert len(events(smsc, "close")) == 10
    assert Counter(r.state for r in rows.values()) == {"delivered": 800}
    accepted = check_duplicates(smsc, rows, 10 * 20)
    assert set(accepted) == {s.digits for s in seeded}  # none lost
    assert max(accepted.values()) == 2 and sum(n - 1 for n in accepted.values()) >= 10  # the faults happened
    assert not any(r.in_doubt for r in rows.values())


@pytest_twisted.ensureDeferred
async def test_throttling_storm_slows_the_worker_down_and_it_recovers(sqlite_url: str) -> None:
    """Three storms of 40 submits answered ESME_RTHROTTLED / ESME_RMSGQFUL in turn (submits 50-89,
    250-289, 450-489). Every SMS is accepted exactly once (a refused submit is not a copy), the bind's
    rate falls to its floor during a storm and is back at max_tps at the end."""
    config = test_config()
    smsc = await started_smsc(storm_at=50, storm_length=40, storm_every=200, storm_count=3)
    seeded = seed_sms(sqlite_url, config, 600)
    daemon = InProcess(sqlite_url, config)
    outbox = Outbox(sqlite_url)
    rates: list[float] = []
    try:
        service = daemon.smpp(smsc, window=20, max_tps=1000.0)
        bucket = service.binds[0].bucket
        halve = bucket.throttled

        def throttled() -> None:
            halve()
            rates.append(bucket.rate)

        bucket.throttled = throttled  # type: ignore[method-assign]
        await wait_for(lambda: outbox.rows().addCallback(final), "600 SMS delivered", 90)
        rows = await outbox.rows()
        rate_at_end = bucket.rate
    finally:
        await daemon.stop()
        outbox.close()
        await smsc.stop()
    storms = events(smsc, "throttled")
    assert Counter(e["status"] for e in storms) == {0x58: 60, 0x14: 60}
    assert copies(smsc) == Counter({s.digits: 1 for s in seeded})  # all delivered, each once
    assert not any(r.resends or r.in_doubt for r in rows.values())
    assert len(rates) == 120 and min(rates) == 10.0  # halved down to its floor, 1 % of max_tps
    assert rate_at_end == 1000.0


# ---------------------------------------------------------------------------------------------------------
# PostgreSQL restarted under a running daemon


@pytest.fixture
def postgres_server() -> Iterator[PrivatePostgres]:
    yield from private_postgres()


@pytest_twisted.ensureDeferred
async def test_postgresql_restarted_during_a_run_nothing_lost(
    postgres_server: PrivatePostgres, tmp_path: Path
) -> None:
    """A daemon drains 600 SMS from its own PostgreSQL server, which is restarted (pg_ctl restart -m fast:
    every connection cut) after 150 were accepted. The daemon's claims, records and receipts fail for a
    moment and are tried again; nothing is lost or sent twice, and SMS queued after the restart go out too,
    without touching the daemon."""
    url = postgres_server.url
    await threads.deferToThread(migrate, url)
    smsc = await started_smsc()
    config_file = tmp_path / "idtronic.toml"
    write_config(config_file, url, **smpp_sections(smsc.endpoint, window=20, max_tps=150))
    config = prepared(config_file, tmp_path / "data")
    seeded = seed_sms(url, config, 600)
    daemon = DaemonProcess(tmp_path, "daemon", config_file, tmp_path / "data")
    outbox: Outbox | None = None
    try:
        daemon.start()
        await wait_for(lambda: len(smsc.submits()) >= 150, "150 SMS accepted by the SMSC")
        await threads.deferToThread(postgres_server.restart)
        assert len(smsc.submits()) < 600  # restarted mid-run
        seeded += await threads.deferToThread(seed_sms, url, config, 20, 600.0, 600)
        outbox = Outbox(url)
        await wait_for(
            lambda: outbox.rows().addCallback(final, frozenset({"delivered"})), "620 delivered", 90
        )
        rows = await outbox.rows()
        assert daemon.alive and await threads.deferToThread(daemon.health) == 200
    finally:
        await daemon.stop()
        if outbox is not None:
            outbox.close()
        await smsc.stop()
    assert copies(smsc) == Counter({s.digits: 1 for s in seeded})
    assert len(rows) == 620 and not any(r.resends or r.in_doubt for r in rows.values())
