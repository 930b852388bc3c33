"""The outbox worker: claims queued SMS from SmsOutbox and submits them through the binds.

Rules (see SmsOutbox in core/ports.py):
* Claim only what the binds' free windows can take, when woken (on_new_work) and every poll_interval; with
  messages in flight, wait until a tenth of the bound windows is free, so that a busy worker claims in
  batches (one database transaction per batch) rather than one message per submit_sm_resp, while its
  windows stay ~95 % full.
* Messages leave in claim order. Each part goes out when a bind has window space and rate tokens; the
  parts of one long message stay on one bind.
* Right before writing a part: if the token has expired (less than a second left), the message is
  mark_expired and never sent late; the part carries validity_period = the time left.
* A message is mark_submitted (one id per part, in order) only once every part's submit_sm_resp is in.
* ESME_RTHROTTLED / ESME_RMSGQFUL (and transient SMSC errors): the bind halves its rate and the same part is
  written again, ahead of later messages. Any other error status: mark_undeliverable.
* A part written whose response never came (timeout, connection lost): mark_in_doubt. The same code is
  never sent twice automatically.
* No bind up: messages not yet written go back to the outbox (mark_retry), order kept there.
"""

from __future__ import annotations

import enum
import itertools
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..core.ports import OutgoingSms, SmsOutbox
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
    RECOVERING = "recovering"  # resolving what an earlier run left in SENDING
    READY = "ready"  # claims whenever the windows have room
    CLAIMING = "claiming"  # one claim in flight
    HALTED = "halted"  # recovery failed: nothing is sent until a restart


