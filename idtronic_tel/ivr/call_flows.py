"""The IVR call flows (docs/rules.md §1.6, §3.2, voice fallback), as explicit state machines.

Each flow is an enum of states, one transition table `(state, event) -> state` (core.states.Transitions),
and one action per state that talks to the channel or the core and returns the event. `step()` runs one
action and one transition, so tests can walk a flow state by state; `run()` steps until DONE.

The core counts the entries of a call and decides (DigitsVerdict): the flow asks again on RETRY and ends
the call on any other verdict; it never counts entries itself. The welcome and the wrong-entry prompts
are interruptible (barge-in): a digit keyed while they play stops them and is the first digit of the
entry, the rest is collected by a GET DATA without prompt.

A prompt Asterisk cannot play on a live channel (its sound file is missing) ends the call as
PROMPT_MISSING: a log line naming the file, a metric, and the core fails the request without a retry
(calling again would fail the same way; the operator must install the file).

Whatever happens (hang-up, AGI timeout, core error), a call the core started is closed with
`IvrGateway.end_call` exactly once, in the ENDING state (or in `run()`'s `finally` if a bug escaped).

This module is the driver both flows share; the flows are `enroll_flow` and `token_flow`.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from prometheus_client import Counter
from twisted.logger import Logger

from idtronic_tel.config_schema import CallbackConfig, VoiceFallbackConfig
from idtronic_tel.core.ports import CallKind, IvrCall, IvrGateway
from idtronic_tel.core.states import EndReason, IllegalTransition, Transitions
from idtronic_tel.ivr.agi_codec import AgiEnv
from idtronic_tel.ivr.agi_protocol import AgiCommandTimeout, AgiError, ChannelHungUp, DtmfEntry, PromptMissing
from idtronic_tel.ivr.prompts import Prompt
from idtronic_tel.logsafe import loggable

IVR_CALLS = Counter("idtronic_ivr_calls", "FastAGI call flows ended, by flow and reason", ["flow", "reason"])
PROMPTS_MISSING = Counter(
    "idtronic_ivr_prompt_missing",
    "Prompts Asterisk could not play on a live channel (sound file missing on the Asterisk server)",
    ["prompt"],
)
log = Logger()

CALLBACK_VARIABLE = "IDTRONIC_CALLBACK"  # set by the Originate; fallback when agi_arg_1 is empty


def report_missing_prompt(error: PromptMissing, attempt: str | None) -> None:
    """The operator's signal for a missing sound file: one log line naming it, one metric."""
    PROMPTS_MISSING.labels(error.prompt).inc()
    log.error(
        "IVR call {attempt}: Asterisk could not play {prompt} on a live channel: the sound file is missing "
        "on the Asterisk server (see docs/asterisk.md); the call ends as an error and is not retried",
        attempt=loggable(attempt) if attempt else "(no attempt)",
        prompt=error.prompt,
    )


class AgiChannel(Protocol):
    """What the flows need from a FastAGI session (AgiSession implements it; tests use fakes)."""

    @property
    def env(self) -> AgiEnv | None: ...

    async def answer(self) -> None: ...
    async def stream_file(self, name: str, escape_digits: str = "") -> str: ...
    async def get_data(self, prompt: str, timeout_ms: int, max_digits: int) -> DtmfEntry: ...
    async def say_digits(self, digits: str) -> None: ...
    async def get_variable(self, name: str) -> str | None: ...
    async def hangup(self) -> None: ...


@dataclass(frozen=True)
class FlowSettings:
    dtmf_timeout_ms: int = 10_000
    token_repeats: int = 2

    @classmethod
    def from_config(cls, callback: CallbackConfig, voice: VoiceFallbackConfig) -> FlowSettings:
        return cls(dtmf_timeout_ms=round(callback.dtmf_timeout * 1000), token_repeats=voice.repeats)


