"""The outbox worker that also takes the SMS of payments created in this process straight after their
commit (ports.SmsTaker; the core side is core/handoff.py): no claim transaction and no wait for one.
Only while it holds fewer messages than a claim batch (a tenth of the bound windows): under load, one
claim, one record and one receipt transaction for many messages cost less CPU per message than a
message handed over alone, so the outbox takes over again (bench/RESULTS.md, "End to end").

The create transaction claimed the message for this worker with a lease, as outbox.claim would have; from
here on it is an ordinary claimed message (leases renewed, outcome recorded, crash policy). Room is
reserved before the transaction starts and claims count it, so claimed-but-unrecorded messages never
exceed the bound windows, which is what bounds the duplicates a crash can cause."""

from __future__ import annotations

from ..core.ports import OutgoingSms
from .jobs import Phase
from .worker import OutboxWorker


class HandoffWorker(OutboxWorker):
    @property
    def lease(self) -> float:
        return self._leases.lease

    def reserve(self) -> bool:
        if self.phase not in (Phase.READY, Phase.CLAIMING) or not self.router.any_bound():
            return False
        if self._ledger.held() >= self._claim_batch():
            return False  # busy: claims in batches cost less per message than one by one
        self._ledger.reserved += 1
        return True

    def deliver(self, sms: OutgoingSms | None, lease_base: float) -> None:
        self._ledger.reserved -= 1
        if sms is None:
            return
        self._enqueue(sms, lease_base)
        if self.running:
            self._pump()
        else:  # stopped while the payment was being created: back to the outbox for the next claim
            self._give_back_all("worker stopping")
