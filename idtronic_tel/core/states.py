"""Typed states and their transition tables, written once and enforced.

A state machine here is one `Transitions` table: `(state, event) -> next state`. Whatever the table does
not list raises IllegalTransition (a bug, never an input error: callers check preconditions first). The
edges use it for their protocol machines (SMPP session, AMI session, IVR flows, worker phases); the core
uses it for the states it stores, where the event is simply the next state (`StoredStates`): the models check
every assignment (core/models.py), so a row can never take a step its table does not allow.

The values of the stored states are the strings the database has always held: changing one needs an
Alembic migration.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Mapping
from typing import Generic, TypeVar

S = TypeVar("S", bound=enum.Enum)
E = TypeVar("E", bound=enum.Enum)


class IllegalTransition(Exception):
    """A step the state machine's table does not allow."""


class Transitions(Generic[S, E]):
    """One state machine: its states, its events, the table, and the states a new machine may start in."""

    def __init__(
        self,
        name: str,
        states: type[S],
        events: type[E],
        table: Mapping[tuple[S, E], S],
        initial: Iterable[S] = (),
    ) -> None:
        self.name = name
        self.states = states
        self.events = events
        self.table = dict(table)
        self.initial = frozenset(initial)

    def next(self, state: S, event: E) -> S:
        try:
            return self.table[(state, event)]
        except KeyError:
            raise IllegalTransition(f"{self.name}: {event.name} is not allowed in {state.name}") from None

    def allows(self, state: S, event: E) -> bool:
        return (state, event) in self.table

    def pairs(self) -> Iterator[tuple[S, E]]:
        """Every (state, event) pair, allowed or not (for tests that walk the whole table)."""
        for state in self.states:
            for event in self.events:
                yield state, event


class StoredStates(Transitions[S, S]):
    """The table of a state kept in a column: which state may follow which (the event is the next state)."""

    def __init__(
        self, name: str, states: type[S], edges: Mapping[S, Iterable[S]], initial: Iterable[S]
    ) -> None:
        table = {(old, new): new for old, targets in edges.items() for new in targets}
        super().__init__(name, states, states, table, initial)

    def move(self, current: str | None, new: str) -> S:
        """The checked next state; `current` is None for a new row."""
        try:
            target = self.states(new)
        except ValueError:
            raise IllegalTransition(f"{self.name}: {new!r} is not a state") from None
        if current is None:
            if target not in self.initial:
                raise IllegalTransition(f"{self.name}: a new row cannot start in {target.name}")
            return target
        return self.next(self.states(current), target)


# ---------------------------------------------------------------------------------------------------------
# Payments (docs/rules.md §2)


class PaymentStatus(enum.StrEnum):
    PENDING = "pending"
    VALIDATED = "validated"
    FAILED = "failed"  # too many wrong tokens, or the cardholder got locked
    EXPIRED = "expired"
    CANCELLED = "cancelled"


_P = PaymentStatus
PAYMENT = StoredStates(
    "payment",
    PaymentStatus,
    {_P.PENDING: (_P.VALIDATED, _P.FAILED, _P.EXPIRED, _P.CANCELLED)},
    initial=(_P.PENDING,),
)


# ---------------------------------------------------------------------------------------------------------
# Cardholders (docs/rules.md §1): the enrollment's progress. Locked and suspended are separate flags.


class CardholderStatus(enum.StrEnum):
    AWAITING_CALLBACK = "awaiting_callback"
    CALLING = "calling"  # an enrollment call is being placed or is in the IVR
    ACTIVE = "active"
    FAILED = "failed"  # the enrollment call failed; a new callback may be requested


_H = CardholderStatus
CARDHOLDER = StoredStates(
    "cardholder",
    CardholderStatus,
    {
        _H.AWAITING_CALLBACK: (_H.CALLING, _H.FAILED),
        _H.CALLING: (_H.AWAITING_CALLBACK, _H.ACTIVE, _H.FAILED),
        _H.FAILED: (_H.AWAITING_CALLBACK,),
    },
    initial=(_H.AWAITING_CALLBACK,),
)


# ---------------------------------------------------------------------------------------------------------
# Callback requests and their attempts (docs/rules.md §1.5, §1.6)


class CallbackState(enum.StrEnum):
    WAITING = "waiting"  # queued for its next call
    IN_CALL = "in_call"  # one attempt is live
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"  # superseded, locked, or its token expired


_C = CallbackState
CALLBACK = StoredStates(
    "callback request",
    CallbackState,
    {
        _C.WAITING: (_C.IN_CALL, _C.CANCELLED),
        _C.IN_CALL: (_C.WAITING, _C.SUCCEEDED, _C.FAILED),
    },
    initial=(_C.WAITING,),
)


class AttemptState(enum.StrEnum):
    """One call. The OriginateResponse (answered) and the FastAGI session (in_ivr) come in either order."""

    DIALING = "dialing"  # claimed; the Originate is about to be written
    ORIGINATED = "originated"  # the Originate was written
    ANSWERED = "answered"  # OriginateResponse Success, no FastAGI session yet
    IN_IVR = "in_ivr"  # the FastAGI session started
    ENDED = "ended"


_A = AttemptState
ATTEMPT = StoredStates(
    "callback attempt",
    AttemptState,
    {
        _A.DIALING: (_A.ORIGINATED, _A.ANSWERED, _A.IN_IVR, _A.ENDED),
        _A.ORIGINATED: (_A.ANSWERED, _A.IN_IVR, _A.ENDED),
        _A.ANSWERED: (_A.IN_IVR, _A.ENDED),
        _A.IN_IVR: (_A.ENDED,),
    },
    initial=(_A.DIALING,),
)
LIVE_ATTEMPTS = (_A.DIALING, _A.ORIGINATED, _A.ANSWERED, _A.IN_IVR)


class AttemptOutcome(enum.StrEnum):
    """How an attempt ended (callback_attempts.outcome)."""

    # from the OriginateResponse, or the deadline (ports.CallOutcome, same values)
    BUSY = "busy"
    NO_ANSWER = "no_answer"
    CONGESTION = "congestion"
    FAILED = "failed"  # not placed, or no entries left in the IVR
    UNKNOWN = "unknown"  # nothing heard of it before its deadline
    # from the IVR
    ACCEPTED = "accepted"  # the card digits were right
    LOCKED = "locked"  # a wrong entry exhausted the failure budget
    COMPLETED = "completed"  # the voice token was read
    NO_VERDICT = "no_verdict"  # the call ended (hang-up, timeout, error) before any verdict
    PROMPT_MISSING = "prompt_missing"  # Asterisk could not play one of our prompts: an operator's error


class EndReason(enum.StrEnum):
    """Why the IVR ended a call (IvrGateway.end_call)."""

    COMPLETED = "completed"  # the flow ran to its end (verdict given, token read)
    HANGUP = "hangup"  # the callee hung up
    TIMEOUT = "timeout"  # Asterisk did not answer a command in time
    ERROR = "error"  # AGI or core failure, or a call routed to the wrong script
    PROMPT_MISSING = "prompt_missing"  # a sound file is missing on the Asterisk server
