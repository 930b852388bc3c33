"""The real SMPP edge (makeSmppService) with the real core (CoreSmsOutbox on a database) against the
independent SMSC, node-smpp 0.5.1 (tests/smsc_fixture/server.js), over real sockets.

Databases: each test runs on SQLite and on PostgreSQL (skipped when PostgreSQL is unreachable, failed under
CI=true, see conftest.fresh_pg_database), except the two-daemon test, which is about FOR UPDATE SKIP LOCKED
and runs on PostgreSQL only. node missing or the fixture not installed: skipped, failed under CI=true.

The core's clock (Rules.clock) is a FakeClock that starts at the real time, so that expires_at stays
consistent with the worker's own clock (the reactor's) and the expiry test can move the core's time on.
Every wait is for a condition, with a timeout; nothing sleeps and hopes.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import pytest
import pytest_twisted
from sqlalchemy import func, select
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, succeed

from idtronic_tel.config_schema import CallbackConfig, Config, TokensConfig
from idtronic_tel.core.cards import luhn_check_digit
from idtronic_tel.core.db import DBPool, make_engine
from idtronic_tel.core.facade import CoreSmsOutbox
from idtronic_tel.core.merchants import MerchantAuth
from idtronic_tel.core.models import AuditEntry, SmsMessage, SmsPart
from idtronic_tel.core.ports import OutgoingSms
from idtronic_tel.daemon import core_rules
from idtronic_tel.smpp.service import SmppService
from tests import domain_helpers
from tests.conftest import BlockingCore, FakeClock, fresh_pg_database, test_config
from tests.fakes_smpp import NodeSmsc, node_or_skip
from tests.faultharness import InProcess, wait_for

pytestmark = pytest.mark.node


# ---------------------------------------------------------------------------------------------------------
# fixtures and helpers


@pytest.fixture
def pg_only_url() -> Iterator[str]:
    yield from fresh_pg_database()


def product_config(**tokens: Any) -> Config:
    base = test_config()
    return replace(
        base,
        tokens=replace(TokensConfig(), **tokens),
        # Enrollment callbacks at once and at any hour: the seeding answers them in-process.
        callback=replace(CallbackConfig(), first_call_delay=0, calling_hours="00:00-24:00"),
    )


def real_time_clock() -> FakeClock:
    return FakeClock(dt.datetime.now(dt.UTC))


@dataclass
class World:
    """A seeded database: one merchant and cardholders with distinct mobiles and cards."""

    url: str
    config: Config
    clock: FakeClock
    merchant: MerchantAuth
    cardholders: list[tuple[str, str]]  # (identifier, E.164 mobile)


def seed(url: str, config: Config, clock: FakeClock, cardholders: int) -> World:
    blocking = BlockingCore(url, core_rules(config, clock))
    try:
        merchant = domain_helpers.merchant(blocking)
        holders = []
        for i in range(cardholders):
            first8 = f"4976{i:04d}"
            last8 = "5678901" + luhn_check_digit(first8 + "5678901")
            mobile = f"+3361{i:07d}"
            identifier = domain_helpers.enroll(blocking, card_first8=first8, mobile=mobile)
            assert domain_helpers.answer_call(blocking, last8) == "accepted"
            holders.append((identifier, mobile))
    finally:
        blocking.close()
    return World(url, config, clock, merchant, holders)


_references = itertools.count(1)


async def pay(daemon: InProcess, world: World, holder: int) -> str:
    identifier, _ = world.cardholders[holder]
    reference = f"o-{next(_references)}"
    body = {"identifier": identifier, "amount": 4990, "currency": "EUR", "reference": reference}
    status, view = await daemon.core.create_payment(world.merchant, body, None)
    assert status == 201 and view.sms == "queued"
    return view.id


async def sms_views(daemon: InProcess, world: World, payments: list[str]) -> dict[str, str]:
    """Payment id -> its `sms` field as GET /v1/payments/{id} shows it (core get_payment)."""
    views = {}
    for payment_id in payments:
        view = await daemon.core.get_payment(world.merchant, payment_id)
        views[payment_id] = view.sms
    return views


async def all_sms(daemon: InProcess, world: World, payments: list[str], state: str) -> bool:
    return set((await sms_views(daemon, world, payments)).values()) == {state}


async def started_smsc(**options: Any) -> NodeSmsc:
    smsc = NodeSmsc(reactor, node_or_skip(), **options)
    await smsc.start().addTimeout(20, reactor)
    return smsc


def outbox_rows(url: str) -> list[tuple[str | None, str, str, bool, str | None, list[str]]]:
    """(payment_id, destination, state, in_doubt, claimed_by, [message ids]) of every SMS."""
    pool = DBPool(reactor, make_engine(url), 1)  # type: ignore[arg-type]

    def read(s: Any) -> list[tuple[str | None, str, str, bool, str | None, list[str]]]:
        parts: dict[int, list[str]] = {}
        for sms_id, message_id in s.execute(select(SmsPart.sms_id, SmsPart.message_id).order_by(SmsPart.id)):
            parts.setdefault(sms_id, []).append(message_id)
        return [
            (m.payment_id, m.destination, m.state, m.in_doubt, m.claimed_by, parts.get(m.id, []))
            for m in s.scalars(select(SmsMessage).order_by(SmsMessage.id))
        ]

    try:
        return pool.run_blocking(read)
    finally:
        pool.engine.dispose()


class SpyOutbox:
    """The daemon's CoreSmsOutbox, recording each claim: was the bind up when it started, what it returned.
    `crash()` cuts the daemon off its database, as if the process had died: nothing more is written."""

    def __init__(self, inner: CoreSmsOutbox, service: Callable[[], SmppService | None]) -> None:
        self.inner = inner
        self.service = service
        self.claims: list[tuple[bool, list[OutgoingSms] | None]] = []
        self.crashed = False

    def claim(self, worker: str, limit: int, lease: float) -> Deferred[list[OutgoingSms]]:
        if self.crashed:
            return succeed([])
        current = self.service()
        bound = current is not None and any(bind.bound for bind in current.binds)
        index = len(self.claims)
        self.claims.append((bound, None))

        def record(messages: list[OutgoingSms]) -> list[OutgoingSms]:
            self.claims[index] = (bound, messages)
            return messages

        return self.inner.claim(worker, limit, lease).addCallback(record)

    def crash(self) -> None:
        self.crashed = True

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)
        if name in ("recover", "on_new_work"):
            return method

        def call(*args: Any) -> Deferred[Any]:
            if self.crashed:
                return succeed(False if name == "apply_receipt" else None)
            return method(*args)  # type: ignore[no-any-return]

        return call


# ---------------------------------------------------------------------------------------------------------
# two daemons, one PostgreSQL


@pytest_twisted.ensureDeferred
async def test_two_daemons_on_one_postgresql_send_each_sms_exactly_once(pg_only_url: str) -> None:
    """300 payments created through two daemons (alternately, 20 at a time, while both drain the outbox);
    each daemon has its own pool, Core, CoreSmsOutbox and SmppService (workers daemon-a and daemon-b),
    both bound to one SMSC. The SMSC sends every receipt to the first bound session, so one daemon
    records receipts for messages the other submitted."""
    clock = real_time_clock()
    world = seed(pg_only_url, product_config(), clock, cardholders=100)  # 3 payments each (limit 5)
    smsc = await started_smsc()
    a, b = InProcess(pg_only_url, world.config, clock), InProcess(pg_only_url, world.config, clock)
    payments: list[str] = []
    try:
        services = [a.smpp(smsc, "daemon-a", response_timeout=30.0), b.smpp(smsc, "daemon-b")]
        await wait_for(lambda: all(s.binds[0].bound for s in services), "both binds up", 20)
        for start in range(0, 300, 20):
            batch = [pay(a if i % 2 else b, world, i % 100) for i in range(start, start + 20)]
            results = await DeferredList([Deferred.fromCoroutine(p) for p in batch], fireOnOneErrback=True)
            payments += [result for _, result in results]
        await wait_for(lambda: all_sms(a, world, payments, "delivered"), "300 payments with sms delivered")
        views = await sms_views(b, world, payments)  # through the other daemon: the same answer
    finally:
        await a.stop()
        await b.stop()
        await smsc.stop()
    assert set(views.values()) == {"delivered"}
    submits = smsc.submits()
    assert len(submits) == 300  # exactly once: no message went twice
    expected = Counter(mobile[1:] for _, mobile in world.cardholders for _ in range(3))
    assert Counter(s["destination"] for s in submits) == expected
    rows = outbox_rows(pg_only_url)
    assert len(rows) == 300 and {r[0] for r in rows} == set(payments)
    assert all(r[2] == "delivered" and not r[3] and len(r[5]) == 1 for r in rows)
    # Every SMS matched to its own submit at the SMSC (id and destination): none shared, none missing.
    submitted = {s["id"].lstrip("0"): s["destination"] for s in submits}
    assert len(submitted) == 300
    assert {r[5][0]: r[1][1:] for r in rows} == submitted
    claimed = Counter(r[4] for r in rows)
    assert set(claimed) == {"daemon-a", "daemon-b"}, claimed  # both did part of the work


# ---------------------------------------------------------------------------------------------------------
# suspension


@pytest_twisted.ensureDeferred
async def test_suspension_pauses_the_worker_and_resume_restarts_it(db_url: str) -> None:
    """Payments queued, then the service suspended (core.suspend). The SMPP edge starts and binds: its
    claims return nothing, nothing reaches the SMSC, the payments show `queued`. core.resume() wakes the
    worker (poll_interval is an hour here, so only the wake-up can restart it): every SMS is delivered,
    without restarting anything."""
    clock = real_time_clock()
    world = seed(db_url, product_config(), clock, cardholders=4)
    daemon = InProcess(db_url, world.config, clock)
    smsc = await started_smsc()
    service: SmppService | None = None
    spy = SpyOutbox(daemon.outbox, lambda: service)
    try:
        payments = [await pay(daemon, world, i % 4) for i in range(8)]
        await daemon.core.suspend("Maintenance until 22:00")
        service = daemon.smpp(smsc, "daemon-a", outbox=spy, response_timeout=30.0)
        service.worker.poll_interval = 3600.0  # before the first poll is scheduled (after recover)
        # A claim that started with the bind up, after the payments were queued, came back empty.
        await wait_for(lambda: any(bound and got == [] for bound, got in spy.claims), "a claim while bound")
        assert service.binds[0].bound
        assert all(got == [] for _, got in spy.claims)
        assert set((await sms_views(daemon, world, payments)).values()) == {"queued"}
        assert smsc.submits() == [] and service.binds[0].in_flight == 0
        claims_while_suspended = len(spy.claims)
        await daemon.core.resume()
        await wait_for(lambda: all_sms(daemon, world, payments, "delivered"), "8 payments delivered")
        assert len(spy.claims) > claims_while_suspended
    finally:
        await daemon.stop()
        await smsc.stop()
    assert len(smsc.submits()) == 8


# ---------------------------------------------------------------------------------------------------------
# expiry while disconnected


@pytest_twisted.ensureDeferred
async def test_token_expiry_while_the_smsc_is_down_is_never_sent(db_url: str) -> None:
    """tokens.lifetime = 60 s. One payment is delivered; the SMSC goes away; three payments are created;
    the core's clock moves 61 s on (their tokens expire); a fourth payment is created; the SMSC comes back on
    the same port. Only the fourth is sent; the three show `sms: expired`."""
    clock = real_time_clock()
    world = seed(db_url, product_config(lifetime=60.0), clock, cardholders=3)
    daemon = InProcess(db_url, world.config, clock)
    smsc = await started_smsc()
    try:
        service = daemon.smpp(smsc, "daemon-a", response_timeout=30.0)
        bind = service.binds[0]
        first = await pay(daemon, world, 0)
        await wait_for(lambda: all_sms(daemon, world, [first], "delivered"), "the first payment delivered")
        port = smsc.port
        await smsc.stop()
        await wait_for(lambda: not bind.bound, "the bind down", 20)
        late = [await pay(daemon, world, 1) for _ in range(3)]
        clock.advance(61)
        keeper = await pay(daemon, world, 2)
        assert set((await sms_views(daemon, world, [*late, keeper])).values()) == {"queued"}
        smsc = await started_smsc(port=port, first_id=0x10000)
        await wait_for(lambda: all_sms(daemon, world, [keeper], "delivered"), "the fourth payment delivered")
        views = await sms_views(daemon, world, late)
    finally:
        await daemon.stop()
        await smsc.stop()
    assert set(views.values()) == {"expired"}
    assert [s["destination"] for s in smsc.submits()] == [world.cardholders[2][1][1:]]
    rows = {r[0]: r for r in outbox_rows(db_url)}
    assert all(rows[p][2] == "expired" and rows[p][5] == [] for p in late)


# ---------------------------------------------------------------------------------------------------------
# crash and restart


@pytest_twisted.ensureDeferred
async def test_crash_after_claiming_restart_sends_again_what_is_still_valid(db_url: str) -> None:
    """Policy (ports.SmsOutbox.recover): a message its daemon may have written before dying is sent again
    on restart while its token is valid (a duplicate is harmless, a loss blocks the purchase); an expired
    one is dropped.

    Here the SMSC accepts every submit_sm on arrival but never answers (a submit delay of an hour);
    daemon-a claims five messages and writes them, then "crashes": it is cut off from its database
    (nothing more is recorded) and torn down. The rows stay in SENDING, claimed by daemon-a. One of them
    is made to expire meanwhile. On restart with the same worker name, `recover` queues the four others
    again: a fresh SMSC receives exactly those four (same text, resends = 1, an audit entry each) and a
    payment created after the restart; the expired one shows `expired` and is never sent again."""
    clock = real_time_clock()
    world = seed(db_url, product_config(), clock, cardholders=6)
    daemon = InProcess(db_url, world.config, clock)
    silent = await started_smsc(submit_delay=3_600_000, accept_on_receipt=1)
    smsc: NodeSmsc | None = None
    service: SmppService | None = None
    spy = SpyOutbox(daemon.outbox, lambda: service)
    try:
        service = daemon.smpp(silent, "daemon-a", outbox=spy, response_timeout=30.0, window=10)
        stuck = [await pay(daemon, world, i) for i in range(5)]
        bind = service.binds[0]
        await wait_for(lambda: bind.in_flight == 5, "5 submits on the wire")
        await wait_for(lambda: len(silent.submits()) == 5, "5 submits accepted by the SMSC")
        spy.crash()
        await silent.stop()  # its connection goes: the stop below waits for nothing
        await service.stopService()
        rows = {r[0]: r for r in outbox_rows(db_url)}
        assert all(rows[p][2] == "sending" and rows[p][4] == "daemon-a" for p in stuck)
        assert set((await sms_views(daemon, world, stuck)).values()) == {"queued"}  # "sending" shows queued
        expire(db_url, stuck[0], clock.now)

        smsc = await started_smsc()
        restarted = daemon.smpp(smsc, "daemon-a", response_timeout=30.0)
        await wait_for(lambda: all_sms(daemon, world, stuck[1:], "delivered"), "recover: sent again")
        fresh = await pay(daemon, world, 5)
        await wait_for(lambda: all_sms(daemon, world, [fresh], "delivered"), "a new payment delivered")
        assert restarted.worker.running
        assert (await sms_views(daemon, world, stuck[:1])) == {stuck[0]: "expired"}
    finally:
        await daemon.stop()
        await silent.stop()
        if smsc is not None:
            await smsc.stop()
    assert smsc is not None
    expected = [world.cardholders[i][1][1:] for i in (1, 2, 3, 4, 5)]
    assert sorted(s["destination"] for s in smsc.submits()) == sorted(expected)
    lengths = {s["destination"]: s["length"] for s in silent.submits()}
    assert all(lengths[s["destination"]] == s["length"] for s in smsc.submits()[:4])  # the same text
    rows = {r[0]: r for r in outbox_rows(db_url)}
    assert rows[stuck[0]][2] == "expired" and rows[stuck[0]][5] == []
    assert all(rows[p][2] == "delivered" and not rows[p][3] and len(rows[p][5]) == 1 for p in stuck[1:])
    assert resends_and_audit(db_url) == ({p: 1 for p in stuck[1:]} | {stuck[0]: 0, fresh: 0}, 5)


def expire(url: str, payment_id: str, now: dt.datetime) -> None:
    """The token of this payment's SMS runs out (as time passing while the daemon is down would do)."""
    pool = DBPool(reactor, make_engine(url), 1)  # type: ignore[arg-type]

    def update(s: Any) -> None:
        row = s.scalars(select(SmsMessage).where(SmsMessage.payment_id == payment_id)).one()
        row.expires_at = now - dt.timedelta(seconds=1)

    try:
        pool.run_blocking(update)
    finally:
        pool.engine.dispose()


