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
"""

from __future__ import annotations

import enum
import itertools
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from prometheus_client import Counter
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..core.ports import MAX_RESENDS, OutgoingSms, Recovered, SmsOutbox
from ..core.states import Transitions
from . import codec
from .binds import BindRouter, SmppBind
from .errors import NoResponse, NotBound, RequestFailed
from .messages import EncodedPart, destination_address, encode_text, validity_for
from .receipts import SubmissionTracker, normalise_id
from .status import THROTTLING, TRANSIENT, status_name

OUTCOMES = Counter(
    "idtronic_smpp_messages",
    "SMS leaving the outbox worker, by outcome (submitted, in_doubt, ...)",
    ["outcome"],
)
RESENDS = Counter(
    "idtronic_smpp_resends",
    "SMS sent again because an earlier copy may have reached the SMSC unanswered, by cause: crash (left "
    "in flight by this daemon's previous run), stale_claim (by another daemon that is gone), interrupted "
    "(timeout or link lost while running)",
    ["cause"],
)

# Lease of a claim = response_timeout + LEASE_SLACK, renewed every RENEW_INTERVAL. A part is written only
# while now + response_timeout + FENCE_MARGIN is inside the last lease confirmed: the margin covers the
# clock skew between daemons, the slack a database that answers renewals late.
LEASE_SLACK: Final = 30.0
RENEW_INTERVAL: Final = 5.0
FENCE_MARGIN: Final = 5.0
# A failed record (database unreachable) is tried again after these delays, doubling up to the maximum.
RECORD_RETRY_FIRST: Final = 0.5
RECORD_RETRY_MAX: Final = 10.0

_OUTCOME_COUNTERS: dict[str, Any] = {}


def _outcome_counter(outcome: str) -> Any:
    """OUTCOMES.labels(outcome), looked up once per outcome (labels() costs a few µs per call)."""
    counter = _OUTCOME_COUNTERS.get(outcome)
    if counter is None:
        counter = _OUTCOME_COUNTERS[outcome] = OUTCOMES.labels(outcome)
    return counter


class Outcome(enum.IntEnum):
    """How a message ends when it does not end submitted; the highest rank wins when parts disagree."""

    RETRY = 0
    EXPIRED = 1
    IN_DOUBT = 2
    UNDELIVERABLE = 3


class Phase(enum.Enum):
    STOPPED = "stopped"
    RECOVERING = "recovering"  # queueing again what an earlier run left in SENDING (tried until it works)
    READY = "ready"  # claims whenever the windows have room
    CLAIMING = "claiming"  # one claim in flight


class PhaseEvent(enum.Enum):
    START = "start"
    RECOVERED = "recovered"
    CLAIM = "claim"
    CLAIMED = "claimed"  # the claim answered (or failed)
    STOP = "stop"


_P, _W = Phase, PhaseEvent
PHASES = Transitions(
    "SMPP outbox worker",
    Phase,
    PhaseEvent,
    {
        (_P.STOPPED, _W.START): _P.RECOVERING,
        (_P.RECOVERING, _W.RECOVERED): _P.READY,
        (_P.READY, _W.CLAIM): _P.CLAIMING,
        (_P.CLAIMING, _W.CLAIMED): _P.READY,
        **{(phase, _W.STOP): _P.STOPPED for phase in Phase},
    },
    initial=(_P.STOPPED,),
)


@dataclass(eq=False)
class _Job:
    order: int
    sms: OutgoingSms
    lease_base: float  # when the last claim or renewal that covered it started (clock seconds)
    parts: list[EncodedPart] = field(default_factory=list)
    ids: list[str | None] = field(default_factory=list)
    todo: deque[int] = field(default_factory=deque)  # part indexes still to write
    arrived: list[bool] = field(default_factory=list)  # per part: a copy may have reached the SMSC
    accepted_ids: list[str] = field(default_factory=list)  # every id accepted, for the tracker
    expires: float = 0.0  # sms.expires_at as a POSIX timestamp
    address: str = ""  # destination_addr
    bind: SmppBind | None = None
    outstanding: int = 0  # parts written, response awaited
    resends: int = 0
    failure: tuple[Outcome, str] | None = None
    resolved: bool = False
    queued: bool = True  # in the worker's send queue

    def fail(self, outcome: Outcome, reason: str) -> None:
        if self.failure is None or outcome > self.failure[0]:
            self.failure = (outcome, reason)
        self.todo.clear()


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
        self.lease = response_timeout + LEASE_SLACK
        self.setName(f"smpp-worker:{worker}")
        self._queue: deque[_Job] = deque()
        self._jobs: set[_Job] = set()  # claimed and not yet recorded
        self._order = itertools.count()
        self.phase = Phase.STOPPED
        self._more_work = True  # the last claim was full, or someone woke us
        self._pumping = False
        self._pump_again = False
        self._poll_call: IDelayedCall | None = None
        self._rate_call: IDelayedCall | None = None
        self._lease_call: IDelayedCall | None = None
        self._recording: set[Deferred[None]] = set()
        self._sleeping: set[Deferred[None]] = set()
        self._idle_waiters: list[Deferred[None]] = []
        self._registered = False

    def _move(self, event: PhaseEvent) -> None:
        self.phase = PHASES.next(self.phase, event)

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock.seconds(), UTC)

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
            self._report(found, "crash")
            if self.phase is not Phase.RECOVERING:
                return  # stopped meanwhile
            self._move(PhaseEvent.RECOVERED)
            self._poll()
            self._lease_call = self.clock.callLater(RENEW_INTERVAL, self._tend_leases)
            return

    def _report(self, found: Recovered, cause: str) -> None:
        if not found:
            return
        RESENDS.labels(cause).inc(found.resent)
        _outcome_counter("expired").inc(found.expired)
        _outcome_counter("in_doubt").inc(found.in_doubt)
        self.log.warn(
            "SMPP worker {worker}: SMS left in flight ({cause}): {resent} sent again, {expired} expired, "
            "{in_doubt} in doubt",
            worker=self.worker,
            cause=cause,
            resent=found.resent,
            expired=found.expired,
            in_doubt=found.in_doubt,
        )

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
        for call in (self._poll_call, self._rate_call, self._lease_call):
            if call is not None and call.active():
                call.cancel()
        self._poll_call = self._rate_call = self._lease_call = None
        for sleep in list(self._sleeping):
            sleep.cancel()
        queue, self._queue = self._queue, deque()
        for job in queue:
            job.queued = False
            job.fail(Outcome.RETRY, "worker stopping")
            self._maybe_resolve(job)
        return self._when_idle()

    def _when_idle(self) -> Deferred[None]:
        if not self._jobs and not self._recording:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._idle_waiters.append(waiter)
        return waiter

    def _check_idle(self) -> None:
        if not self._jobs and not self._recording and self._idle_waiters:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    # -- leases -------------------------------------------------------------------------------------------

    def _tend_leases(self) -> None:
        """Renew the lease of every claim held; then send again what dead daemons left on the wire."""
        self._lease_call = None
        jobs = list(self._jobs)  # resolved ones too: their rows stay SENDING until recorded
        started = self.clock.seconds()
        ids = [job.sms.sms_id for job in jobs]
        renewed = self.outbox.renew(self.worker, ids, self.lease) if ids else succeed([])

        def held(ids: list[int]) -> Deferred[Recovered]:
            if not self.running:
                return succeed(Recovered())
            still = set(ids)
            for job in jobs:
                if job.sms.sms_id in still:
                    job.lease_base = max(job.lease_base, started)
                elif not job.resolved:
                    self._taken_over(job)
            self._pump()
            return self.outbox.recover_stale(self.worker, [job.sms.sms_id for job in self._jobs])

        def failed(failure: Failure) -> None:
            self.log.failure("SMPP worker {worker}: lease renewal failed", failure, worker=self.worker)

        def again(_: object) -> None:
            if self.running:
                self._lease_call = self.clock.callLater(RENEW_INTERVAL, self._tend_leases)

        renewed.addCallback(held).addCallback(self._report, "stale_claim").addErrback(failed)
        renewed.addCallback(again)

    def _taken_over(self, job: _Job) -> None:
        """Another daemon found this claim's lease run out (we could not renew it) and took it."""
        self.log.warn(
            "SMPP sms {sms_id}: claim taken over by another daemon; not sent from here",
            sms_id=job.sms.sms_id,
        )
        if job.queued:
            self._queue.remove(job)
            job.queued = False
        job.arrived = [False] * len(job.arrived)  # its resends are the new claimer's to count
        job.fail(Outcome.RETRY, "claim taken over")  # recorded as a no-op: the claim is not ours
        self._maybe_resolve(job)

    def _lease_holds(self, job: _Job) -> bool:
        """Whether a part written now is answered (or given up) before anyone may take the claim over."""
        return self.clock.seconds() + self.response_timeout + FENCE_MARGIN <= job.lease_base + self.lease

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
        free = self.router.free_window()
        if free <= 0:
            return
        if free < self._claim_batch():
            return  # parts are in flight: their responses call _claim again
        windows = sum(bind.window for bind in self.router.binds if bind.bound)
        limit = min(free - sum(len(job.todo) for job in self._queue), windows - len(self._jobs))
        if limit <= 0 or (limit < self._claim_batch() and self._jobs):
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

        self.outbox.claim(self.worker, limit, self.lease).addCallbacks(claimed, failed)

    def _claim_batch(self) -> int:
        windows = sum(bind.window for bind in self.router.binds if bind.bound)
        return max(1, windows // 10)

    def _enqueue(self, sms: OutgoingSms, lease_base: float) -> None:
        job = _Job(
            next(self._order), sms, lease_base, expires=sms.expires_at.timestamp(), resends=sms.resends
        )
        self._jobs.add(job)
        try:
            job.address = destination_address(sms.destination)
            job.parts = encode_text(sms.text, reference=sms.sms_id)
        except ValueError as exc:
            job.queued = False
            job.fail(Outcome.UNDELIVERABLE, str(exc))
            self._maybe_resolve(job)
            return
        job.ids = [None] * len(job.parts)
        job.arrived = [False] * len(job.parts)
        job.todo.extend(range(len(job.parts)))
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
            job = self._queue[0]
            if not job.todo:
                self._dequeue_head()
                continue
            validity = validity_for(job.expires - self.clock.seconds())
            if validity is None:
                self._dequeue_head()
                job.fail(Outcome.EXPIRED, "token expired before it could be sent")
                self._maybe_resolve(job)
                continue
            if job.arrived[job.todo[0]] and job.resends >= MAX_RESENDS:
                self._dequeue_head()
                job.fail(Outcome.IN_DOUBT, f"no response to {job.resends + 1} copies")
                self._maybe_resolve(job)
                continue
            if not self._lease_holds(job):
                return  # the next renewal of the leases pumps again
            bind, wait = self.router.pick(job.bind)
            if bind is None:
                if wait is not None:
                    self._wake_in(wait)
                    return
                if job.bind is not None and not job.bind.bound:
                    if job.outstanding:
                        return  # its responses, or their loss, come first
                    self._restart(job)
                    continue
                if not self.router.any_bound():
                    self._give_back_all("no SMPP bind available")
                return  # windows full: a response will wake us
            index = job.todo.popleft()
            if not job.todo:
                self._dequeue_head()
            try:
                written = bind.submit(self._fields(job, index, bind, validity))
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

    def _restart(self, job: _Job) -> None:
        """The bind of a long message went down between its parts: send it whole again on any bind
        (same text and UDH reference: the phone reassembles it as one message)."""
        job.bind = None
        job.ids = [None] * len(job.parts)
        job.todo = deque(range(len(job.parts)))

    def _dequeue_head(self) -> None:
        self._queue.popleft().queued = False

    def _wake_in(self, delay: float) -> None:
        if self._rate_call is not None and self._rate_call.active():
            return

        def wake() -> None:
            self._rate_call = None
            self._pump()

        # At least 1 ms: at epoch ~1.8e9 s, a shorter delay may not move the clock at all.
        self._rate_call = self.clock.callLater(max(delay, 0.001), wake)

    def _give_back_all(self, reason: str) -> None:
        queue, self._queue = self._queue, deque()
        for job in queue:
            job.queued = False
            job.fail(Outcome.RETRY, reason)
            self._maybe_resolve(job)

    def _requeue(self, job: _Job, index: int) -> None:
        """Put a part back to be written again, keeping claim order among the queued messages."""
        job.todo.appendleft(index)
        if job.outstanding == 0 and not any(job.ids):
            job.bind = None  # nothing of it accepted: any bind will do
        if job.queued:
            return
        job.queued = True
        position = 0
        for position, queued in enumerate(self._queue):  # noqa: B007
            if queued.order > job.order:
                break
        else:
            position = len(self._queue)
        self._queue.insert(position, job)

    def _fields(self, job: _Job, index: int, bind: SmppBind, validity: str) -> dict[str, Any]:
        config = bind.config
        part = job.parts[index]
        return {
            "service_type": "",
            "source_addr_ton": config.source_ton,
            "source_addr_npi": config.source_npi,
            "source_addr": config.source_addr,
            "dest_addr_ton": config.dest_ton,
            "dest_addr_npi": config.dest_npi,
            "destination_addr": job.address,
            "esm_class": part.esm_class,
            "protocol_id": 0,
            "priority_flag": 0,
            "schedule_delivery_time": "",
            "validity_period": validity,
            "registered_delivery": 1 if self.registered_delivery else 0,
            "replace_if_present_flag": 0,
            "data_coding": part.data_coding,
            "sm_default_msg_id": 0,
            "short_message": part.short_message,
        }

    # -- responses ----------------------------------------------------------------------------------------

    def _part_accepted(self, pdu: codec.Pdu, job: _Job, index: int, bind: SmppBind) -> None:
        job.outstanding -= 1
        message_id = normalise_id(pdu.body.message_id or b"")
        job.ids[index] = message_id
        job.arrived[index] = True
        job.accepted_ids.append(message_id)
        self.tracker.accepted(message_id)
        bind.bucket.accepted()
        self._maybe_resolve(job)
        self._window_freed()

    def _part_failed(self, failure: Failure, job: _Job, index: int, bind: SmppBind) -> None:
        job.outstanding -= 1
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
        if job.queued:
            self._queue.remove(job)
            job.queued = False
        self._maybe_resolve(job)
        self._window_freed()

    def _window_freed(self) -> None:
        self._pump()
        if self._more_work:
            self._claim()

    # -- outcomes -----------------------------------------------------------------------------------------

    def _maybe_resolve(self, job: _Job) -> None:
        if job.resolved or job.outstanding or job.queued or (job.todo and job.failure is None):
            return
        job.resolved = True
        if job.failure is None:
            _outcome_counter("submitted").inc()
        else:
            outcome, reason = job.failure
            if outcome is Outcome.RETRY and any(job.arrived):
                # The next claim sends it whole again: a copy of what may have arrived.
                if job.resends >= MAX_RESENDS:
                    job.failure = (Outcome.IN_DOUBT, f"{reason}; {job.resends + 1} copies sent")
                else:
                    job.resends += 1
                    RESENDS.labels("interrupted").inc()
            outcome, reason = job.failure
            _outcome_counter(outcome.name.lower()).inc()
            self.log.info(
                "SMPP sms {sms_id}: {outcome} ({reason})",
                sms_id=job.sms.sms_id,
                outcome=outcome.name.lower(),
                reason=reason,
            )
        recorded = self._record(job)
        self._recording.add(recorded)

        def done(_: None) -> None:
            self.tracker.recorded(job.accepted_ids)
            self._recording.discard(recorded)
            self._jobs.discard(job)
            self._check_idle()
            if self._more_work:
                self._claim()

        recorded.addCallback(done)
        self._check_idle()

    def _record(self, job: _Job) -> Deferred[None]:
        """The outcome into the outbox (one database call when it works: this is per message)."""
        return self._write_outcome(job).addErrback(
            lambda failure: Deferred.fromCoroutine(self._record_again(job, failure))
        )

    async def _record_again(self, job: _Job, failure: Failure) -> None:
        """Tried again until the database answers. A worker that stops meanwhile gives up: the message
        stays SENDING, and its next start sends it again."""
        delay = RECORD_RETRY_FIRST
        while True:
            self.log.failure(
                "SMPP sms {sms_id}: recording the outcome failed", failure, sms_id=job.sms.sms_id
            )
            if not self.running or not await self._sleep(delay):
                return
            delay = min(delay * 2, RECORD_RETRY_MAX)
            try:
                await self._write_outcome(job)
                return
            except Exception:
                failure = Failure()

    def _write_outcome(self, job: _Job) -> Deferred[None]:
        worker, sms_id, resends = self.worker, job.sms.sms_id, job.resends
        if job.failure is None:
            ids = [message_id for message_id in job.ids if message_id is not None]
            assert job.bind is not None and len(ids) == len(job.parts)
            return self.outbox.mark_submitted(worker, sms_id, ids, job.bind.config.name, resends)
        outcome, reason = job.failure
        if outcome is Outcome.RETRY:
            return self.outbox.mark_retry(worker, sms_id, reason, resends)
        if outcome is Outcome.EXPIRED:
            return self.outbox.mark_expired(worker, sms_id, resends)
        if outcome is Outcome.IN_DOUBT:
            return self.outbox.mark_in_doubt(worker, sms_id, reason, resends)
        return self.outbox.mark_undeliverable(worker, sms_id, reason, resends)
