"""The SMPP session state machine: one enum and one transition table (SMPP 3.4 §2.2).

OPEN: TCP is up, not bound (a bind may be in flight). BOUND: requests may flow. UNBINDING: an unbind
was sent or received; no new submit_sm, outstanding responses and receipts are still handled. CLOSED:
the connection is gone; nothing more happens on this session.
"""

from __future__ import annotations

import enum
from typing import Final


class SessionState(enum.Enum):
    OPEN = "open"
    BOUND = "bound"
    UNBINDING = "unbinding"
    CLOSED = "closed"


class SessionEvent(enum.Enum):
    BIND_ACCEPTED = "bind_accepted"
    UNBIND = "unbind"  # we sent unbind, or the SMSC did
    CONNECTION_LOST = "connection_lost"


_TRANSITIONS: Final[dict[tuple[SessionState, SessionEvent], SessionState]] = {
    (SessionState.OPEN, SessionEvent.BIND_ACCEPTED): SessionState.BOUND,
    (SessionState.OPEN, SessionEvent.UNBIND): SessionState.UNBINDING,
    (SessionState.OPEN, SessionEvent.CONNECTION_LOST): SessionState.CLOSED,
    (SessionState.BOUND, SessionEvent.UNBIND): SessionState.UNBINDING,
    (SessionState.BOUND, SessionEvent.CONNECTION_LOST): SessionState.CLOSED,
    (SessionState.UNBINDING, SessionEvent.UNBIND): SessionState.UNBINDING,
    (SessionState.UNBINDING, SessionEvent.CONNECTION_LOST): SessionState.CLOSED,
}

# What each state allows: sending new requests of each kind, and accepting the SMSC's deliver_sm.
MAY_SUBMIT: Final = frozenset({SessionState.BOUND})
MAY_RECEIVE_DELIVER: Final = frozenset({SessionState.BOUND, SessionState.UNBINDING})
MAY_ENQUIRE: Final = frozenset({SessionState.OPEN, SessionState.BOUND})


class InvalidTransition(Exception):
    pass


class Session:
    def __init__(self) -> None:
        self.state = SessionState.OPEN

    def handle(self, event: SessionEvent) -> SessionState:
        try:
            self.state = _TRANSITIONS[(self.state, event)]
        except KeyError:
            raise InvalidTransition(f"{event.value} in state {self.state.value}") from None
        return self.state

    def can(self, event: SessionEvent) -> bool:
        return (self.state, event) in _TRANSITIONS