def resends_and_audit(url: str) -> tuple[dict[str | None, int], int]:
    """(payment id -> resends of its SMS, audit entries of crash recoveries)."""
    pool = DBPool(reactor, make_engine(url), 1)  # type: ignore[arg-type]

    def read(s: Any) -> tuple[dict[str | None, int], int]:
        resends = {m.payment_id: m.resends for m in s.scalars(select(SmsMessage))}
        audited = s.scalar(
            select(func.count()).select_from(AuditEntry).where(AuditEntry.action == "sms.crash-recovery")
        )
        return resends, int(audited)

    try:
        return pool.run_blocking(read)
    finally:
        pool.engine.dispose()


# ---------------------------------------------------------------------------------------------------------
# the receipt race between daemons, deterministically


def test_receipt_for_another_daemons_unrecorded_submit_is_looked_up_again() -> None:
    """What the two-daemon test exposed: daemon A's bind receives the receipt of a message daemon B
    submitted before B committed mark_submitted. A looks the id up again after 0.05, 0.1, 0.2 ... s
    (UNKNOWN_RETRY_DELAYS, about 5 s in all) and holds the deliver_sm_resp meanwhile; a truly unknown id
    is acknowledged once the delays are spent."""
    from twisted.internet.task import Clock

    from idtronic_tel.smpp import codec
    from idtronic_tel.smpp.receipts import UNKNOWN_RETRY_DELAYS, ReceiptHandler
    from tests.fakes_smpp import FakeOutbox
    from tests.test_smpp_receipts import NODE_RECEIPT  # id 00002329, DELIVRD

    clock = Clock()
    outbox = FakeOutbox()
    handler = ReceiptHandler(outbox, "node", clock=clock)
    (pdu,) = codec.SmppCodec().receive_data(NODE_RECEIPT)
    answered: list[int] = []
    handler(pdu).addCallback(answered.append)  # type: ignore[arg-type]
    assert answered == [] and len(outbox.calls) == 1
    clock.advance(UNKNOWN_RETRY_DELAYS[0])
    assert answered == [] and len(outbox.calls) == 2
    sms = outbox.queue()  # daemon B's record lands (as mark_submitted would leave it)
    outbox.records[sms.sms_id].message_ids = ["2329"]
    clock.advance(UNKNOWN_RETRY_DELAYS[1])
    assert answered == [codec.ESME_ROK] and len(outbox.calls) == 3
    assert outbox.records[sms.sms_id].state == "delivered"
    assert clock.getDelayedCalls() == []

    unknown: list[int] = []
    handler(pdu.__class__(pdu.command, pdu.command_id, 0, 7, _Body(b"9999"))).addCallback(
        unknown.append  # type: ignore[arg-type]
    )
    clock.pump(UNKNOWN_RETRY_DELAYS)
    assert unknown == [codec.ESME_ROK] and clock.getDelayedCalls() == []


