"""Every state machine's table, edge by edge: each allowed step passes, every other pair raises.

The stored states (payment, cardholder, callback request, attempt) are walked through the models, where
the check runs on every assignment; their edges are also spelled out here, so that changing a policy
takes a deliberate edit of this file too.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy.orm.attributes import set_committed_value
from twisted.internet.task import Clock

from idtronic_tel.core import states
from idtronic_tel.core.models import CallbackAttempt, CallbackRequest, Cardholder, Payment
from idtronic_tel.core.states import (
    AttemptState,
    CallbackState,
    CardholderStatus,
    IllegalTransition,
    PaymentStatus,
    StoredStates,
    Transitions,
)
from idtronic_tel.ivr import ami_states, dialer, enroll_flow, token_flow
from idtronic_tel.ivr.ami_actions import AmiError
from idtronic_tel.ivr.ami_protocol import AmiProtocol
from idtronic_tel.smpp import session, worker

P, H, C, A = PaymentStatus, CardholderStatus, CallbackState, AttemptState

TABLES: dict[str, Transitions[Any, Any]] = {
    "payment": states.PAYMENT,
    "cardholder": states.CARDHOLDER,
    "callback request": states.CALLBACK,
    "callback attempt": states.ATTEMPT,
    "SMPP session": session.TRANSITIONS,
    "SMPP outbox worker": worker.PHASES,
    "AMI session": ami_states.TRANSITIONS,
    "callback dialer": dialer.DRAIN,
    "enrollment call": enroll_flow.ENROLL_TRANSITIONS,
    "voice token call": token_flow.TOKEN_TRANSITIONS,
}

# (table, model, column, expected edges, initial states)
STORED: list[tuple[StoredStates[Any], type[Any], str, set[tuple[Any, Any]], set[Any]]] = [
    (
        states.PAYMENT,
        Payment,
        "status",
        {(P.PENDING, P.VALIDATED), (P.PENDING, P.FAILED), (P.PENDING, P.EXPIRED), (P.PENDING, P.CANCELLED)},
        {P.PENDING},
    ),
    (
        states.CARDHOLDER,
        Cardholder,
        "status",
        {
            (H.AWAITING_CALLBACK, H.CALLING),
            (H.AWAITING_CALLBACK, H.FAILED),  # the request was cancelled (locked) before any call
            (H.CALLING, H.AWAITING_CALLBACK),  # no verdict: called again later
            (H.CALLING, H.ACTIVE),
            (H.CALLING, H.FAILED),
            (H.FAILED, H.AWAITING_CALLBACK),  # a new callback asked for from the web
        },
        {H.AWAITING_CALLBACK},
    ),
    (
        states.CALLBACK,
        CallbackRequest,
        "state",
        {
            (C.WAITING, C.IN_CALL),
            (C.WAITING, C.CANCELLED),
            (C.IN_CALL, C.WAITING),
            (C.IN_CALL, C.SUCCEEDED),
            (C.IN_CALL, C.FAILED),
        },
        {C.WAITING},
    ),
    (
        states.ATTEMPT,
        CallbackAttempt,
        "state",
        {
            (A.DIALING, A.ORIGINATED),
            (A.DIALING, A.ANSWERED),  # the OriginateResponse came before mark_originated was recorded
            (A.DIALING, A.IN_IVR),
            (A.DIALING, A.ENDED),
            (A.ORIGINATED, A.ANSWERED),
            (A.ORIGINATED, A.IN_IVR),  # the FastAGI session came before the OriginateResponse
            (A.ORIGINATED, A.ENDED),
            (A.ANSWERED, A.IN_IVR),
            (A.ANSWERED, A.ENDED),
            (A.IN_IVR, A.ENDED),
        },
        {A.DIALING},
    ),
]


@pytest.mark.parametrize("name", sorted(TABLES))
def test_every_pair_of_every_table(name: str) -> None:
    table = TABLES[name]
    allowed = 0
    for state, event in table.pairs():
        if (state, event) in table.table:
            assert table.allows(state, event)
            assert table.next(state, event) is table.table[(state, event)]
            allowed += 1
        else:
            assert not table.allows(state, event)
            with pytest.raises(IllegalTransition, match=table.name):
                table.next(state, event)
    assert allowed == len(table.table) > 0
    assert table.initial and table.initial <= set(table.states)
    # Every state is reachable from an initial one: no dead rows in the table.
    reached = set(table.initial)
    while True:
        more = {new for (old, _), new in table.table.items() if old in reached} - reached
        if not more:
            break
        reached |= more
    assert reached == set(table.states), set(table.states) - reached


@pytest.mark.parametrize(("table", "model", "column", "edges", "initial"), STORED, ids=lambda v: str(v)[:20])
def test_stored_states_are_checked_on_every_assignment(
    table: StoredStates[Any], model: type[Any], column: str, edges: set[tuple[Any, Any]], initial: set[Any]
) -> None:
    assert set(table.table) == edges and table.initial == initial
    for old in table.states:
        for new in table.states:
            row = model()
            set_committed_value(row, column, old.value)  # as loaded from the database
            if (old, new) in edges:
                setattr(row, column, new)
                assert getattr(row, column) == new.value and type(getattr(row, column)) is str
            else:
                with pytest.raises(IllegalTransition):
                    setattr(row, column, new)
    for first in table.states:
        if first in initial:
            assert getattr(model(**{column: first}), column) == first.value
        else:
            with pytest.raises(IllegalTransition):
                model(**{column: first})
    with pytest.raises(IllegalTransition):
        setattr(model(), column, "no such state")


def test_stored_values_are_the_database_strings() -> None:
    # No migration: the values are the strings the rows have always held.
    assert [s.value for s in PaymentStatus] == ["pending", "validated", "failed", "expired", "cancelled"]
    assert [s.value for s in CardholderStatus] == ["awaiting_callback", "calling", "active", "failed"]
    assert [s.value for s in CallbackState] == ["waiting", "in_call", "succeeded", "failed", "cancelled"]
    assert [s.value for s in AttemptState] == ["dialing", "originated", "answered", "in_ivr", "ended"]


def _walk_machine(
    states_: type[enum.Enum], events: type[enum.Enum], table: Transitions[Any, Any], fire: Callable[..., Any]
) -> None:
    for state in states_:
        for event in events:
            if table.allows(state, event):
                assert fire(state, event) is table.table[(state, event)]
            else:
                with pytest.raises((IllegalTransition, AmiError)):
                    fire(state, event)


def test_smpp_session_enforces_its_table() -> None:
    def fire(state: session.SessionState, event: session.SessionEvent) -> session.SessionState:
        machine = session.Session()
        machine.state = state
        return machine.handle(event)

    _walk_machine(session.SessionState, session.SessionEvent, session.TRANSITIONS, fire)


def test_ami_session_enforces_its_table() -> None:
    def fire(state: ami_states.SessionState, event: ami_states.SessionInput) -> ami_states.SessionState:
        proto = AmiProtocol(Clock())
        proto.state = state
        proto._fire(event)
        return proto.state

    _walk_machine(ami_states.SessionState, ami_states.SessionInput, ami_states.TRANSITIONS, fire)


def test_worker_enforces_its_phases() -> None:
    def fire(phase: worker.Phase, event: worker.PhaseEvent) -> worker.Phase:
        machine = worker.OutboxWorker.__new__(worker.OutboxWorker)
        machine.phase = phase
        machine._move(event)
        return machine.phase

    _walk_machine(worker.Phase, worker.PhaseEvent, worker.PHASES, fire)
