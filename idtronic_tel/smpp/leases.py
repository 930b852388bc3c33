"""The leases of the outbox worker's claims (see worker.py): renewed every RENEW_INTERVAL; a part is
written only while the lease outlasts its response; and after each renewal, what other daemons left on the
wire when their leases ran out is queued again (recover_stale)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..core.ports import Recovered, SmsOutbox
from .jobs import Job
from .ledger import Ledger

# Lease of a claim = response_timeout + LEASE_SLACK, renewed every RENEW_INTERVAL. A part is written only
# while now + response_timeout + FENCE_MARGIN is inside the last lease confirmed: the margin covers the
# clock skew between daemons, the slack a database that answers renewals late.
LEASE_SLACK: Final = 30.0
RENEW_INTERVAL: Final = 5.0
FENCE_MARGIN: Final = 5.0


class Leases:
    log = Logger()

    def __init__(
        self,
        outbox: SmsOutbox,
        worker: str,
        clock: IReactorTime,
        response_timeout: float,
        ledger: Ledger,
        taken_over: Callable[[Job], None],
        renewed: Callable[[], None],
    ) -> None:
        """`taken_over(job)`: another daemon holds that claim now; `renewed()`: parts held back for want
        of lease may go."""
        self.outbox = outbox
        self.worker = worker
        self.clock = clock
        self.response_timeout = response_timeout
        self.lease = response_timeout + LEASE_SLACK
        self._ledger = ledger
        self._taken_over = taken_over
        self._renewed = renewed
        self._running = False
        self._call: IDelayedCall | None = None

    def start(self) -> None:
        self._running = True
        self._call = self.clock.callLater(RENEW_INTERVAL, self._tend)

    def stop(self) -> None:
        self._running = False
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def holds(self, job: Job) -> bool:
        """Whether a part written now is answered (or given up) before anyone may take the claim over."""
        return self.clock.seconds() + self.response_timeout + FENCE_MARGIN <= job.lease_base + self.lease

    def _tend(self) -> None:
        """Renew the lease of every claim held; then send again what dead daemons left on the wire."""
        self._call = None
        jobs = list(self._ledger.jobs)  # resolved ones too: their rows stay SENDING until recorded
        started = self.clock.seconds()
        ids = [job.sms.sms_id for job in jobs]
        renewed = self.outbox.renew(self.worker, ids, self.lease) if ids else succeed([])

        def held(ids: list[int]) -> Deferred[Recovered]:
            if not self._running:
                return succeed(Recovered())
            still = set(ids)
            for job in jobs:
                if job.sms.sms_id in still:
                    job.lease_base = max(job.lease_base, started)
                elif not job.resolved:
                    self._taken_over(job)
            self._renewed()
            return self.outbox.recover_stale(self.worker, [job.sms.sms_id for job in self._ledger.jobs])

        def failed(failure: Failure) -> None:
            self.log.failure("SMPP worker {worker}: lease renewal failed", failure, worker=self.worker)

        def again(_: object) -> None:
            if self._running:
                self._call = self.clock.callLater(RENEW_INTERVAL, self._tend)

        renewed.addCallback(held).addCallback(self._ledger.report, "stale_claim").addErrback(failed)
        renewed.addCallback(again)