@dataclass
class _Body:
    receipted_message_id: bytes
    esm_class: int = 0x04
    short_message: bytes = b"id:9999 stat:DELIVRD"
    message_payload: bytes | None = None
    message_state: int | None = 2


# ---------------------------------------------------------------------------------------------------------
# the throughput shortcuts in smpp/ give the same bytes and objects as smpplib's generic paths


def test_submit_sm_shortcut_encodes_what_smpplib_encodes() -> None:
    from smpplib import gsm

    from idtronic_tel.smpp import codec

    fields: dict[str, Any] = {
        "service_type": "",
        "source_addr_ton": 5,
        "source_addr_npi": 0,
        "source_addr": "IDTRONIC",
        "dest_addr_ton": 1,
        "dest_addr_npi": 1,
        "destination_addr": "33611223344",
        "esm_class": 0x40,
        "protocol_id": 0,
        "priority_flag": 0,
        "schedule_delivery_time": "",
        "validity_period": "000000000459000R",
        "registered_delivery": 1,
        "replace_if_present_flag": 0,
        "data_coding": 0,
        "sm_default_msg_id": 0,
        "short_message": gsm.gsm_encode("id-tronic : code 483920 [€]"),
    }
    variants = [fields, {**fields, "source_addr": "OTHER", "data_coding": 8, "short_message": b"\x00e"}]
    variants += [
        {k: v for k, v in fields.items() if k != drop} for drop in ("service_type", "validity_period")
    ]
    variants.append({**fields, "short_message": None, "message_payload": b"x" * 300})  # a TLV: generic path
    for sequence, variant in enumerate(variants * 2, start=1):
        assert codec.encode_submit_sm(sequence, variant) == codec.encode("submit_sm", sequence, **variant)


