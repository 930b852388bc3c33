"""The states of one AMI session and its one transition table (`ami_protocol.AmiProtocol` fires them)."""

from __future__ import annotations

import enum

from idtronic_tel.core.states import Transitions


class SessionState(enum.Enum):
    CONNECTING = "connecting"  # TCP up, banner not seen yet
    CONNECTED = "connected"  # banner seen, not logged in
    AUTHENTICATING = "authenticating"  # Challenge/Login in flight
    LOGGED_IN = "logged_in"
    SHUTTING_DOWN = "shutting_down"  # Asterisk refuses new work; calls in flight still report
    CLOSING = "closing"  # we are closing (login refused, Logoff, keepalive lost, framing error)
    CLOSED = "closed"


class SessionInput(enum.Enum):
    BANNER = "banner"
    LOGIN_STARTED = "login_started"
    LOGIN_ACCEPTED = "login_accepted"
    LOGIN_REFUSED = "login_refused"
    SHUTDOWN_NOTICE = "shutdown_notice"
    CLOSE = "close"
    LOST = "lost"


_S = SessionState
_I = SessionInput
TRANSITIONS = Transitions(
    "AMI session",
    SessionState,
    SessionInput,
    {
        (_S.CONNECTING, _I.BANNER): _S.CONNECTED,
        (_S.CONNECTED, _I.LOGIN_STARTED): _S.AUTHENTICATING,
        (_S.AUTHENTICATING, _I.LOGIN_ACCEPTED): _S.LOGGED_IN,
        (_S.AUTHENTICATING, _I.LOGIN_REFUSED): _S.CLOSING,  # Asterisk closes 1 s after refusing anyway
        # Shutdown notices come from the peer: valid in every state, they only matter once logged in.
        (_S.CONNECTING, _I.SHUTDOWN_NOTICE): _S.CONNECTING,
        (_S.CONNECTED, _I.SHUTDOWN_NOTICE): _S.CONNECTED,
        (_S.AUTHENTICATING, _I.SHUTDOWN_NOTICE): _S.AUTHENTICATING,  # the Login itself will be refused
        (_S.LOGGED_IN, _I.SHUTDOWN_NOTICE): _S.SHUTTING_DOWN,
        (_S.SHUTTING_DOWN, _I.SHUTDOWN_NOTICE): _S.SHUTTING_DOWN,
        (_S.CLOSING, _I.SHUTDOWN_NOTICE): _S.CLOSING,
        **{(s, _I.CLOSE): _S.CLOSING for s in SessionState if s is not _S.CLOSED},
        (_S.CLOSED, _I.CLOSE): _S.CLOSED,
        **{(s, _I.LOST): _S.CLOSED for s in SessionState},
    },
    initial=(_S.CONNECTING,),
)

# Actions Asterisk accepts before login (everything else gets "Permission denied").
PRE_LOGIN_ACTIONS = frozenset({"challenge", "login", "logoff"})
