"""AMI actions in flight on one session, correlated by `ActionID` (sans-I/O but for the timers): each
waits for its response, a list action (`EventList: start` ... `EventList: Complete`) also collects its
events, and each has a timeout. The errors every AMI caller sees are defined here."""

from __future__ import annotations

from dataclasses import dataclass

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from idtronic_tel.ivr.ami_codec import Message
from idtronic_tel.logsafe import loggable

SHUTTING_DOWN_MESSAGE = "Asterisk is shutting down"


class AmiError(Exception):
    pass


class AmiActionTimeout(AmiError):
    """No response within the action timeout. For an Originate: the call may or may not be placed."""


class AmiConnectionLost(AmiError):
    """The session ended before the response came. For an Originate: the call may or may not be placed."""


class AmiNotLoggedIn(AmiError):
    """The action was not sent: the session is not logged in (or is shutting down, or closed)."""


class AmiLoginRefused(AmiError):
    """Asterisk answered the login with an error (bad credentials, or shutting down)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def shutting_down(self) -> bool:
        return self.message == SHUTTING_DOWN_MESSAGE


def is_success(message: Message) -> bool:
    return (message.response or "").lower() == "success"


@dataclass(frozen=True)
class ListResult:
    response: Message
    events: tuple[Message, ...]  # the items, without the ...Complete event
    complete: Message | None  # the closing event (carries ListItems)


@dataclass
class _Pending:
    action: str
    result: Deferred[Message]
    timer: IDelayedCall | None
    collecting: list[Message] | None = None  # list action whose EventList started
    list_result: Deferred[ListResult] | None = None
    response: Message | None = None


class PendingActions:
    """The actions of one session waiting for their response (and, for a list action, its events)."""

    log = Logger()

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self._pending: dict[str, _Pending] = {}

    def __contains__(self, action_id: str) -> bool:
        return action_id in self._pending

    def add(
        self,
        action: str,
        action_id: str,
        timeout: float,
        result: Deferred[Message],
        list_result: Deferred[ListResult] | None,
    ) -> None:
        timer = self.clock.callLater(timeout, self._timed_out, action_id)
        self._pending[action_id] = _Pending(action, result, timer, list_result=list_result)

    def response(self, msg: Message) -> None:
        action_id = msg.action_id
        pending = self._pending.get(action_id) if action_id is not None else None
        if action_id is None or pending is None:
            # Late (after its timeout) or never asked for: correlation is by ActionID only.
            self.log.debug("AMI response for unknown ActionID {action_id}", action_id=loggable(action_id))
            return
        if pending.list_result is not None and (msg.get("EventList") or "").lower() == "start":
            pending.response = msg
            pending.collecting = []
            return
        self._settle(action_id)
        if pending.list_result is not None:
            pending.list_result.callback(ListResult(msg, (), None))
        else:
            pending.result.callback(msg)

    def collect(self, msg: Message) -> bool:
        """True when the event is an item (or the end) of a list action in progress: it is taken."""
        action_id = msg.action_id
        pending = self._pending.get(action_id) if action_id is not None else None
        if action_id is None or pending is None or pending.collecting is None or pending.list_result is None:
            return False
        if (msg.get("EventList") or "").lower() == "complete":
            self._settle(action_id)
            assert pending.response is not None
            pending.list_result.callback(ListResult(pending.response, tuple(pending.collecting), msg))
        else:
            pending.collecting.append(msg)
        return True

    def lost(self) -> None:
        """The session ended: every action still waiting fails with AmiConnectionLost."""
        pending, self._pending = self._pending, {}
        for p in pending.values():
            if p.timer is not None and p.timer.active():
                p.timer.cancel()
            _fail(p, AmiConnectionLost(f"AMI connection lost before the {p.action} response"))

    def _settle(self, action_id: str) -> None:
        pending = self._pending.pop(action_id)
        if pending.timer is not None and pending.timer.active():
            pending.timer.cancel()

    def _timed_out(self, action_id: str) -> None:
        pending = self._pending.pop(action_id, None)
        if pending is not None:
            _fail(pending, AmiActionTimeout(f"no AMI response to {pending.action} ({action_id}) in time"))


def _fail(pending: _Pending, error: AmiError) -> None:
    if pending.list_result is not None:
        pending.list_result.errback(error)
    else:
        pending.result.errback(error)
