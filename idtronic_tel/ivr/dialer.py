"""Callback dialer: drains the core's `CallbackQueue` into AMI `Originate` actions.

One rule above all (docs/rules.md §1.5): a reconnect never places a second call for the same attempt.

* Jobs are claimed only while AMI is logged in; otherwise they stay queued.
* `mark_originated` is recorded BEFORE the Originate is written. If the daemon crashes after writing, the
  attempt is already marked, so nobody re-sends it; the price of the opposite crash (marked but not
  written) is an attempt resolved UNKNOWN at its deadline, which costs a retry, not a duplicate call.
* Once written, an Originate is never re-sent. If the link drops (or the action times out) before the
  immediate response, the call may be ringing: the `OriginateResponse` event arriving on the NEXT session
  (Asterisk sends it to every logged-in session, with our ActionID) decides, or the FastAGI session arriving
  (the core's IVR gateway), or the attempt's deadline.
* The core owns deadlines (its housekeeping resolves every attempt past its deadline as UNKNOWN, even one
  whose daemon died): past the deadline the dialer only stops listening for the attempt.
* The only time an Originate is sent again is when Asterisk answered it with an Error (`Asterisk is
  shutting down`): Asterisk then certainly did not queue it.
* At start-up, `unresolved(worker)` lists attempts a previous run originated: we only watch them.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from prometheus_client import Counter
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from idtronic_tel.config_schema import AmiConfig
from idtronic_tel.core.phones import dial_forms
from idtronic_tel.core.ports import CallbackJob, CallbackQueue, CallOutcome
from idtronic_tel.core.states import Transitions
from idtronic_tel.ivr.ami_actions import (
    SHUTTING_DOWN_MESSAGE,
    AmiActionTimeout,
    AmiConnectionLost,
    AmiNotLoggedIn,
    is_success,
)
from idtronic_tel.ivr.ami_client import AmiClient, originate_outcome
from idtronic_tel.ivr.ami_codec import Message
from idtronic_tel.logsafe import loggable

CALL_OUTCOMES = Counter(
    "idtronic_callback_outcomes", "Originate outcomes by kind of call", ["kind", "outcome"]
)

# Attempt ids travel in `Variable: IDTRONIC_CALLBACK=<id>`, where Asterisk splits on commas: keep them tame.
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def action_id_for(attempt_id: str) -> str:
    """The ActionID of an attempt's Originate: stable, so any session (or daemon restart) can match it."""
    return f"cb-{attempt_id}"


def originate_headers(
    job: CallbackJob, config: AmiConfig, *, channel_id: str | None = None
) -> list[tuple[str, str]]:
    """Headers of the Originate for one attempt (ActionID excluded). Raises ValueError on bad input."""
    if not _SAFE_ID.match(job.attempt_id):
        raise ValueError("attempt id not usable as a channel variable")
    channel = config.callback_channel.format(**dial_forms(job.mobile))
    headers = [
        ("Channel", channel),
        ("Context", config.callback_context),
        ("Exten", config.callback_exten),
        ("Priority", "1"),
        ("Timeout", str(round(config.originate_timeout * 1000))),
        ("CallerID", config.caller_id),
        ("Async", "true"),
    ]
    if channel_id is not None:
        headers.append(("ChannelId", channel_id))
    headers.append(("Variable", f"IDTRONIC_CALLBACK={job.attempt_id}"))
    headers.append(("Variable", f"IDTRONIC_KIND={job.kind.value}"))
    return headers


class Drain(enum.Enum):
    IDLE = "idle"
    DRAINING = "draining"  # claiming due jobs and placing them
    AGAIN = "again"  # woken while draining: one more claim before going idle


class DrainEvent(enum.Enum):
    WAKE = "wake"  # new work, a login, or the poll
    ROUND = "round"  # a claim starts: it answers every wake-up so far
    FINISH = "finish"


_D, _V = Drain, DrainEvent
DRAIN = Transitions(
    "callback dialer",
    Drain,
    DrainEvent,
    {
        (_D.IDLE, _V.WAKE): _D.DRAINING,
        (_D.DRAINING, _V.WAKE): _D.AGAIN,
        (_D.AGAIN, _V.WAKE): _D.AGAIN,
        (_D.DRAINING, _V.ROUND): _D.DRAINING,
        (_D.AGAIN, _V.ROUND): _D.DRAINING,
        (_D.DRAINING, _V.FINISH): _D.IDLE,
        (_D.AGAIN, _V.FINISH): _D.IDLE,
    },
    initial=(_D.IDLE,),
)


