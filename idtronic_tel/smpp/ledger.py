"""The outbox worker's ledger: the messages it claimed and has not recorded yet, and the recording of how
each one ended (mark_submitted, mark_retry, ...), tried again until the database answers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..core.ports import MAX_RESENDS, Recovered, SmsOutbox
from .jobs import RECORD_RETRY_FIRST, RECORD_RETRY_MAX, RESENDS, Job, Outcome, outcome_counter
from .receipts import SubmissionTracker


class Ledger:
    log = Logger()

    def __init__(
        self,
        outbox: SmsOutbox,
        worker: str,
        tracker: SubmissionTracker,
        running: Callable[[], bool],
        sleep: Callable[[float], Awaitable[bool]],
        recorded: Callable[[], None],
    ) -> None:
        """`sleep(delay)` waits and says whether the worker still runs; `recorded()` is called each time a
        record lands (the worker may claim again)."""
        self.outbox = outbox
        self.worker = worker
        self.tracker = tracker
        self._running = running
        self._sleep = sleep
        self._recorded = recorded
        self.jobs: set[Job] = set()  # claimed and not yet recorded
        self.reserved = 0  # room held for messages handed over after a commit (smpp/handoff.py)
        self._recording: set[Deferred[None]] = set()
        self._idle_waiters: list[Deferred[None]] = []

    def held(self) -> int:
        """Messages claimed and not recorded, and those about to be handed over."""
        return len(self.jobs) + self.reserved

    def when_idle(self) -> Deferred[None]:
        """Fires once every claimed message is recorded (or given up by a stopping worker)."""
        if not self.jobs and not self._recording:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._idle_waiters.append(waiter)
        return waiter

    def _check_idle(self) -> None:
        if not self.jobs and not self._recording and self._idle_waiters:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def report(self, found: Recovered, cause: str) -> None:
        if not found:
            return
        RESENDS.labels(cause).inc(found.resent)
        outcome_counter("expired").inc(found.expired)
        outcome_counter("in_doubt").inc(found.in_doubt)
        self.log.warn(
            "SMPP worker {worker}: SMS left in flight ({cause}): {resent} sent again, {expired} expired, "
            "{in_doubt} in doubt",
            worker=self.worker,
            cause=cause,
            resent=found.resent,
            expired=found.expired,
            in_doubt=found.in_doubt,
        )

    def resolve(self, job: Job) -> None:
        """Record the message's outcome once nothing of it is left to write or to hear about."""
        if job.resolved or job.outstanding or job.queued or (job.todo and job.failure is None):
            return
        job.resolved = True
        if job.failure is None:
            outcome_counter("submitted").inc()
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
            outcome_counter(outcome.name.lower()).inc()
            self.log.info(
                "SMPP sms {sms_id}: {outcome} ({reason})",
                sms_id=job.sms.sms_id,
                outcome=outcome.name.lower(),
                reason=reason,
            )
        # The outcome into the outbox: one database call when it works (this is per message).
        recorded = self._write_outcome(job)
        self._recording.add(recorded)
        args = (job, recorded)
        recorded.addCallbacks(self._done, self._record_failed, callbackArgs=args, errbackArgs=args)
        self._check_idle()

    def _done(self, _: None, job: Job, recorded: Deferred[None]) -> None:
        self.tracker.recorded(job.accepted_ids)
        self._recording.discard(recorded)
        self.jobs.discard(job)
        self._check_idle()
        self._recorded()

    def _record_failed(self, failure: Failure, job: Job, recorded: Deferred[None]) -> Deferred[None]:
        again = Deferred.fromCoroutine(self._record_again(job, failure))
        return again.addCallback(self._done, job, recorded)

    async def _record_again(self, job: Job, failure: Failure) -> None:
        """Tried again until the database answers. A worker that stops meanwhile gives up: the message
        stays SENDING, and its next start sends it again."""
        delay = RECORD_RETRY_FIRST
        while True:
            self.log.failure(
                "SMPP sms {sms_id}: recording the outcome failed", failure, sms_id=job.sms.sms_id
            )
            if not self._running() or not await self._sleep(delay):
                return
            delay = min(delay * 2, RECORD_RETRY_MAX)
            try:
                await self._write_outcome(job)
                return
            except Exception:
                failure = Failure()

    def _write_outcome(self, job: Job) -> Deferred[None]:
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
