"""The core as the rest of the daemon sees it: every domain operation as a Deferred-returning method
(database work on the DB thread pool), plus the ports the SMPP and Asterisk edges drain."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from . import (
    activity,
    budget,
    callbacks,
    enrollment,
    merchants,
    outbox,
    payments,
    profile,
    rekey,
    suspension,
    views,
)
from .db import DBPool
from .handoff import create_payment
from .merchants import MerchantAuth
from .models import CallbackRequest, Cardholder, Payment, SmsMessage
from .outbox_batch import Batcher, Submitted, apply_receipts, mark_submitted_many
from .ports import (
    CallbackJob,
    CallOutcome,
    DigitsVerdict,
    IvrCall,
    OutgoingSms,
    Recovered,
    SmsState,
    SmsTaker,
    nobody,
)
from .rules import Rules
from .states import CallbackState, EndReason

T = TypeVar("T")

_CACHE_SECONDS = 2.0  # other daemons' changes (key rotation, suspension) are seen within this delay


class _Signal:
    """In-process wake-ups: the edges learn of new work without waiting for their next poll."""

    def __init__(self, reactor: IReactorTime) -> None:
        self._reactor = reactor
        self._listeners: list[Callable[[], None]] = []

    def subscribe(self, callback: Callable[[], None]) -> None:
        self._listeners.append(callback)

    def fire(self) -> None:
        for listener in self._listeners:
            self._reactor.callLater(0, listener)

    def after(self, result: T) -> T:
        """A Deferred callback: wake the listeners once the transaction committed, pass the result on."""
        self.fire()
        return result


class Core:
    """`reactor` is the clock of the caches (and of the wake-ups); `rules.clock` the domain's."""

    def __init__(self, reactor: IReactorTime, pool: DBPool, rules: Rules) -> None:
        self.reactor = reactor
        self.pool = pool
        self.rules = rules
        self.sms_signal = _Signal(reactor)
        self.sms_taker: SmsTaker | None = None  # this process's SMPP worker: see core/handoff.py
        self.call_signal = _Signal(reactor)
        self._auth_cache: dict[str, tuple[float, MerchantAuth | None]] = {}
        self._suspension_cache: tuple[float, tuple[bool, str]] | None = None
        # Reads under way for the two caches: concurrent misses wait for the same one instead of each
        # queueing its own query behind the request backlog when an entry expires.
        self._loading: dict[str, list[Deferred[Any]]] = {}
        self._generation = 0  # bumped by _forget: a read begun before a change is not cached

    def _shared_read(
        self, key: str, load: Callable[[], Deferred[T]], remember: Callable[[T], None]
    ) -> Deferred[T]:
        waiters = self._loading.get(key)
        if waiters is not None:
            waiter: Deferred[T] = Deferred()
            waiters.append(waiter)
            return waiter
        self._loading[key] = waiters = []
        generation = self._generation

        def done(result: T | Failure) -> T | Failure:
            if self._loading.get(key) is waiters:
                del self._loading[key]
            if not isinstance(result, Failure) and generation == self._generation:
                remember(result)
            for waiter in waiters:
                if isinstance(result, Failure):
                    waiter.errback(result)
                else:
                    waiter.callback(result)
            return result

        return load().addBoth(done)

    def _run(self, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        return self.pool.run(fn, self.rules, *args)

    def _then_sms(self, d: Deferred[T]) -> Deferred[T]:
        return d.addCallback(self.sms_signal.after)

    def _then_call(self, d: Deferred[T]) -> Deferred[T]:
        return d.addCallback(self.call_signal.after)

    # ---- service state ------------------------------------------------------------------------------
    def suspension_state(self) -> Deferred[tuple[bool, str]]:
        """The global switch, cached for a moment: it is read on every merchant and cardholder call."""
        cached = self._suspension_cache
        if cached is not None and self.reactor.seconds() - cached[0] < _CACHE_SECONDS:
            return succeed(cached[1])

        def remember(state: tuple[bool, str]) -> None:
            self._suspension_cache = (self.reactor.seconds(), state)

        return self._shared_read("suspension", lambda: self.pool.run(suspension.global_state), remember)

    def suspend(
        self, notice: str, cardholder: str | None = None, merchant: str | None = None
    ) -> Deferred[views.Suspension]:
        self._forget()
        return self._run(suspension.suspend, notice, cardholder, merchant).addCallback(self._forget)

    def resume(
        self, cardholder: str | None = None, merchant: str | None = None
    ) -> Deferred[views.Suspension]:
        d = self._run(suspension.resume, cardholder, merchant).addCallback(self._forget)
        # Work that waited while suspended restarts now, without a restart of the daemon.
        return self._then_call(self._then_sms(d))

    def _forget(self, result: Any = None) -> Any:
        self._suspension_cache = None
        self._auth_cache.clear()
        self._loading.clear()
        self._generation += 1
        return result

    # ---- merchants ----------------------------------------------------------------------------------
    def authenticate_merchant(self, key: str) -> Deferred[MerchantAuth | None]:
        digest = merchants.key_digest(self.rules, key)
        cached = self._auth_cache.get(digest)
        if cached is not None and self.reactor.seconds() - cached[0] < _CACHE_SECONDS:
            return succeed(cached[1])

        def remember(auth: MerchantAuth | None) -> None:
            if len(self._auth_cache) > 10_000:
                self._auth_cache.clear()
            self._auth_cache[digest] = (self.reactor.seconds(), auth)

        return self._shared_read(
            "merchant:" + digest, lambda: self._run(merchants.authenticate, key), remember
        )

    def add_merchant(self, name: str, domain: str | None) -> Deferred[views.MerchantKey]:
        return self._run(merchants.add, name, domain)

    def rotate_merchant_key(self, merchant_id: str, overlap_seconds: int = 0) -> Deferred[views.MerchantKey]:
        return self._run(merchants.rotate_key, merchant_id, overlap_seconds).addCallback(self._forget)

    def remove_merchant(self, merchant_id: str) -> Deferred[None]:
        return self._run(merchants.remove, merchant_id).addCallback(self._forget)

    def list_merchants(self) -> Deferred[views.MerchantList]:
        return self.pool.run(merchants.listing)

    # ---- enrollment ---------------------------------------------------------------------------------
    def enroll(self, fields: dict[str, Any], channel: str, actor: str) -> Deferred[views.Enrollment]:
        return self._then_call(self._run(enrollment.enroll, fields, channel, actor))

    def enrollment_status(self, identifier: str) -> Deferred[views.Enrollment]:
        return self._run(enrollment.status, identifier)

    def request_callback(self, identifier: str) -> Deferred[views.Enrollment]:
        return self._then_call(self._run(enrollment.request_callback, identifier))

    def lock(self, identifier: str, locked: bool, reason: str = "") -> Deferred[views.Lock]:
        return self._run(enrollment.lock, identifier, locked, reason)

    # ---- payments -----------------------------------------------------------------------------------
    def create_payment(
        self, merchant: MerchantAuth, body: dict[str, Any], idempotency_key: str | None
    ) -> Deferred[tuple[int, views.Payment]]:
        return Deferred.fromCoroutine(create_payment(self, merchant, body, idempotency_key))

    def get_payment(self, merchant: MerchantAuth, payment_id: str) -> Deferred[views.Payment]:
        return self._run(payments.get, merchant, payment_id)

    def confirm_payment(self, merchant: MerchantAuth, payment_id: str, token: str) -> Deferred[views.Payment]:
        return self._run(payments.confirm, merchant, payment_id, token)

    def resend_payment(self, merchant: MerchantAuth, payment_id: str) -> Deferred[views.Payment]:
        return self._then_sms(self._run(payments.resend, merchant, payment_id))

    def cancel_payment(self, merchant: MerchantAuth, payment_id: str) -> Deferred[views.Payment]:
        return self._run(payments.cancel, merchant, payment_id)

    # ---- personal section ---------------------------------------------------------------------------
    def profile_challenge(self, identifier: str) -> Deferred[None]:
        return self._then_sms(self._run(profile.request_challenge, identifier))

    def open_profile_session(self, identifier: str, token: str) -> Deferred[views.ProfileSession]:
        return self._run(profile.open_session, identifier, token)

    def get_profile(self, session: str) -> Deferred[views.Profile]:
        return self._run(profile.get, session)

    def update_profile(self, session: str, fields: dict[str, Any]) -> Deferred[views.Profile]:
        return self._then_call(self._then_sms(self._run(profile.update, session, fields)))

    # ---- operator status ----------------------------------------------------------------------------
    def counts(self) -> Deferred[dict[str, Any]]:
        return self.pool.run(_counts, self.rules.now())

    def activity(self, limit: int) -> Deferred[dict[str, list[dict[str, Any]]]]:
        """The latest payments, SMS, callbacks and audit entries (the operator's console)."""
        return self.pool.run(activity.recent, limit)

    # ---- key rotation (core/rekey.py) ---------------------------------------------------------------
    def rekey_batch(self, column: str, after: int, check: bool) -> Deferred[rekey.Batch]:
        return self._run(rekey.batch, column, after, check)

    def merchants_not_rehashed(self) -> Deferred[list[dict[str, str]]]:
        return self._run(merchants.not_rehashed)

    def ping_database(self) -> Deferred[bool]:
        return self.pool.run(lambda s: s.scalar(select(1)) == 1)

    def housekeeping(self) -> Deferred[dict[str, int]]:
        """Stale call attempts (dead daemon, lost AMI event) and the voice fallback. Stale SMS claims are
        the SMPP workers' business (they know which claims are their own): SmsOutbox.recover_stale."""

        def both(s: Session, rules: Rules) -> dict[str, int]:
            return {
                "stale_attempts": callbacks.resolve_stale(s, rules),
                "voice_fallbacks": callbacks.schedule_voice_fallbacks(s, rules),
            }

        def wake(found: dict[str, int]) -> dict[str, int]:
            if any(found.values()):
                self.call_signal.fire()
            return found

        return self._run(both).addCallback(wake)


def _counts(s: Session, now: dt.datetime) -> dict[str, Any]:
    def grouped(column: Any) -> dict[str, int]:
        return {str(k): int(v) for k, v in s.execute(select(column, func.count()).group_by(column)).all()}

    return {
        "cardholders": grouped(Cardholder.status),
        "locked_cardholders": s.scalar(select(func.count()).where(budget.locked_clause(now))),
        "payments": grouped(Payment.status),
        "sms": grouped(SmsMessage.state),
        "callbacks": grouped(CallbackRequest.state),
        "queues": {
            "sms_queued": s.scalar(select(func.count()).where(SmsMessage.state == SmsState.QUEUED)),
            "callbacks_waiting": s.scalar(
                select(func.count()).where(CallbackRequest.state == CallbackState.WAITING)
            ),
        },
    }


class CoreSmsOutbox:
    """ports.SmsOutbox on top of the core; `gone(name)` says which other workers are dead (recover); its
    most frequent writes are group-committed (outbox_batch.py)."""

    def __init__(self, core: Core, gone: Callable[[str], bool] = nobody) -> None:
        self._core = core
        self._gone = gone
        self._submitted: Batcher[Submitted, None] = Batcher(
            core.reactor,
            lambda items: core._run(mark_submitted_many, items),
            lambda item: core._run(outbox.mark_submitted, *item),
        )
        self._receipts: Batcher[tuple[str, str], bool] = Batcher(
            core.reactor,
            lambda items: core._run(apply_receipts, items),
            lambda item: core._run(outbox.apply_receipt, *item),
        )

    def claim(self, worker: str, limit: int, lease: float) -> Deferred[list[OutgoingSms]]:
        return self._core._run(outbox.claim, worker, limit, lease)

    def renew(self, worker: str, sms_ids: list[int], lease: float) -> Deferred[list[int]]:
        return self._core._run(outbox.renew, worker, sms_ids, lease)

    def mark_submitted(
        self, worker: str, sms_id: int, message_ids: list[str], bind: str, resends: int
    ) -> Deferred[None]:
        return self._submitted((worker, sms_id, message_ids, bind, resends))

    def mark_retry(self, worker: str, sms_id: int, reason: str, resends: int) -> Deferred[None]:
        return self._core._run(outbox.mark_retry, worker, sms_id, reason, resends)

    def mark_undeliverable(self, worker: str, sms_id: int, reason: str, resends: int) -> Deferred[None]:
        return self._finish(worker, sms_id, SmsState.UNDELIVERABLE, reason, resends)

    def mark_expired(self, worker: str, sms_id: int, resends: int) -> Deferred[None]:
        return self._finish(worker, sms_id, SmsState.EXPIRED, "token expired before sending", resends)

    def mark_in_doubt(self, worker: str, sms_id: int, reason: str, resends: int) -> Deferred[None]:
        return self._finish(worker, sms_id, SmsState.SUBMITTED, "in doubt: " + reason, resends, True)

    def _finish(
        self, worker: str, sms_id: int, state: SmsState, reason: str, resends: int, in_doubt: bool = False
    ) -> Deferred[None]:
        return self._core._run(outbox.finish, worker, sms_id, state, reason, resends, in_doubt)

    def recover(self, worker: str) -> Deferred[Recovered]:
        return self._then_requeued(self._core._run(outbox.recover, worker, self._gone))

    def recover_stale(self, worker: str, held: list[int]) -> Deferred[Recovered]:
        return self._then_requeued(self._core._run(outbox.recover_stale, worker, held))

    def _then_requeued(self, d: Deferred[Recovered]) -> Deferred[Recovered]:
        """Messages put back in the queue are work for every worker of this process."""

        def wake(found: Recovered) -> Recovered:
            if found.resent:
                self._core.sms_signal.fire()
            return found

        return d.addCallback(wake)

    def apply_receipt(self, message_id: str, state: str) -> Deferred[bool]:
        return self._receipts((message_id, state))

    def on_new_work(self, callback: Callable[[], None]) -> None:
        self._core.sms_signal.subscribe(callback)


class CoreCallbackQueue:
    """ports.CallbackQueue on top of the core; `gone(name)` says which other workers are dead
    (unresolved)."""

    def __init__(self, core: Core, gone: Callable[[str], bool] = nobody) -> None:
        self._core = core
        self._gone = gone

    def claim_due(self, worker: str, limit: int) -> Deferred[list[CallbackJob]]:
        return self._core._run(callbacks.claim_due, worker, limit)

    def mark_originated(self, attempt_id: str, action_id: str) -> Deferred[None]:
        return self._core._run(callbacks.mark_originated, attempt_id, action_id)

    def apply_outcome(self, attempt_id: str, outcome: CallOutcome, detail: str) -> Deferred[None]:
        return self._core._then_call(self._core._run(callbacks.apply_outcome, attempt_id, outcome, detail))

    def unresolved(self, worker: str) -> Deferred[list[CallbackJob]]:
        return self._core._run(callbacks.unresolved, worker, self._gone)

    def on_new_work(self, callback: Callable[[], None]) -> None:
        self._core.call_signal.subscribe(callback)


class CoreIvrGateway:
    """ports.IvrGateway on top of the core."""

    def __init__(self, core: Core) -> None:
        self._core = core

    def start_call(self, attempt_id: str) -> Deferred[IvrCall | None]:
        return self._core._run(callbacks.start_call, attempt_id)

    def check_card_digits(self, attempt_id: str, last8: str) -> Deferred[DigitsVerdict]:
        return self._core._run(callbacks.check_card_digits, attempt_id, last8)

    def end_call(self, attempt_id: str, reason: EndReason) -> Deferred[None]:
        return self._core._then_call(self._core._run(callbacks.end_call, attempt_id, reason))