@dataclass(eq=False)
class _Attempt:
    job: CallbackJob
    action_id: str
    response: Deferred[Message] | None = None  # the OriginateResponse waiter
    link_wait: Deferred[object] | None = None
    resolved: bool = False


class CallbackDialer(Service):
    log = Logger()

    def __init__(
        self,
        queue: CallbackQueue,
        ami: AmiClient,
        config: AmiConfig,
        *,
        worker: str,
        clock: IReactorTime | None = None,
        poll_interval: float = 1.0,
        batch: int = 20,
        max_in_flight: int = 500,
        use_channel_id: bool = True,
    ) -> None:
        self.queue = queue
        self.ami = ami
        self.config = config
        self.worker = worker
        self.clock: IReactorTime = clock if clock is not None else ami.clock
        self.poll_interval = poll_interval
        self.batch = batch
        self.max_in_flight = max_in_flight
        self.use_channel_id = use_channel_id
        self._attempts: dict[str, _Attempt] = {}
        self.drain = Drain.IDLE
        self._poll: LoopingCall | None = None
        self._listening = False

    # -- service -----------------------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        if not self._listening:  # these registrations cannot be undone: do them once
            self._listening = True
            self.queue.on_new_work(self.wake)
            self.ami.on_ready(self.wake)
        Deferred.fromCoroutine(self._start()).addErrback(self._log_failure, "callback dialer start-up")

    async def _start(self) -> None:
        for job in await self.queue.unresolved(self.worker):
            if job.attempt_id not in self._attempts and self.running:
                self.log.info("Watching callback {attempt_id} left unresolved", attempt_id=job.attempt_id)
                self._watch(_Attempt(job, action_id_for(job.attempt_id)))
        if self.running:
            self._poll = LoopingCall(self._tick)
            self._poll.clock = self.clock
            self._poll.start(self.poll_interval, now=True)

    def stopService(self) -> None:
        super().stopService()
        if self._poll is not None and self._poll.running:
            self._poll.stop()
        self._poll = None
        # Attempts stay unresolved in the core; the next start picks them up through `unresolved`.
        for att in list(self._attempts.values()):
            self._release(att)
        self._attempts.clear()

    @property
    def in_flight(self) -> int:
        return len(self._attempts)

    # -- draining the queue ------------------------------------------------------------------------------

    def _tick(self) -> None:
        """The poll: stop listening for overdue attempts, then claim."""
        self._forget_overdue()
        self.wake()

    def wake(self) -> None:
        """New work, a login, or the poll: claim due jobs while AMI is logged in."""
        if not self.running or not self.ami.ready:
            return
        idle = self.drain is Drain.IDLE
        self.drain = DRAIN.next(self.drain, DrainEvent.WAKE)
        if idle:
            Deferred.fromCoroutine(self._drain()).addErrback(self._log_failure, "claiming callbacks")

    async def _drain(self) -> None:
        try:
            while self.running and self.ami.ready:
                self.drain = DRAIN.next(self.drain, DrainEvent.ROUND)
                room = min(self.batch, self.max_in_flight - len(self._attempts))
                if room <= 0:
                    return
                jobs = await self.queue.claim_due(self.worker, room)
                for job in jobs:
                    self._dial(job)
                if len(jobs) < room and self.drain is Drain.DRAINING:
                    return
        finally:
            self.drain = DRAIN.next(self.drain, DrainEvent.FINISH)

    def _dial(self, job: CallbackJob) -> None:
        if job.attempt_id in self._attempts:
            self.log.error("Callback {attempt_id} claimed twice; ignored", attempt_id=job.attempt_id)
            return
        att = _Attempt(job, action_id_for(job.attempt_id))
        Deferred.fromCoroutine(self._place(att)).addErrback(self._log_failure, "placing a callback")

    async def _place(self, att: _Attempt) -> None:
        job = att.job
        try:
            headers = originate_headers(
                job, self.config, channel_id=att.action_id if self.use_channel_id else None
            )
        except (ValueError, KeyError, IndexError) as e:
            self.log.error(
                "Callback {attempt_id} not placed: {error}", attempt_id=job.attempt_id, error=str(e)
            )
            await self._resolve(att, CallOutcome.FAILED, f"not placed: {e}")
            return
        # The waiter first: the OriginateResponse may arrive before the immediate response.
        self._watch(att)
        if att.resolved:
            return
        try:
            await self.queue.mark_originated(job.attempt_id, att.action_id)
        except Exception as e:
            self.log.failure(
                "Callback {attempt_id} not placed: mark_originated failed", attempt_id=job.attempt_id
            )
            await self._resolve(att, CallOutcome.FAILED, f"not placed: mark_originated failed ({e!r})")
            return
        while not att.resolved:
            if not self.ami.ready:
                # Nothing written yet, so waiting for the link is safe; the deadline bounds the wait.
                link_wait = self.ami.when_ready()
                att.link_wait = link_wait  # type: ignore[assignment]
                try:
                    await link_wait
                except (CancelledError, AmiNotLoggedIn):
                    return  # forgotten meanwhile (deadline) or service stopped
                finally:
                    att.link_wait = None
                continue
            try:
                response = await self.ami.originate(att.action_id, headers)
            except AmiNotLoggedIn:
                continue  # not written
            except (AmiActionTimeout, AmiConnectionLost) as e:
                # Written, fate unknown. Never re-send: the OriginateResponse or the deadline decides.
                self.log.warn(
                    "Callback {attempt_id}: Originate in doubt ({error}); waiting for its outcome",
                    attempt_id=job.attempt_id,
                    error=str(e),
                )
                return
            if is_success(response):
                self.log.info(
                    "Callback {attempt_id} originated ({kind}, call {attempt_no})",
                    attempt_id=job.attempt_id,
                    kind=job.kind.value,
                    attempt_no=job.attempt_no,
                )
                return
            message = response.get("Message") or ""
            if message == SHUTTING_DOWN_MESSAGE:
                # Refused, hence certainly not queued: send it to the restarted Asterisk.
                self.log.warn(
                    "Callback {attempt_id}: Asterisk is shutting down; originating after restart",
                    attempt_id=job.attempt_id,
                )
                continue
            self.log.warn(
                "Callback {attempt_id}: Originate refused: {message}",
                attempt_id=job.attempt_id,
                message=loggable(message),
            )
            await self._resolve(att, CallOutcome.FAILED, f"Originate refused: {message}")
            return

    # -- waiting for the outcome -------------------------------------------------------------------------

    def _watch(self, att: _Attempt) -> None:
        self._attempts[att.job.attempt_id] = att
        att.response = self.ami.expect_originate_response(att.action_id)
        att.response.addCallbacks(
            self._on_response, self._on_response_failure, callbackArgs=(att,), errbackArgs=(att,)
        )

    def _on_response(self, event: Message, att: _Attempt) -> None:
        outcome = originate_outcome(event)
        detail = f"OriginateResponse {event.response} Reason {event.get('Reason')}"
        att.response = None
        self._spawn_resolve(att, outcome, detail)

    def _on_response_failure(self, f: Failure, att: _Attempt) -> None:
        f.trap(CancelledError)

    def _forget_overdue(self) -> None:
        """Stop listening for attempts past their deadline: the core's housekeeping resolves them."""
        now = datetime.fromtimestamp(self.clock.seconds(), UTC)
        for att in [a for a in self._attempts.values() if a.job.deadline <= now]:
            self.log.warn(
                "Callback {attempt_id}: no OriginateResponse before the deadline; left to the core",
                attempt_id=att.job.attempt_id,
            )
            self._release(att)
            self._attempts.pop(att.job.attempt_id, None)

    def _spawn_resolve(self, att: _Attempt, outcome: CallOutcome, detail: str) -> None:
        d = Deferred.fromCoroutine(self._resolve(att, outcome, detail))
        d.addErrback(self._log_failure, "applying an outcome")

    async def _resolve(self, att: _Attempt, outcome: CallOutcome, detail: str) -> None:
        if att.resolved:
            return
        self._release(att)
        self._attempts.pop(att.job.attempt_id, None)
        self.log.info(
            "Callback {attempt_id}: {outcome} ({detail})",
            attempt_id=att.job.attempt_id,
            outcome=outcome.value,
            detail=loggable(detail, 200),
        )
        CALL_OUTCOMES.labels(att.job.kind.value, outcome.value).inc()
        try:
            await self.queue.apply_outcome(att.job.attempt_id, outcome, detail)
        except Exception:
            self.log.failure("Callback {attempt_id}: apply_outcome failed", attempt_id=att.job.attempt_id)
        self.wake()  # room for more

    def _release(self, att: _Attempt) -> None:
        """Stop every wait of an attempt (resolved, past its deadline, or the service stops)."""
        att.resolved = True
        for d in (att.response, att.link_wait):
            if d is not None and not d.called:
                d.cancel()
        att.response = None

    def _log_failure(self, f: Failure, what: str) -> None:
        self.log.failure("Callback dialer: {what} failed", f, what=what)
