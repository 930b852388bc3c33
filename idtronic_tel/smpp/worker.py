"""The outbox worker: claims queued SMS from SmsOutbox and submits them through the binds.

Rules (see SmsOutbox in core/ports.py):
* Claim only what the binds' free windows can take, when woken (on_new_work) and every poll_interval; with
  messages in flight, wait until a tenth of the bound windows is free, so that a busy worker claims in
  batches (one database transaction per batch) rather than one message per submit_sm_resp, while its
  windows stay ~95 % full. Claimed but unrecorded messages never exceed the bound windows: that bounds
  what a crash can leave on the wire, hence the duplicates it can cause.
* Messages leave in claim order. Each part goes out when a bind has window space and rate tokens; the
  parts of one long message stay on one bind.
* Right before writing a part: if the token has expired (less than a second left), the message is
  mark_expired and never sent late; the part carries validity_period = the time left.
* A message is mark_submitted (one id per part, in order) only once every part's submit_sm_resp is in.
* ESME_RTHROTTLED / ESME_RMSGQFUL (and transient SMSC errors): the bind halves its rate and the same part is
  written again, ahead of later messages. Any other error status: mark_undeliverable.
* A part written whose response never came (timeout, connection lost) may or may not have reached the
  phone: it is written again, ahead of later messages, while its token is valid (same text, same code: a
  duplicate is harmless, a loss blocks the purchase). At most one window per bind is on the wire when a
  link drops, so each incident duplicates at most that. After MAX_RESENDS copies it is mark_in_doubt.
* Claims are leased: the lease is renewed every RENEW_INTERVAL, and a part is written only while the
  lease outlasts its response (plus FENCE_MARGIN). So when another daemon finds the lease run out
  (recover_stale), nobody is waiting for a response to that message any more.
* No bind up, or the worker stopping: messages not finished go back to the outbox (mark_retry), order kept
  there; a failed record is retried until the database answers.

Beside it: jobs.py (a claimed message, the send queue, the phases), leases.py (renewal, fencing, stale
claims), ledger.py (claimed messages until their outcome is recorded).
"""

from __future__ import annotations

import itertools

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..core.ports import MAX_RESENDS, OutgoingSms, SmsOutbox
from . import codec
from .binds import BindRouter, SmppBind
from .errors import NoResponse, NotBound, RequestFailed
from .jobs import (
    PHASES,
    RECORD_RETRY_FIRST,
    RECORD_RETRY_MAX,
    RESENDS,
    Job,
    Outcome,
    Phase,
    PhaseEvent,
    SendQueue,
)
from .leases import Leases
from .ledger import Ledger
from .messages import validity_for
from .receipts import SubmissionTracker, normalise_id
from .status import THROTTLING, TRANSIENT, status_name


