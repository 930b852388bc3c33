"""The SMPP worker's two hottest outbox writes, for many messages in one transaction (group commit; the
Batcher below gathers the calls on the reactor thread): mark_submitted and apply_receipt, with the same
outcome as the one-message versions in core/outbox.py run one after the other, in Core statements (no
ORM unit of work).

Rows of sms_outbox are locked in id order, so two daemons applying overlapping batches on PostgreSQL
cannot deadlock on them."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar, cast

from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.orm import Session
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from .models import SmsMessage, SmsPart
from .outbox import FINAL
from .ports import SmsState
from .rules import Rules

_sms = cast(Table, SmsMessage.__table__)
_parts = cast(Table, SmsPart.__table__)

# (worker, sms_id, message_ids, bind, resends): the arguments of outbox.mark_submitted
Submitted = tuple[str, int, list[str], str, int]

_SET_SUBMITTED = (
    update(_sms)
    .where(_sms.c.id == bindparam("b_id"))
    .values(
        state=SmsState.SUBMITTED.value,
        submitted_at=bindparam("b_at"),
        bind=bindparam("b_bind"),
        lease_until=None,
        resends=bindparam("b_resends"),
    )
)
_INSERT_PART = insert(_parts)
_SET_PART_STATE = update(_parts).where(_parts.c.id == bindparam("b_id")).values(state=bindparam("b_state"))
_SET_FINAL = (
    update(_sms)
    .where(_sms.c.id == bindparam("b_id"))
    .values(state=bindparam("b_state"), finished_at=bindparam("b_at"))
)


def _locked(conn: Any, columns: Sequence[Any], sms_ids: Sequence[int]) -> list[Any]:
    query = select(_sms.c.id, *columns).where(_sms.c.id.in_(sorted(set(sms_ids)))).order_by(_sms.c.id)
    return list(conn.execute(query.with_for_update()).all())


def mark_submitted_many(s: Session, rules: Rules, items: list[Submitted]) -> list[None]:
    """outbox.mark_submitted for each item: applies only while the message is SENDING for that worker."""
    conn = s.connection()
    rows = {
        r.id: r
        for r in _locked(conn, (_sms.c.state, _sms.c.claimed_by, _sms.c.resends), [i[1] for i in items])
    }
    now = rules.now()
    updates: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    done: set[int] = set()
    for worker, sms_id, message_ids, bind, resends in items:
        row = rows.get(sms_id)
        if row is None or row.state != SmsState.SENDING or row.claimed_by != worker or sms_id in done:
            continue  # a second mark of the same message finds it SUBMITTED already
        done.add(sms_id)
        updates.append({"b_id": sms_id, "b_at": now, "b_bind": bind, "b_resends": max(row.resends, resends)})
        parts += [
            {"sms_id": sms_id, "part_no": number, "message_id": message_id, "state": SmsState.SUBMITTED.value}
            for number, message_id in enumerate(message_ids, start=1)
        ]
    if updates:
        conn.execute(_SET_SUBMITTED, updates)
        conn.execute(_INSERT_PART, parts)
    return [None] * len(items)


def apply_receipts(s: Session, rules: Rules, receipts: list[tuple[str, str]]) -> list[bool]:
    """outbox.apply_receipt for each (message_id, state); False for an unknown message_id."""
    conn = s.connection()
    latest: dict[str, tuple[int, int]] = {}  # message_id -> (part id, sms_id) of its newest part
    query = select(_parts.c.id, _parts.c.sms_id, _parts.c.message_id).where(
        _parts.c.message_id.in_(sorted({m for m, _ in receipts}))
    )
    for part_id, sms_id, message_id in conn.execute(query):
        if message_id not in latest or part_id > latest[message_id][0]:
            latest[message_id] = (part_id, sms_id)
    found = [m in latest for m, _ in receipts]
    if not latest:
        return found
    sms_ids = [sms_id for _, sms_id in latest.values()]
    current = dict(_locked(conn, (_sms.c.state,), sms_ids))
    part_states = {latest[m][0]: state for m, state in receipts if m in latest}  # the last one wins
    conn.execute(_SET_PART_STATE, [{"b_id": k, "b_state": v} for k, v in part_states.items()])
    states: dict[int, set[str]] = defaultdict(set)
    for sms_id, state in conn.execute(
        select(_parts.c.sms_id, _parts.c.state).where(_parts.c.sms_id.in_(sorted(current)))
    ):
        states[sms_id].add(state)
    now = rules.now()
    finished = []
    for sms_id, state in current.items():
        seen = states[sms_id]
        if SmsState.UNDELIVERABLE in seen:
            state = SmsState.UNDELIVERABLE
        elif SmsState.EXPIRED in seen:
            state = SmsState.EXPIRED
        elif seen == {SmsState.DELIVERED}:
            state = SmsState.DELIVERED
        if state in FINAL:
            finished.append({"b_id": sms_id, "b_state": str(state), "b_at": now})
    if finished:
        conn.execute(_SET_FINAL, finished)
    return found


I = TypeVar("I")  # noqa: E741  one call's arguments
R = TypeVar("R")  # its result


class Batcher(Generic[I, R]):
    """`batch(items)` gives one result per item, in order, from one transaction (a lone call too: the
    batch statements cost less than the one-item code); `one(item)` redoes each call of a batch that
    failed as a whole, so that one bad item fails only its own caller. At most one batch is in flight."""

    def __init__(
        self,
        reactor: IReactorTime,
        batch: Callable[[list[I]], Deferred[list[R]]],
        one: Callable[[I], Deferred[R]],
        limit: int = 500,
    ) -> None:
        self._reactor = reactor
        self._batch = batch
        self._one = one
        self._limit = limit
        self._pending: list[tuple[I, Deferred[R]]] = []
        self._busy = False
        self._scheduled = False

    def __call__(self, item: I) -> Deferred[R]:
        waiter: Deferred[R] = Deferred()
        self._pending.append((item, waiter))
        if not self._busy and not self._scheduled:
            self._scheduled = True
            self._reactor.callLater(0, self._flush)  # the rest of this reactor turn joins the batch
        return waiter

    def _flush(self) -> None:
        self._scheduled = False
        if self._busy or not self._pending:
            return
        taken, self._pending = self._pending[: self._limit], self._pending[self._limit :]
        self._busy = True

        def done(results: list[R]) -> None:
            for (_, waiter), result in zip(taken, results, strict=True):
                waiter.callback(result)

        def failed(_: Failure) -> None:
            for item, waiter in taken:
                self._one(item).chainDeferred(waiter)

        self._batch([item for item, _ in taken]).addCallbacks(done, failed).addBoth(self._next)

    def _next(self, _: object) -> None:
        self._busy = False
        if self._pending:
            self._flush()