class Event(enum.Enum):
    FOUND_ID = enum.auto()
    NO_ID = enum.auto()
    CALL_OK = enum.auto()
    CALL_UNKNOWN = enum.auto()
    WRONG_KIND = enum.auto()
    NEXT = enum.auto()  # the state's prompt/command is done
    ENTERED = enum.auto()  # GET DATA returned (possibly empty)
    KEYED = enum.auto()  # a digit interrupted the prompt: the entry has begun
    ACCEPTED = enum.auto()
    RETRY = enum.auto()
    FAILED = enum.auto()
    LOCKED = enum.auto()
    AGAIN = enum.auto()  # voice token: read it once more
    HUNG_UP = enum.auto()
    AGI_TIMEOUT = enum.auto()
    AGI_ERROR = enum.auto()  # the session is unusable
    PROMPT_MISSING = enum.auto()  # the channel works but Asterisk lacks one of our sound files
    CORE_ERROR = enum.auto()  # the channel works but the core failed: hang up politely
    ENDED = enum.auto()


S = TypeVar("S", bound=enum.Enum)


class CallFlow(Generic[S]):
    """The driver shared by both flows: a subclass gives its states (with the names `flow_table` shares),
    its table, the call kinds it serves and the actions of its own states."""

    states: type[S]
    transitions: Transitions[S, Event]
    expected_kinds: frozenset[CallKind]

    def __init__(self, channel: AgiChannel, gateway: IvrGateway, settings: FlowSettings) -> None:
        self.channel = channel
        self.gateway = gateway
        self.settings = settings
        self.ending: S = self.states["ENDING"]  # calls end_call
        self.done: S = self.states["DONE"]  # terminal
        self.state: S = self.states["IDENTIFY"]
        self.attempt_id: str | None = None
        self.call: IvrCall | None = None
        self.started = False  # start_call was asked and did not answer None: end_call is owed
        self.ended = False
        self.decided = False  # the call reached its outcome: later failures keep reason COMPLETED
        self.reason = EndReason.COMPLETED
        self.history: list[tuple[S, Event, S]] = []

    def actions(self) -> Mapping[S, Callable[[], Awaitable[Event]]]:
        s = self.states
        shared = {
            s["IDENTIFY"]: self._identify,
            s["LOOKUP"]: self._lookup,
            s["REFUSE"]: self._refuse,
            s["HANG_UP"]: self._hang_up,
            s["ENDING"]: self._ending,
            s["DONE"]: self._done,
        }
        return {**shared, **self.own_actions()}

    def own_actions(self) -> Mapping[S, Callable[[], Awaitable[Event]]]:
        """The actions of the flow's own states (GREET and after)."""
        raise NotImplementedError

    async def step(self) -> S:
        """Run the current state's action and move along the table."""
        action = self.actions()[self.state]
        event = await self._guarded(action)
        try:
            new = self.transitions.next(self.state, event)
        except IllegalTransition:
            # A hole in the table is a bug: never leave a call open because of it.
            log.error("IVR flow: no transition from {state} on {event}", state=self.state, event=event)
            self.reason = EndReason.ERROR
            new = self.ending if self.state is not self.ending else self.done
        self.history.append((self.state, event, new))
        self.state = new
        return new

    async def run(self) -> EndReason:
        try:
            while self.state is not self.done:
                await self.step()
        finally:
            if self.started and not self.ended:  # a bug or a cancellation escaped the table
                await self._end_call()
        return self.reason

    async def _guarded(self, action: Callable[[], Awaitable[Event]]) -> Event:
        """Turn failures into events; exception texts are not logged (they could echo a reply)."""
        try:
            return await action()
        except ChannelHungUp:
            self._set_reason(EndReason.HANGUP)
            return Event.HUNG_UP
        except PromptMissing as exc:
            report_missing_prompt(exc, self.attempt_id)
            self._set_reason(EndReason.PROMPT_MISSING)
            return Event.PROMPT_MISSING
        except AgiCommandTimeout:
            self._set_reason(EndReason.TIMEOUT)
            return Event.AGI_TIMEOUT
        except AgiError as exc:
            log.warn(
                "IVR call {attempt}: AGI error {error} in {state}",
                attempt=loggable(self.attempt_id),
                error=type(exc).__name__,
                state=self.state.name,
            )
            self._set_reason(EndReason.ERROR)
            return Event.AGI_ERROR
        except Exception as exc:
            log.error(
                "IVR call {attempt}: core error {error} in {state}",
                attempt=loggable(self.attempt_id),
                error=type(exc).__name__,
                state=self.state.name,
            )
            self._set_reason(EndReason.ERROR)
            return Event.CORE_ERROR

    def _set_reason(self, reason: EndReason) -> None:
        # Once the outcome is decided (verdict given, token read), hanging up during the last prompt (or
        # missing it) does not make the call a failure.
        if not self.decided:
            self.reason = reason

    # -- actions shared by both flows ------------------------------------------------------------------

    async def _identify(self) -> Event:
        env = self.channel.env
        attempt = env.arg(1) if env is not None else ""
        if not attempt:
            attempt = await self.channel.get_variable(CALLBACK_VARIABLE) or ""
        if not attempt:
            log.warn(
                "IVR call without an attempt id (script {script}); refusing",
                script=loggable(env.script if env is not None else "?"),
            )
            return Event.NO_ID
        self.attempt_id = attempt
        return Event.FOUND_ID

    async def _lookup(self) -> Event:
        assert self.attempt_id is not None
        self.started = True  # from here an error leaves the attempt in an unknown state: end it
        call = await self.gateway.start_call(self.attempt_id)
        if call is None:
            self.started = False
            log.warn(
                "IVR call for unknown or finished attempt {attempt}; refusing",
                attempt=loggable(self.attempt_id),
            )
            return Event.CALL_UNKNOWN
        self.call = call
        if call.kind not in self.expected_kinds:
            log.error(
                "IVR call {attempt} of kind {kind} reached the wrong AGI script; refusing",
                attempt=loggable(self.attempt_id),
                kind=call.kind.value,
            )
            self.reason = EndReason.ERROR
            return Event.WRONG_KIND
        return Event.CALL_OK

    async def _refuse(self) -> Event:
        await self.channel.answer()
        await self._play(Prompt.UNKNOWN_CALL)
        return Event.NEXT

    async def _hang_up(self) -> Event:
        await self.channel.hangup()
        return Event.NEXT

    async def _ending(self) -> Event:
        if self.started and not self.ended:
            await self._end_call()
        return Event.ENDED

    async def _done(self) -> Event:  # pragma: no cover - run() stops before DONE's action
        return Event.ENDED

    async def _end_call(self) -> None:
        self.ended = True
        assert self.attempt_id is not None
        IVR_CALLS.labels(type(self).__name__, self.reason.value).inc()
        try:
            await self.gateway.end_call(self.attempt_id, self.reason)
        except Exception as exc:
            log.error(
                "IVR call {attempt}: end_call failed ({error})",
                attempt=loggable(self.attempt_id),
                error=type(exc).__name__,
            )
        log.info(
            "IVR call {attempt} ended: {reason}", attempt=loggable(self.attempt_id), reason=self.reason.value
        )

    async def _play(self, prompt: Prompt) -> None:
        await self.channel.stream_file(prompt.value)


