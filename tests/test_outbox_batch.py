"""Group commit of the SMPP worker's outbox writes: outbox_batch's many-message statements leave the
database exactly as the one-message functions applied in turn (SQLite and PostgreSQL), and the Batcher
groups calls, keeps their order and isolates a failing one."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select
from twisted.internet import task
from twisted.internet.defer import Deferred, fail, succeed

from idtronic_tel.core import outbox, outbox_batch
from idtronic_tel.core.db import DBPool, make_engine, migrate
from idtronic_tel.core.models import SmsMessage, SmsPart
from idtronic_tel.core.outbox_batch import Batcher
from idtronic_tel.core.rules import Rules
from tests.conftest import FakeClock, fresh_pg_database, make_rules


@pytest.fixture(params=["sqlite", "postgresql"])
def two_urls(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    if request.param == "sqlite":
        urls = (f"sqlite:///{tmp_path}/a.db", f"sqlite:///{tmp_path}/b.db")
        for url in urls:
            migrate(url)
        yield urls
        return
    first, second = fresh_pg_database(), fresh_pg_database()
    yield next(first), next(second)
    for gen in (first, second):
        gen.close()


def _seed(pool: DBPool, rules: Rules, count: int) -> None:
    """`count` messages claimed (SENDING) by worker w, ids 1..count."""

    def seed(s: Any, rules: Rules) -> None:
        now = rules.now()
        rows = [
            {
                "purpose": "notice",
                "destination": f"+3361{i:07d}",
                "body_enc": rules.vault.encrypt("sms", f"message {i}"),
                "state": "queued",
                "in_doubt": False,
                "created_at": now,
                "expires_at": now + dt.timedelta(seconds=600),
                "reason": "",
            }
            for i in range(count)
        ]
        s.execute(insert(SmsMessage), rows)
        s.flush()
        assert len(outbox.claim(s, rules, "w", count, 60)) == count

    pool.run_blocking(seed, rules)


def _dump(pool: DBPool) -> tuple[list[Any], list[Any]]:
    def read(s: Any) -> tuple[list[Any], list[Any]]:
        sms = s.execute(
            select(
                SmsMessage.id,
                SmsMessage.state,
                SmsMessage.bind,
                SmsMessage.resends,
                SmsMessage.lease_until.is_(None),
                SmsMessage.submitted_at,
                SmsMessage.finished_at,
            ).order_by(SmsMessage.id)
        ).all()
        parts = s.execute(
            select(SmsPart.sms_id, SmsPart.part_no, SmsPart.message_id, SmsPart.state).order_by(
                SmsPart.sms_id, SmsPart.part_no
            )
        ).all()
        return [tuple(r) for r in sms], [tuple(r) for r in parts]

    result: tuple[list[Any], list[Any]] = pool.run_blocking(read)
    return result


SUBMITS: list[outbox_batch.Submitted] = [
    ("w", 1, ["A1"], "b0", 0),
    ("w", 2, ["A2", "B2"], "b1", 2),  # two parts; resends kept at the highest
    ("other", 3, ["A3"], "b0", 0),  # not this worker's claim: ignored
    ("w", 4, ["A4"], "b0", 0),
    ("w", 4, ["C4"], "b0", 0),  # a second mark: the message is SUBMITTED already
    ("w", 5, ["A5"], "b0", 0),
    ("w", 99, ["A99"], "b0", 0),  # no such message
]
RECEIPTS = [
    ("A1", "delivered"),
    ("A2", "delivered"),  # one part of two: the message stays submitted
    ("A4", "undeliverable"),
    ("A5", "expired"),
    ("A5", "delivered"),  # the same part twice in one batch: the last one wins, as in turn
    ("C4", "delivered"),  # never recorded
    ("nope", "delivered"),
]


def test_batches_leave_the_database_as_the_single_writes_in_turn(two_urls: tuple[str, str]) -> None:
    clock = FakeClock()
    rules = make_rules(clock=clock)
    single, batched = (DBPool(None, make_engine(url, pool_size=1), 1) for url in two_urls)  # type: ignore[arg-type]
    try:
        for pool in (single, batched):
            _seed(pool, rules, 5)
        clock.advance(1)
        for item in SUBMITS:
            single.run_blocking(outbox.mark_submitted, rules, *item)
        assert batched.run_blocking(outbox_batch.mark_submitted_many, rules, SUBMITS) == [None] * len(SUBMITS)
        assert _dump(single) == _dump(batched)
        clock.advance(1)
        found = [single.run_blocking(outbox.apply_receipt, rules, *r) for r in RECEIPTS]
        assert batched.run_blocking(outbox_batch.apply_receipts, rules, RECEIPTS) == found
        assert found == [True, True, True, True, True, False, False]
        sms, parts = _dump(batched)
        assert _dump(single) == (sms, parts)
        assert [r[1] for r in sms] == ["delivered", "submitted", "sending", "undeliverable", "delivered"]
    finally:
        for pool in (single, batched):
            pool.engine.dispose()


class _Recorder:
    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.singles: list[int] = []
        self.pending: list[Deferred[list[int]]] = []

    def batch(self, items: list[int]) -> Deferred[list[int]]:
        self.batches.append(items)
        d: Deferred[list[int]] = Deferred()
        self.pending.append(d)
        return d

    def one(self, item: int) -> Deferred[int]:
        self.singles.append(item)
        return fail(ValueError(item)) if item < 0 else succeed(item * 10)


def test_batcher_groups_one_turn_and_what_arrives_while_a_batch_is_in_flight() -> None:
    clock = task.Clock()
    rec = _Recorder()
    batcher: Batcher[int, int] = Batcher(clock, rec.batch, rec.one, limit=3)
    results: list[Any] = []
    for i in (1, 2):
        batcher(i).addCallback(results.append)
    assert rec.batches == []  # the rest of the turn may join
    clock.advance(0)
    assert rec.batches == [[1, 2]]
    for i in (3, 4, 5, 6):
        batcher(i).addCallback(results.append)
    clock.advance(0)
    assert rec.batches == [[1, 2]]  # one batch in flight at a time
    rec.pending[0].callback([10, 20])
    assert rec.batches == [[1, 2], [3, 4, 5]]  # at most `limit` per batch
    rec.pending[1].callback([30, 40, 50])
    assert rec.batches[2] == [6]  # a lone call too
    rec.pending[2].callback([60])
    assert rec.singles == [] and results == [10, 20, 30, 40, 50, 60]


def test_batcher_redoes_a_failed_batch_one_by_one() -> None:
    clock = task.Clock()
    rec = _Recorder()
    batcher: Batcher[int, int] = Batcher(clock, rec.batch, rec.one)
    outcomes: list[Any] = []
    for i in (1, -2, 3):
        batcher(i).addCallbacks(outcomes.append, lambda f: outcomes.append(type(f.value)))
    clock.advance(0)
    rec.pending[0].errback(RuntimeError("the batch failed"))
    assert rec.singles == [1, -2, 3]
    assert outcomes == [10, ValueError, 30]