class OutboxWorker(Service):
    log = Logger()

    def __init__(
        self,
        outbox: SmsOutbox,
        router: BindRouter,
        clock: IReactorTime,
        worker: str,
        poll_interval: float = 0.5,
        registered_delivery: bool = True,
        tracker: SubmissionTracker | None = None,
        response_timeout: float = 10.0,
    ) -> None:
        self.outbox = outbox
        self.tracker = tracker or SubmissionTracker()
        self.router = router
        self.clock = clock
        self.worker = worker
        self.poll_interval = poll_interval
        self.registered_delivery = registered_delivery
        self.response_timeout = response_timeout
        self.setName(f"smpp-worker:{worker}")
        self._queue = SendQueue()
        self._ledger = Ledger(
            outbox, worker, self.tracker, lambda: bool(self.running), self._sleep, self._recorded
        )
        self._leases = Leases(
            outbox, worker, clock, response_timeout, self._ledger, self._taken_over, self._pump
        )
        self._order = itertools.count()
        self.phase = Phase.STOPPED
        self._more_work = True  # the last claim was full, or someone woke us
        self._pumping = False
        self._pump_again = False
        self._poll_call: IDelayedCall | None = None
        self._rate_call: IDelayedCall | None = None
        self._sleeping: set[Deferred[None]] = set()
        self._registered = False

    def _move(self, event: PhaseEvent) -> None:
        self.phase = PHASES.next(self.phase, event)

    # -- life cycle ---------------------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        if not self._registered:
            self.outbox.on_new_work(self.wake)
            self.router.subscribe(self._binds_changed)
            self._registered = True
        self._move(PhaseEvent.START)
        Deferred.fromCoroutine(self._recover())

    async def _recover(self) -> None:
        """What this worker's previous run left on the wire goes out again first; tried until the
        database answers (the daemon may start before it)."""
        delay = RECORD_RETRY_FIRST
        while self.phase is Phase.RECOVERING:
            try:
                found = await self.outbox.recover(self.worker)
            except Exception:
                self.log.failure("SMPP worker {worker}: recover failed; retrying", worker=self.worker)
                if not await self._sleep(delay):
                    return
                delay = min(delay * 2, RECORD_RETRY_MAX)
                continue
            self._ledger.report(found, "crash")
            if self.phase is not Phase.RECOVERING:
                return  # stopped meanwhile
            self._move(PhaseEvent.RECOVERED)
            self._poll()
            self._leases.start()
            return

    async def _sleep(self, delay: float) -> bool:
        """Wait on the clock; False if the worker stopped meanwhile."""
        sleep: Deferred[None] = deferLater(self.clock, delay)
        self._sleeping.add(sleep)
        try:
            await sleep
        except CancelledError:
            return False
        finally:
            self._sleeping.discard(sleep)
        return bool(self.running)

    def stopService(self) -> Deferred[None]:
        """Stop claiming; give back what was not written; wait for the responses of what was."""
        super().stopService()
        self._move(PhaseEvent.STOP)
        self._leases.stop()
        for call in (self._poll_call, self._rate_call):
            if call is not None and call.active():
                call.cancel()
        self._poll_call = self._rate_call = None
        for sleep in list(self._sleeping):
            sleep.cancel()
        for job in self._queue.take_all():
            job.fail(Outcome.RETRY, "worker stopping")
            self._ledger.resolve(job)
        return self._ledger.when_idle()

    def _recorded(self) -> None:
        if self._more_work:
            self._claim()

    # -- claims taken over -----------------------------------------------------------------------------------

    def _taken_over(self, job: Job) -> None:
        """Another daemon found this claim's lease run out (we could not renew it) and took it."""
        self.log.warn(
            "SMPP sms {sms_id}: claim taken over by another daemon; not sent from here",
            sms_id=job.sms.sms_id,
        )
        self._queue.remove(job)
        job.arrived = [False] * len(job.arrived)  # its resends are the new claimer's to count
        job.fail(Outcome.RETRY, "claim taken over")  # recorded as a no-op: the claim is not ours
        self._ledger.resolve(job)

    # -- claiming -----------------------------------------------------------------------------------------

    def wake(self) -> None:
        """New work was queued, or the service resumed."""
        self._more_work = True
        self._claim()

    def _poll(self) -> None:
        self._poll_call = self.clock.callLater(self.poll_interval, self._poll)
        self._more_work = True
        self._claim()

    def _binds_changed(self) -> None:
        self._pump()
        if self._more_work:
            self._claim()

    def _claim(self) -> None:
        if self.phase is not Phase.READY or not self._more_work:
            return
        windows, free = self._windows()
        if free < (batch := max(1, windows // 10)):
            return  # parts are in flight: their responses call _claim again
        limit = min(free - sum(len(job.todo) for job in self._queue), windows - self._ledger.held())
        if limit <= 0 or (limit < batch and self._ledger.jobs):
            return  # records are late, or too few: each one that lands calls _claim again
        self._move(PhaseEvent.CLAIM)
        self._more_work = False
        started = self.clock.seconds()

        def claimed(messages: list[OutgoingSms]) -> None:
            if self.phase is Phase.CLAIMING:  # not stopped meanwhile: the messages are sent all the same
                self._move(PhaseEvent.CLAIMED)
            if len(messages) >= limit:
                self._more_work = True
            for sms in messages:
                self._enqueue(sms, started)
            self._pump()
            if self._more_work:
                self._claim()

        def failed(failure: Failure) -> None:
            if self.phase is Phase.CLAIMING:
                self._move(PhaseEvent.CLAIMED)
            self.log.failure("SMPP worker {worker}: claim failed", failure, worker=self.worker)

        self.outbox.claim(self.worker, limit, self._leases.lease).addCallbacks(claimed, failed)

    def _windows(self) -> tuple[int, int]:
        """Bound binds' windows and their free part, in one pass (runs after every response and record)."""
        windows = free = 0
        for bind in self.router.binds:
            if bind.bound:
                windows += bind.window
                free += max(0, bind.window - bind.in_flight)
        return windows, free

    def _claim_batch(self) -> int:
        return max(1, self._windows()[0] // 10)

    def _enqueue(self, sms: OutgoingSms, lease_base: float) -> None:
        job = Job(next(self._order), sms, lease_base, expires=sms.expires_at.timestamp(), resends=sms.resends)
        self._ledger.jobs.add(job)
        try:
            job.encode()
        except ValueError as exc:
            job.queued = False  # never queued
            job.fail(Outcome.UNDELIVERABLE, str(exc))
            self._ledger.resolve(job)
            return
        self._queue.append(job)

    # -- sending ------------------------------------------------------------------------------------------

    def _pump(self) -> None:
        """Write as many parts as binds, windows and rates allow, in order."""
        if self._pumping:
            self._pump_again = True
            return
        self._pumping = True
        try:
            self._pump_again = True
            while self._pump_again:
                self._pump_again = False
                self._pump_once()
        finally:
            self._pumping = False

    def _pump_once(self) -> None:
        while self._queue:
            job = self._queue.head()
            if not job.todo:
                self._queue.pop_head()
                continue
            validity = validity_for(job.expires - self.clock.seconds())
            if validity is None:
                self._queue.pop_head()
                job.fail(Outcome.EXPIRED, "token expired before it could be sent")
                self._ledger.resolve(job)
                continue
            if job.arrived[job.todo[0]] and job.resends >= MAX_RESENDS:
                self._queue.pop_head()
                job.fail(Outcome.IN_DOUBT, f"no response to {job.resends + 1} copies")
                self._ledger.resolve(job)
                continue
            if not self._leases.holds(job):
                return  # the next renewal of the leases pumps again
            bind, wait = self.router.pick(job.bind)
            if bind is None:
                if wait is not None:
                    self._wake_in(wait)
                    return
                if job.bind is not None and not job.bind.bound:
                    if job.outstanding:
                        return  # its responses, or their loss, come first
                    job.restart()
                    continue
                if not self.router.any_bound():
                    self._give_back_all("no SMPP bind available")
                return  # windows full: a response will wake us
            index = job.todo.popleft()
            if not job.todo:
                self._queue.pop_head()
            try:
                written = bind.submit(
                    job.submit_fields(index, bind.config, validity, self.registered_delivery)
                )
            except NotBound:
                self._requeue(job, index)
                continue
            if job.arrived[index]:
                job.resends += 1
                RESENDS.labels("interrupted").inc()
            job.bind = bind
            job.outstanding += 1
            written.addCallbacks(
                self._part_accepted,
                self._part_failed,
                callbackArgs=(job, index, bind),
                errbackArgs=(job, index, bind),
            )

    def _wake_in(self, delay: float) -> None:
        if self._rate_call is not None and self._rate_call.active():
            return

        def wake() -> None:
            self._rate_call = None
            self._pump()

        self._rate_call = self.clock.callLater(max(delay, 0.001), wake)  # less may not move a ~1.8e9 s clock

    def _give_back_all(self, reason: str) -> None:
        for job in self._queue.take_all():
            job.fail(Outcome.RETRY, reason)
            self._ledger.resolve(job)

    def _requeue(self, job: Job, index: int) -> None:
        """Put a part back to be written again, keeping claim order among the queued messages."""
        job.todo.appendleft(index)
        if job.outstanding == 0 and not any(job.ids):
            job.bind = None  # nothing of it accepted: any bind will do
        self._queue.put_back(job)

    # -- responses ----------------------------------------------------------------------------------------

    def _part_accepted(self, pdu: codec.Pdu, job: Job, index: int, bind: SmppBind) -> None:
        job.outstanding -= 1
        bind.answered()
        message_id = normalise_id(pdu.body.message_id or b"")
        job.ids[index] = message_id
        job.arrived[index] = True
        job.accepted_ids.append(message_id)
        self.tracker.accepted(message_id)
        bind.bucket.accepted()
        self._ledger.resolve(job)
        self._window_freed()

    def _part_failed(self, failure: Failure, job: Job, index: int, bind: SmppBind) -> None:
        job.outstanding -= 1
        bind.answered()
        error = failure.value
        if isinstance(error, RequestFailed) and error.status in THROTTLING | TRANSIENT:
            bind.bucket.throttled()
            self.log.info(
                "SMPP {bind}: submit_sm answered {status}; slowing down to {rate:.1f}/s and retrying",
                bind=bind.config.name,
                status=status_name(error.status),
                rate=bind.bucket.rate,
            )
            if job.failure is None and self.running:
                self._requeue(job, index)
                self._window_freed()
                return
            job.fail(Outcome.RETRY, status_name(error.status))
        elif isinstance(error, RequestFailed):
            job.fail(Outcome.UNDELIVERABLE, f"SMSC refused: {status_name(error.status)}")
        else:
            # NoResponse (timeout, connection lost), or anything after the write: it may have arrived.
            if not failure.check(NoResponse):
                self.log.failure("SMPP {bind}: unexpected submit failure", failure, bind=bind.config.name)
            job.arrived[index] = True
            if job.failure is None and self.running:
                self.log.info(
                    "SMPP sms {sms_id}: {error}; sending it again", sms_id=job.sms.sms_id, error=error
                )
                self._requeue(job, index)
                self._window_freed()
                return
            job.fail(Outcome.RETRY, f"submit_sm written, {error}")
        self._queue.remove(job)
        self._ledger.resolve(job)
        self._window_freed()

    def _window_freed(self) -> None:
        self._pump()
        if self._more_work:
            self._claim()
