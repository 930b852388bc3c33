"""Fault tests of the SMS path, with exact counts at the SMSC (node-smpp 0.5.1, tests/smsc_fixture) and in
the database: kill -9 of a real daemon with a thousand SMS queued, the SMSC dropping the connection ten
times mid-window, a throttling storm, PostgreSQL restarted under a running daemon, and two daemons
draining one outbox and one callback queue.

The policy checked (docs/operations.md, "Nothing lost on the wire"): every SMS whose token is valid is
delivered, none is sent after its token expired, and a copy is sent twice only when the first may have
arrived unanswered: at most one window of them per incident, each counted in its row's `resends`.

The SMSC runs with `--accept-on-receipt 1` where duplicates are the point: like a real one, it accepts a
submit_sm as it arrives and delivers it even if the connection dies before the answer.
"""

from __future__ import annotations

import datetime as dt
import secrets
import socket
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from sqlalchemy import func, select, update
from twisted.internet import reactor, threads

from idtronic_tel.config_schema import Config
from idtronic_tel.core import enrollment
from idtronic_tel.core.db import DBPool, make_engine, migrate
from idtronic_tel.core.models import AuditEntry, CallbackAttempt, CallbackRequest, SmsMessage
from idtronic_tel.daemon import core_rules
from idtronic_tel.simulators.asterisk_ami import AmiEmulatorFactory
from idtronic_tel.simulators.handset import Answer, Handset, HandsetDirectory
from tests.conftest import test_config
from tests.fakes_smpp import NodeSmsc, node_or_skip
from tests.faultharness import (
    DaemonProcess,
    InProcess,
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


def check_duplicates(smsc: NodeSmsc, rows: dict[int, Row], bound: int) -> Counter[str]:
    """No copy beyond what each row's `resends` records, at most `bound` extra copies in all, and none
    accepted after its token expired."""
    accepted = copies(smsc)
    by_destination = {row.destination[1:]: row for row in rows.values()}
    late = [
        s
        for s in smsc.submits()
        if s["time"] / 1000 > by_destination[s["destination"]].expires_at.timestamp()
    ]
    assert not late, late
    extra = {d: n - 1 for d, n in accepted.items() if n > 1}
    assert all(by_destination[d].resends >= n for d, n in extra.items()), extra
    assert sum(extra.values()) <= bound, extra
    return accepted


# ---------------------------------------------------------------------------------------------------------
# kill -9


WINDOW = 50


@pytest_twisted.ensureDeferred
async def test_kill_9_with_a_thousand_queued_then_restart_loses_nothing(
    sqlite_url: str, tmp_path: Path
) -> None:
    """1,200 SMS queued; the daemon (`idtronic-tel run`, a real process) is killed with SIGKILL once the SMSC
    accepted 300, with a window of submits accepted but unanswered. While it is down, the tokens of the last
    100 queued SMS and of 10 in flight run out. Restarted (under a new default name, host:pid), it takes
    over at once what its dead predecessor left in flight and sends it again (those 10 excepted), then the
    rest: every unexpired SMS is delivered, no expired one is sent after the kill, and only messages that
    were in flight reach the SMSC twice (one window at most)."""
    smsc = await started_smsc(accept_on_receipt=1, submit_delay=200)
    config_file = tmp_path / "idtronic.toml"
    write_config(config_file, sqlite_url, **smpp_sections(smsc.endpoint, window=WINDOW, max_tps=400))
    config = prepared(config_file, tmp_path / "data")
    seeded = seed_sms(sqlite_url, config, 1200)
    outbox = Outbox(sqlite_url)
    daemon = DaemonProcess(tmp_path, "daemon", config_file, tmp_path / "data")
    try:
        daemon.start()
        await wait_for(lambda: len(smsc.submits()) >= 300, "300 SMS accepted by the SMSC")
        killed_at = dt.datetime.now(dt.UTC)
        await daemon.kill()
        await wait_for(lambda: len(events(smsc, "session_closed")) == 1, "the SMSC to see the link go")
        at_kill = len(smsc.submits())
        rows = await outbox.rows()
        in_flight = sorted(r.sms_id for r in rows.values() if r.state == "sending")
        queued = sorted(r.sms_id for r in rows.values() if r.state == "queued")
        assert 0 < len(in_flight) <= WINDOW  # claims never exceed the window
        assert len(queued) >= 800
        expired = set(in_flight[:10]) | set(queued[-100:])
        await outbox.run(expire_at, sorted(expired), killed_at)

        daemon.start()
        await wait_for(lambda: outbox.settled(), "every SMS delivered or expired", 120)
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
    assert all(r.resends == 1 and not r.in_doubt for i, r in rows.items() if i in set(in_flight) - expired)
    assert {d for d, n in accepted.items() if n > 1} <= {by_id[i].digits for i in in_flight}
    assert audited == len(in_flight)
    assert "sent again" in daemon.tail(200_000)


def expire_at(s: Any, ids: list[int], when: dt.datetime) -> None:
    """The tokens of these SMS ran out at `when` (as time passing while the daemon is down would do)."""
    s.execute(update(SmsMessage).where(SmsMessage.id.in_(ids)).values(expires_at=when))


def crash_audits(s: Any) -> int:
    return int(
        s.scalar(
            select(func.count()).select_from(AuditEntry).where(AuditEntry.action == "sms.crash-recovery")
        )
    )


# ---------------------------------------------------------------------------------------------------------
# the SMSC's faults, against one daemon in this process (the real core on the test database)


@pytest_twisted.ensureDeferred
async def test_smsc_drops_the_connection_ten_times_mid_window(sqlite_url: str) -> None:
    """Each of the SMSC's first ten sessions is cut (no unbind) at its 51st submit_sm, with up to a window
    of submits accepted but not answered yet. All 600 SMS are delivered; an SMS reaches the SMSC twice only
    if it was unanswered when a link dropped (its row says so), at most a window per drop."""
    config = test_config()
    smsc = await started_smsc(accept_on_receipt=1, submit_delay=20, close_after=50, close_connections=10)
    seeded = seed_sms(sqlite_url, config, 600)
    daemon = InProcess(sqlite_url, config)
    outbox = Outbox(sqlite_url)
    try:
        daemon.smpp(smsc, window=20, max_tps=2000.0)
        await wait_for(lambda: outbox.settled(), "600 SMS delivered", 90)
        rows = await outbox.rows()
    finally:
        await daemon.stop()
        outbox.close()
        await smsc.stop()
    assert len(events(smsc, "close")) == 10
    assert Counter(r.state for r in rows.values()) == {"delivered": 600}
    accepted = check_duplicates(smsc, rows, 10 * 20)
    assert set(accepted) == {s.digits for s in seeded}  # none lost
    assert max(accepted.values()) == 2 and sum(n - 1 for n in accepted.values()) >= 10  # the faults happened
    assert not any(r.in_doubt for r in rows.values())


@pytest_twisted.ensureDeferred
async def test_throttling_storm_slows_the_worker_down_and_it_recovers(sqlite_url: str) -> None:
    """Three storms of 24 submits answered ESME_RTHROTTLED / ESME_RMSGQFUL in turn (submits 40-63,
    140-163, 240-263). Every SMS is accepted exactly once (a refused submit is not a copy), the bind's
    rate falls to its floor during a storm and is back at max_tps at the end."""
    config = test_config()
    smsc = await started_smsc(storm_at=40, storm_length=24, storm_every=100, storm_count=3)
    seeded = seed_sms(sqlite_url, config, 450)
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
        await wait_for(lambda: outbox.settled(), "450 SMS delivered", 90)
        rows = await outbox.rows()
        rate_at_end = bucket.rate
    finally:
        await daemon.stop()
        outbox.close()
        await smsc.stop()
    storms = events(smsc, "throttled")
    assert Counter(e["status"] for e in storms) == {0x58: 36, 0x14: 36}
    assert copies(smsc) == Counter({s.digits: 1 for s in seeded})  # all delivered, each once
    assert not any(r.resends or r.in_doubt for r in rows.values())
    assert len(rates) == 72 and min(rates) == 10.0  # halved down to its floor, 1 % of max_tps
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
    """A daemon drains 400 SMS from its own PostgreSQL server, which is restarted (pg_ctl restart -m fast:
    every connection cut) after 100 were accepted. The daemon's claims, records and receipts fail for a
    moment and are tried again; nothing is lost or sent twice, and SMS queued after the restart go out too,
    without touching the daemon."""
    url = postgres_server.url
    await threads.deferToThread(migrate, url)
    smsc = await started_smsc()
    config_file = tmp_path / "idtronic.toml"
    write_config(config_file, url, **smpp_sections(smsc.endpoint, window=20, max_tps=150))
    config = prepared(config_file, tmp_path / "data")
    seeded = seed_sms(url, config, 400)
    daemon = DaemonProcess(tmp_path, "daemon", config_file, tmp_path / "data")
    outbox: Outbox | None = None
    try:
        daemon.start()
        await wait_for(lambda: len(smsc.submits()) >= 100, "100 SMS accepted by the SMSC")
        await threads.deferToThread(postgres_server.restart)
        assert len(smsc.submits()) < 400  # restarted mid-run
        seeded += await threads.deferToThread(seed_sms, url, config, 20, 600.0, 400)
        outbox = Outbox(url)
        await wait_for(lambda: outbox.settled(frozenset({"delivered"})), "420 delivered", 90)
        rows = await outbox.rows()
        assert daemon.alive and await threads.deferToThread(daemon.health) == 200
    finally:
        await daemon.stop()
        if outbox is not None:
            outbox.close()
        await smsc.stop()
    assert copies(smsc) == Counter({s.digits: 1 for s in seeded})
    assert len(rows) == 420 and not any(r.resends or r.in_doubt for r in rows.values())


# ---------------------------------------------------------------------------------------------------------
# two daemons, one PostgreSQL, one outbox and one callback queue


CALLBACKS = 30


@pytest_twisted.ensureDeferred
async def test_two_daemons_drain_one_outbox_and_one_callback_queue_each_item_once(
    pg_url: str, tmp_path: Path
) -> None:
    """Two `idtronic-tel run` processes on one PostgreSQL database, both bound to the SMSC and logged in
    to the Asterisk emulator (this process; every callee busy), drain 300 queued SMS and 30 due
    enrollment callbacks together. The SMSC receives each SMS once, the emulator one Originate per
    callback (its attempt id once), and both daemons did part of the SMS. The callbacks fall due at once
    when both daemons are logged in, so both claim them concurrently; which daemon dials how many is up to
    their polls (periodic: one may win every race), so only "each once, by these daemons" is asserted."""
    smsc = await started_smsc()
    secret = "ami-" + secrets.token_urlsafe(12)
    asterisk = AmiEmulatorFactory(
        username="idtronic",
        secret=secret,
        handsets=HandsetDirectory(default=Handset(Answer.BUSY, ring_seconds=0.2)),
        reactor=reactor,
    )
    ami = reactor.listenTCP(0, asterisk, interface="127.0.0.1")  # type: ignore[attr-defined]
    config_file = tmp_path / "idtronic.toml"
    write_config(
        config_file,
        pg_url,
        **smpp_sections(smsc.endpoint, window=20, max_tps=200),
        ami={
            "endpoint": f"tcp:127.0.0.1:{ami.getHost().port}",
            "secret": secret,
            "callback_channel": "Local/{national}@callee",
        },
        callback={"first_call_delay": 0, "calling_hours": "00:00-24:00", "poll_interval": 0.2},
    )
    config = prepared(config_file, tmp_path / "data")
    seeded = seed_sms(pg_url, config, 300)
    requests = await threads.deferToThread(enroll_many, pg_url, config, CALLBACKS)
    daemons = [DaemonProcess(tmp_path, f"daemon{i}", config_file, tmp_path / "data") for i in (1, 2)]
    outbox = Outbox(pg_url)
    try:
        await outbox.run(callbacks_due, requests, None)  # none due until both daemons can dial
        for daemon in daemons:
            daemon.start()
        await wait_for(lambda: outbox.settled(frozenset({"delivered"})), "300 SMS delivered", 90)
        await wait_for(lambda: asterisk.logins >= 2, "both daemons logged in to Asterisk")
        await outbox.run(callbacks_due, requests, dt.datetime.now(dt.UTC))
        # Each request called once, busy, and waiting for its retry a minute later: no second call is due.
        await wait_for(
            lambda: outbox.run(callbacks_done, requests), "every callback placed and answered busy"
        )
        rows = await outbox.rows()
        claimers = await outbox.run(callback_claimers, requests)
    finally:
        for daemon in daemons:
            await daemon.stop()
        outbox.close()
        await smsc.stop()
        await ami.stopListening()
    assert copies(smsc) == Counter({s.digits: 1 for s in seeded})
    names = {f"{socket.gethostname()}:{d.pid}" for d in daemons}  # the default worker names
    assert {r.claimed_by for r in rows.values()} == names
    attempts = [o.get_all("Variable") for o in asterisk.originates]
    assert len(attempts) == CALLBACKS
    assert (
        len({v for variables in attempts for v in variables if v.startswith("IDTRONIC_CALLBACK=")})
        == CALLBACKS
    )
    assert claimers and claimers <= names


def enroll_many(url: str, config: Config, count: int) -> list[int]:
    """`count` web enrollments, each with its callback due now; their request ids."""
    rules = core_rules(config)
    pool = DBPool(None, make_engine(url, pool_size=1), 1)  # type: ignore[arg-type]  # run_blocking only
    fields = {
        "last_name": "Martin",
        "first_name": "Claire",
        "birth_date": "1985-04-12",
        "card_first8": "49761234",
    }
    try:
        for i in range(count):
            pool.run_blocking(
                enrollment.enroll, rules, {**fields, "mobile": f"+3362000{i:04d}"}, "web", "cardholder"
            )
        return list(pool.run_blocking(lambda s: s.scalars(select(CallbackRequest.id)).all()))
    finally:
        pool.engine.dispose()


def callbacks_due(s: Any, requests: list[int], when: dt.datetime | None) -> None:
    """The callbacks fall due at `when`; None: not for a day."""
    when = when or dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    s.execute(update(CallbackRequest).where(CallbackRequest.id.in_(requests)).values(next_call_at=when))


def callbacks_done(s: Any, requests: list[int]) -> bool:
    rows = s.execute(
        select(CallbackRequest.state, CallbackRequest.calls_made).where(CallbackRequest.id.in_(requests))
    )
    return all(state == "waiting" and calls == 1 for state, calls in rows)


def callback_claimers(s: Any, requests: list[int]) -> set[str]:
    return set(s.scalars(select(CallbackAttempt.worker).where(CallbackAttempt.request_id.in_(requests))))
