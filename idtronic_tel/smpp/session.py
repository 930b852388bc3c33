"""The SMPP session state machine: one enum and one transition table (SMPP 3.4 §2.2).

OPEN: TCP is up, not bound (a bind may be in flight). BOUND: requests may flow. UNBINDING: an unbind
was sent or received; no new submit_sm, outstanding responses and receipts are still handled. CLOSED:
the connection is gone; nothing more happens on this session.
"""

from __future__ import annotations

import enum
from typing import Final

from ..core.states import Transitions


class SessionState(enum.Enum):
    OPEN = "open"
    BOUND = "bound"
    UNBINDING = "unbinding"
    CLOSED = "closed"


class SessionEvent(enum.Enum):
    BIND_ACCEPTED = "bind_accepted"
    UNBIND = "unbind"  # we sent unbind, or the SMSC did
    CONNECTION_LOST = "connection_lost"


_S, _E = SessionState, SessionEvent
TRANSITIONS: Final = Transitions(
    "SMPP session",
    SessionState,
    SessionEvent,
    {
        (_S.OPEN, _E.BIND_ACCEPTED): _S.BOUND,
        (_S.OPEN, _E.UNBIND): _S.UNBINDING,
        (_S.OPEN, _E.CONNECTION_LOST): _S.CLOSED,
        (_S.BOUND, _E.UNBIND): _S.UNBINDING,
        (_S.BOUND, _E.CONNECTION_LOST): _S.CLOSED,
        (_S.UNBINDING, _E.UNBIND): _S.UNBINDING,
        (_S.UNBINDING, _E.CONNECTION_LOST): _S.CLOSED,
    },
    initial=(_S.OPEN,),
)

# What each state allows: sending new requests of each kind, and accepting the SMSC's deliver_sm.
# Tuples, not sets: `in` a tuple compares identities in C, an Enum's hash is a Python call (per message).
MAY_SUBMIT: Final = (SessionState.BOUND,)
MAY_RECEIVE_DELIVER: Final = (SessionState.BOUND, SessionState.UNBINDING)
MAY_ENQUIRE: Final = (SessionState.OPEN, SessionState.BOUND)


class Session:
    def __init__(self) -> None:
        self.state = SessionState.OPEN

    def handle(self, event: SessionEvent) -> SessionState:
        self.state = TRANSITIONS.next(self.state, event)
        return self.state

    def can(self, event: SessionEvent) -> bool:
        return TRANSITIONS.allows(self.state, event)
