"""What the edges (smpp/, ivr/) need from the core.

The SMPP and Asterisk edges never touch the database: they call these interfaces, which the core
implements on top of its thread pool (every method returns a Deferred and never blocks the reactor).
Tests of the edges use in-memory fakes of the same interfaces.

Records are plain frozen dataclasses, never live ORM objects.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from twisted.internet.defer import Deferred

from .states import EndReason


def nobody(worker: str) -> bool:
    """No other worker is known to be dead (the default of the `gone` predicates: workers.py)."""
    return False


# ---------------------------------------------------------------------------------------------------------
# SMS outbox (filled by the core in the same transaction as the payment / challenge; drained by smpp/)


class SmsState(enum.StrEnum):
    QUEUED = "queued"  # waiting in the outbox
    SENDING = "sending"  # claimed by a worker; submit_sm may be on the wire
    SUBMITTED = "submitted"  # submit_sm_resp OK (or in doubt, see SmsOutbox.mark_in_doubt)
    DELIVERED = "delivered"  # every part's receipt says DELIVRD
    UNDELIVERABLE = "undeliverable"  # permanent SMSC error or a failure receipt
    EXPIRED = "expired"  # the token expired before the message could leave, or the SMSC expired it


# A message whose copies went unanswered this many times more is not sent again: an SMSC that swallows it
# every time (or a daemon that dies on it every time) would otherwise send the cardholder a copy per try.
MAX_RESENDS = 3


@dataclass(frozen=True)
class OutgoingSms:
    sms_id: int
    destination: str  # E.164, e.g. "+33611223344"
    text: str  # the whole message; it carries a token: never log it
    expires_at: datetime  # UTC, timezone-aware; the message must not leave after this
    purpose: str  # "payment" | "profile" | "notice"
    resends: int = 0  # copies already sent again after an unanswered write (crash, lost link, timeout)


@dataclass(frozen=True)
class Recovered:
    """Claims found left on the wire (SENDING) by a daemon that is gone."""

    resent: int = 0  # back to QUEUED, to be sent again (token still valid)
    expired: int = 0  # token expired meanwhile: EXPIRED, never sent late
    in_doubt: int = 0  # already sent MAX_RESENDS times more: SUBMITTED, in doubt

    def __bool__(self) -> bool:
        return bool(self.resent or self.expired or self.in_doubt)


class SmsOutbox(Protocol):
    """Claims are leased: a claim holds its messages until `lease_until`, which the claiming worker renews
    while it holds them. Every mark_* applies only while the message is SENDING and claimed by `worker`
    (a claim taken over by another daemon is no longer the first worker's to record)."""

    def claim(self, worker: str, limit: int, lease: float) -> Deferred[list[OutgoingSms]]:
        """Move up to `limit` queued messages, oldest first, to SENDING for `worker`, leased for `lease`
        seconds.

        Several daemons may claim at once (PostgreSQL: FOR UPDATE SKIP LOCKED): a message is returned to
        one worker only. Messages whose token expired are marked EXPIRED and never returned. While the
        service is suspended nothing is returned.
        """

    def renew(self, worker: str, sms_ids: list[int], lease: float) -> Deferred[list[int]]:
        """Extend the lease of these claims to now + `lease`; the ids `worker` still holds."""

    def mark_submitted(
        self, worker: str, sms_id: int, message_ids: list[str], bind: str, resends: int
    ) -> Deferred[None]:
        """Every part was accepted (submit_sm_resp status 0); one SMSC message_id per part, in order."""

    def mark_retry(self, worker: str, sms_id: int, reason: str, resends: int) -> Deferred[None]:
        """Not finished here (no bind, throttled, stopping, written but unanswered): back to QUEUED, order
        kept. `resends` counts the copy the next send repeats, when one may have arrived already."""

    def mark_undeliverable(self, worker: str, sms_id: int, reason: str, resends: int) -> Deferred[None]:
        """Permanent SMSC error: the payment shows sms=undeliverable."""

    def mark_expired(self, worker: str, sms_id: int, resends: int) -> Deferred[None]:
        """The token expired while the message waited in the worker (never sent late)."""

    def mark_in_doubt(self, worker: str, sms_id: int, reason: str, resends: int) -> Deferred[None]:
        """Written MAX_RESENDS + 1 times without a response: shown `submitted` (in doubt), not sent again.
        The merchant's `resend` draws a fresh code if the cardholder says nothing came."""

    def recover(self, worker: str) -> Deferred[Recovered]:
        """At start-up: what this worker's previous run left in SENDING (it crashed), or a dead process of
        this host under another name (workers.py). Each is sent again
        while its token is valid (same text, same code: a duplicate is harmless, a loss blocks the
        purchase), counted in `resends` and the audit log; an expired one is EXPIRED."""

    def recover_stale(self, worker: str, held: list[int]) -> Deferred[Recovered]:
        """The same for claims whose lease ran out (their daemon is gone), except those in `held`, the
        ones `worker` has in hand (its renewals failed: it keeps them, and writes none until it renews)."""

    def apply_receipt(self, message_id: str, state: str) -> Deferred[bool]:
        """A delivery receipt for one part: state is one of SmsState's values (delivered, undeliverable,
        expired). message_id is normalised by the caller (see smpp/receipts). False: unknown id."""

    def on_new_work(self, callback: Callable[[], None]) -> None:
        """Call `callback` on the reactor thread whenever this process queued a message or resumed."""


class SmsTaker(Protocol):
    """This process's SMPP worker, taking the SMS of a payment created here straight after its commit
    (core/handoff.py) instead of at its next claim."""

    worker: str  # the name its claims carry

    @property
    def lease(self) -> float:
        """Seconds a claim is leased for."""

    def reserve(self) -> bool:
        """Room for one more message (running, a bind up, claims under the bound windows): True holds that
        room until deliver()."""

    def deliver(self, sms: OutgoingSms | None, lease_base: float) -> None:
        """The message claimed for it in the committed transaction that began at `lease_base` (its clock);
        None (the create failed or claimed nothing) frees the room."""


# ---------------------------------------------------------------------------------------------------------
# Callback queue (filled by the core; drained by ivr/ through AMI Originate)


class CallKind(enum.StrEnum):
    ENROLL = "enroll"  # collect the last 8 card digits of a new enrollment
    MOBILE_CHANGE = "mobile_change"  # prove a new mobile number by keying the last 8 digits again
    VOICE_TOKEN = "voice_token"  # read a payment token whose SMS did not arrive


class CallOutcome(enum.StrEnum):
    ANSWERED = "answered"
    BUSY = "busy"
    NO_ANSWER = "no_answer"
    CONGESTION = "congestion"
    FAILED = "failed"  # any other failure (bad channel, no route, rejected)
    UNKNOWN = "unknown"  # AMI lost and no sign of the call before the attempt's deadline


@dataclass(frozen=True)
class CallbackJob:
    attempt_id: str  # unique per call attempt; sent as channel variable IDTRONIC_CALLBACK and AGI argument
    kind: CallKind
    mobile: str  # E.164 number to call
    attempt_no: int  # 1 for the first call of this request
    deadline: datetime  # UTC: outcome must be known by then, else the attempt is resolved as UNKNOWN


class CallbackQueue(Protocol):
    def claim_due(self, worker: str, limit: int) -> Deferred[list[CallbackJob]]:
        """Attempts due now, within calling hours, not suspended, at most one live call per request.

        Claimed attempts move to DIALING; several daemons never claim the same attempt."""

    def mark_originated(self, attempt_id: str, action_id: str) -> Deferred[None]:
        """The Originate action was written to AMI (never send it again for this attempt)."""

    def apply_outcome(self, attempt_id: str, outcome: CallOutcome, detail: str) -> Deferred[None]:
        """OriginateResponse (or the reconciler) decided: schedule a retry, or fail the request.

        ANSWERED only records the answer; the IVR's verdict comes through IvrGateway."""

    def unresolved(self, worker: str) -> Deferred[list[CallbackJob]]:
        """Attempts this worker (or a dead process of this host, workers.py) originated whose outcome is
        still unknown (after a restart or reconnect)."""

    def on_new_work(self, callback: Callable[[], None]) -> None:
        """Call `callback` on the reactor thread when this process queued a callback or resumed."""


# ---------------------------------------------------------------------------------------------------------
# IVR gateway: what the FastAGI call flow asks the core


class DigitsVerdict(enum.StrEnum):
    """The core's answer to one entry. The core alone counts the entries of a call: the IVR asks again on
    RETRY and ends the call on any other verdict."""

    ACCEPTED = "accepted"  # 16 digits valid: enrollment active / new mobile proven
    RETRY = "retry"  # wrong or incomplete entry, entries remain in this call
    FAILED = "failed"  # no entries left (or the card is enrolled elsewhere): the request failed
    LOCKED = "locked"  # the cardholder's failure budget is exhausted


@dataclass(frozen=True)
class IvrCall:
    attempt_id: str
    kind: CallKind
    token: str | None  # VOICE_TOKEN only: the digits to read; never log


class IvrGateway(Protocol):
    def start_call(self, attempt_id: str) -> Deferred[IvrCall | None]:
        """A FastAGI session arrived: marks the attempt answered. None: unknown or finished attempt."""

    def check_card_digits(self, attempt_id: str, last8: str) -> Deferred[DigitsVerdict]:
        """One DTMF entry, as keyed (the last 8 digits; may be shorter, empty on timeout, or hold `*`).
        The full card number exists only inside this call, in memory. Only a complete entry that fails
        the checks counts against the failure budget."""

    def end_call(self, attempt_id: str, reason: EndReason) -> Deferred[None]:
        """The call ended. A call still undecided is retried later, except for PROMPT_MISSING (an
        installation error: the request fails at once, for the operator to see). Idempotent."""