class PhaseEvent(enum.Enum):
    START = "start"
    RECOVERED = "recovered"
    RECOVERY_FAILED = "recovery_failed"
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
        (_P.RECOVERING, _W.RECOVERY_FAILED): _P.HALTED,
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
    parts: list[EncodedPart]
    ids: list[str | None]
    todo: deque[int]  # part indexes still to write
    expires: float = 0.0  # sms.expires_at as a POSIX timestamp
    address: str = ""  # destination_addr
    bind: SmppBind | None = None
    outstanding: int = 0  # parts written, response awaited
    written: int = 0
    failure: tuple[Outcome, str] | None = None
    resolved: bool = False
    queued: bool = True  # in the worker's send queue

    def fail(self, outcome: Outcome, reason: str) -> None:
        if self.failure is None or outcome > self.failure[0]:
            self.failure = (outcome, reason)
        self.todo.clear()

    def untouched(self) -> bool:
        """No part accepted and none awaiting its response: giving it back to the outbox is safe."""
        return self.outstanding == 0 and all(message_id is None for message_id in self.ids)


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
    ) -> None:
        self.outbox = outbox
        self.tracker = tracker or SubmissionTracker()
        self.router = router
        self.clock = clock
        self.worker = worker
        self.poll_interval = poll_interval
        self.registered_delivery = registered_delivery
        self.setName(f"smpp-worker:{worker}")
        self._queue: deque[_Job] = deque()
        self._jobs: set[_Job] = set()  # claimed and not yet resolved
        self._order = itertools.count()
        self.phase = Phase.STOPPED
        self._more_work = True  # the last claim was full, or someone woke us
        self._pumping = False
        self._pump_again = False
        self._poll_call: IDelayedCall | None = None
        self._rate_call: IDelayedCall | None = None
        self._recording: set[Deferred[None]] = set()
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

        def recovered(count: int) -> None:
            if count:
                self.log.warn(
                    "SMPP worker {worker}: {count} message(s) left in SENDING resolved as in doubt",
                    worker=self.worker,
                    count=count,
                )
            if self.phase is Phase.RECOVERING:  # not stopped meanwhile
                self._move(PhaseEvent.RECOVERED)
                self._poll()

        def failed(failure: Failure) -> None:
            if self.phase is Phase.RECOVERING:
                self._move(PhaseEvent.RECOVERY_FAILED)
            self.log.failure("SMPP worker {worker}: recover failed; not sending", failure, worker=self.worker)

        self.outbox.recover(self.worker).addCallbacks(recovered, failed)

    def stopService(self) -> Deferred[None]:
        """Stop claiming; give back what was not written; wait for the responses of what was."""
        super().stopService()
        self._move(PhaseEvent.STOP)
        for call in (self._poll_call, self._rate_call):
            if call is not None and call.active():
                call.cancel()
        self._poll_call = self._rate_call = None
        queue, self._queue = self._queue, deque()
        for job in queue:
            job.queued = False
            if job.untouched():
                job.fail(Outcome.RETRY, "worker stopping")
            else:
                job.fail(Outcome.IN_DOUBT, "worker stopped in the middle of a long message")
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
        limit = free - sum(len(job.todo) for job in self._queue)
        if limit <= 0:
            return
        self._move(PhaseEvent.CLAIM)
        self._more_work = False

        def claimed(messages: list[OutgoingSms]) -> None:
            if self.phase is Phase.CLAIMING:  # not stopped meanwhile: the messages are sent all the same
                self._move(PhaseEvent.CLAIMED)
            if len(messages) >= limit:
                self._more_work = True
            for sms in messages:
                self._enqueue(sms)
            self._pump()
            if self._more_work:
                self._claim()

        def failed(failure: Failure) -> None:
            if self.phase is Phase.CLAIMING:
                self._move(PhaseEvent.CLAIMED)
            self.log.failure("SMPP worker {worker}: claim failed", failure, worker=self.worker)

        self.outbox.claim(self.worker, limit).addCallbacks(claimed, failed)

    def _claim_batch(self) -> int:
        windows = sum(bind.window for bind in self.router.binds if bind.bound)
        return max(1, windows // 10)

    def _enqueue(self, sms: OutgoingSms) -> None:
        job = _Job(next(self._order), sms, [], [], deque(), sms.expires_at.timestamp())
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
            bind, wait = self.router.pick(job.bind)
            if bind is None:
                if wait is not None:
                    self._wake_in(wait)
                    return
                if job.bind is not None and not job.bind.bound:
                    self._dequeue_head()
                    job.fail(
                        Outcome.IN_DOUBT, f"bind {job.bind.config.name} lost in the middle of a long message"
                    )
                    self._maybe_resolve(job)
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
            job.bind = bind
            job.written += 1
            job.outstanding += 1
            written.addCallbacks(
                self._part_accepted,
                self._part_failed,
                callbackArgs=(job, index, bind),
                errbackArgs=(job, index, bind),
            )

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
            if job.untouched():
                job.fail(Outcome.RETRY, reason)
            else:
                job.fail(Outcome.IN_DOUBT, f"{reason} in the middle of a long message")
            self._maybe_resolve(job)

    def _requeue(self, job: _Job, index: int) -> None:
        """Put a part back to be written again, keeping claim order among the queued messages."""
        job.todo.appendleft(index)
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
            job.fail(Outcome.RETRY if job.untouched() else Outcome.IN_DOUBT, status_name(error.status))
        elif isinstance(error, RequestFailed):
            job.fail(Outcome.UNDELIVERABLE, f"SMSC refused: {status_name(error.status)}")
        elif isinstance(error, NoResponse):
            job.fail(Outcome.IN_DOUBT, f"submit_sm written, {error.why}, no response")
        else:
            self.log.failure("SMPP {bind}: unexpected submit failure", failure, bind=bind.config.name)
            job.fail(Outcome.IN_DOUBT, "unexpected error after writing")
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
        self._jobs.discard(job)
        sms_id = job.sms.sms_id
        recorded: Deferred[None]
        if job.failure is None:
            ids = [message_id for message_id in job.ids if message_id is not None]
            assert job.bind is not None and len(ids) == len(job.parts)
            _outcome_counter("submitted").inc()
            recorded = self.outbox.mark_submitted(sms_id, ids, job.bind.config.name)
        else:
            outcome, reason = job.failure
            _outcome_counter(outcome.name.lower()).inc()
            self.log.info(
                "SMPP sms {sms_id}: {outcome} ({reason})",
                sms_id=sms_id,
                outcome=outcome.name.lower(),
                reason=reason,
            )
            if outcome is Outcome.RETRY:
                recorded = self.outbox.mark_retry(sms_id, reason)
            elif outcome is Outcome.EXPIRED:
                recorded = self.outbox.mark_expired(sms_id)
            elif outcome is Outcome.IN_DOUBT:
                recorded = self.outbox.mark_in_doubt(sms_id, reason)
            else:
                recorded = self.outbox.mark_undeliverable(sms_id, reason)
        self._recording.add(recorded)

        def done(result: object) -> None:
            self.tracker.recorded([message_id for message_id in job.ids if message_id is not None])
            self._recording.discard(recorded)
            if isinstance(result, Failure):
                self.log.failure("SMPP sms {sms_id}: recording the outcome failed", result, sms_id=sms_id)
            self._check_idle()

        recorded.addBoth(done)
        self._check_idle()