def test_decode_gives_what_smpplib_parse_pdu_gives() -> None:
    from smpplib import smpp as smpplib_smpp

    from idtronic_tel.smpp import codec
    from idtronic_tel.smpp.commands import NO_SEQUENCE
    from tests.test_smpp_receipts import NODE_RECEIPT

    raws = [
        NODE_RECEIPT,
        codec.encode("submit_sm_resp", 9, message_id="0000232A"),
        codec.encode("bind_transceiver_resp", 1, system_id="NODESMSC"),
        NODE_RECEIPT,
    ]
    for raw in raws:
        pdu = codec.decode(raw)
        assert isinstance(pdu, codec.Pdu)
        reference = smpplib_smpp.parse_pdu(raw, client=NO_SEQUENCE, allow_unknown_opt_params=True)
        ours = {k: v for k, v in vars(pdu.body).items() if k != "mandatory_fields"}
        assert ours == vars(reference)
    assert codec.decode(NODE_RECEIPT).body is not codec.decode(NODE_RECEIPT).body


def test_gsm_shortcut_encodes_what_smpplib_encodes() -> None:
    import random

    from smpplib import gsm

    from idtronic_tel.smpp.messages import gsm_encode

    alphabet = [*sorted(set(gsm.GSM_CHARACTER_TABLE)), "ç", "\u4e00", "😀", "\x00"]
    draw = random.Random(7)
    for _ in range(3000):
        text = "".join(draw.choice(alphabet) for _ in range(draw.randint(0, 40)))
        try:
            expected: bytes | None = gsm.gsm_encode(text)
        except UnicodeError:
            expected = None
        try:
            got: bytes | None = gsm_encode(text)
        except UnicodeError:
            got = None
        assert got == expected, text