def flow_table(name: str, states: type[S], specific: Mapping[tuple[S, Event], S]) -> Transitions[S, Event]:
    """A flow's transitions: the rows every flow shares (identify the attempt, look it up, refuse an
    unknown one, hang up, end the call), its own rows, and the failure rows of every live state."""
    identify, lookup, refuse, greet, hang_up, ending, done = (
        states[name] for name in ("IDENTIFY", "LOOKUP", "REFUSE", "GREET", "HANG_UP", "ENDING", "DONE")
    )
    table = {
        (identify, Event.FOUND_ID): lookup,
        (identify, Event.NO_ID): refuse,
        (lookup, Event.CALL_OK): greet,
        (lookup, Event.CALL_UNKNOWN): refuse,
        (lookup, Event.WRONG_KIND): refuse,
        (refuse, Event.NEXT): hang_up,
        (hang_up, Event.NEXT): ending,
        **specific,
    }
    for state in states:
        if state in (ending, done):
            continue
        table.setdefault((state, Event.HUNG_UP), ending)
        table.setdefault((state, Event.AGI_TIMEOUT), ending)
        table.setdefault((state, Event.AGI_ERROR), ending)
        # The channel still works: say nothing more and hang up (HANGUP itself failing ends the call).
        table.setdefault((state, Event.CORE_ERROR), hang_up if state is not hang_up else ending)
        if state is not hang_up:
            table.setdefault((state, Event.PROMPT_MISSING), hang_up)
    table[(ending, Event.ENDED)] = done
    return Transitions(name, states, Event, table, initial=(identify,))
