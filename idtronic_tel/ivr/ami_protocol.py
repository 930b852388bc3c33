"""One AMI session over one TCP connection: a thin Twisted protocol around `ami_codec`.

What it adds to the codec:
* an explicit session state (`ami_states`: `SessionState` + one transition table);
* login, with the MD5 challenge or a plain secret;
* `ActionID` correlation: every action gets an id and a timeout; events may arrive between an action and
  its response; list actions (`EventList: start` ... `EventList: Complete`) collect their events;
* a `Ping` keepalive once logged in: a Pong that does not come within the action timeout drops the link
  (a half-open TCP connection would otherwise look healthy for hours);
* Asterisk's shutdown notices (`Message: Asterisk is shutting down`, `Event: Shutdown`).

The actions in flight and the errors are `ami_actions`'. Reconnection, event subscriptions and Originate
bookkeeping live in `ami_client`, which outlives sessions.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterable, Iterator

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from idtronic_tel.core.states import IllegalTransition
from idtronic_tel.ivr.ami_actions import (
    SHUTTING_DOWN_MESSAGE,
    AmiActionTimeout,
    AmiConnectionLost,
    AmiError,
    AmiLoginRefused,
    AmiNotLoggedIn,
    ListResult,
    PendingActions,
    is_success,
)
from idtronic_tel.ivr.ami_codec import (
    AmiDecoder,
    AmiProtocolError,
    BadLine,
    Banner,
    Message,
    encode_action,
)
from idtronic_tel.ivr.ami_states import PRE_LOGIN_ACTIONS, TRANSITIONS, SessionInput, SessionState
from idtronic_tel.logsafe import loggable


def md5_key(challenge: str, secret: str) -> str:
    """Key of an MD5 login: lowercase hex md5(challenge + secret)."""
    return hashlib.md5((challenge + secret).encode("utf-8"), usedforsecurity=False).hexdigest()


class AmiProtocol(Protocol):
    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        *,
        action_timeout: float = 10.0,
        ping_interval: float = 20.0,
        action_ids: Iterator[str] | None = None,
        on_event: Callable[[Message], None] | None = None,
        on_state: Callable[[AmiProtocol, SessionState], None] | None = None,
    ) -> None:
        self.clock = clock
        self.action_timeout = action_timeout
        self.ping_interval = ping_interval
        self._action_ids = action_ids if action_ids is not None else (f"idt-{n}" for n in itertools.count(1))
        self.on_event = on_event
        self.on_state = on_state
        self.state = SessionState.CONNECTING
        self.banner: str | None = None
        self._decoder = AmiDecoder(expect_banner=True)
        self._pending = PendingActions(clock)
        self._banner_waiters: list[Deferred[str]] = []
        self._closed_waiters: list[Deferred[None]] = []
        self._ping_call: IDelayedCall | None = None

    # -- state -------------------------------------------------------------------------------------------

    def _fire(self, event: SessionInput) -> None:
        try:
            new = TRANSITIONS.next(self.state, event)
        except IllegalTransition as e:
            raise AmiError(str(e)) from None
        if new is self.state:
            return
        self.state = new
        if new is SessionState.LOGGED_IN:
            self._schedule_ping()
        elif new is not SessionState.SHUTTING_DOWN:
            self._cancel_ping()  # keep pinging while shutting down: calls in flight still report
        if self.on_state is not None:
            self.on_state(self, new)

    @property
    def logged_in(self) -> bool:
        return self.state is SessionState.LOGGED_IN

    # -- Twisted callbacks -------------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        try:
            items = self._decoder.receive_data(data)
        except AmiProtocolError as e:
            self.log.warn("AMI framing error, dropping the connection: {error}", error=str(e))
            self.abort()
            return
        for item in items:
            if self.state is SessionState.CLOSED:
                return
            if isinstance(item, Message):
                self._message(item)
            elif isinstance(item, Banner):
                self.banner = item.text
                self._fire(SessionInput.BANNER)
                waiters, self._banner_waiters = self._banner_waiters, []
                for w in waiters:
                    if not w.called:  # a waiter may have timed out already
                        w.callback(item.text)
            elif isinstance(item, BadLine):
                self.log.warn("AMI line without ':' ignored: {line}", line=loggable(item.line, 80))

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        self._fire(SessionInput.LOST)
        self._cancel_ping()
        self._pending.lost()
        banner, self._banner_waiters = self._banner_waiters, []
        for w in banner:
            if not w.called:
                w.errback(AmiConnectionLost("AMI connection lost before the banner"))
        closed, self._closed_waiters = self._closed_waiters, []
        for c in closed:
            c.callback(None)

    # -- incoming ----------------------------------------------------------------------------------------

    def _message(self, msg: Message) -> None:
        if msg.get("Message") == SHUTTING_DOWN_MESSAGE:
            self._fire(SessionInput.SHUTDOWN_NOTICE)
        if msg.event is not None:
            self._event(msg)
        elif msg.response is not None:
            self._response(msg)
        else:
            self.log.warn(
                "AMI message that is neither a response nor an event ignored: {keys}",
                keys=loggable([k for k, _ in msg.headers][:5]),
            )

    def _response(self, msg: Message) -> None:
        self._pending.response(msg)

    def _event(self, msg: Message) -> None:
        if self._pending.collect(msg):
            return
        if (msg.event or "").lower() == "shutdown":
            self._fire(SessionInput.SHUTDOWN_NOTICE)
        if self.on_event is not None:
            try:
                self.on_event(msg)
            except Exception:
                self.log.failure("AMI event handler failed on {event}", event=loggable(msg.event))

    # -- outgoing ----------------------------------------------------------------------------------------

    def _may_send(self, action: str) -> bool:
        if self.state in (SessionState.LOGGED_IN, SessionState.SHUTTING_DOWN):
            return True
        return self.state is SessionState.AUTHENTICATING and action.lower() in PRE_LOGIN_ACTIONS

    def send_action(
        self,
        action: str,
        headers: Iterable[tuple[str, str]] = (),
        *,
        action_id: str | None = None,
        timeout: float | None = None,
    ) -> Deferred[Message]:
        """Write one action; fires with its response (Success or Error alike: see `is_success`).

        Fails with AmiNotLoggedIn (nothing written), AmiActionTimeout or AmiConnectionLost (written,
        outcome unknown). A header value containing a line break raises ValueError (nothing written)."""
        result: Deferred[Message] = Deferred()
        self._send(action, headers, action_id, timeout, result, None)
        return result

    def send_list_action(
        self,
        action: str,
        headers: Iterable[tuple[str, str]] = (),
        *,
        action_id: str | None = None,
        timeout: float | None = None,
    ) -> Deferred[ListResult]:
        """A list action (CoreShowChannels, Status...): the response then the events up to `Complete`."""
        lst: Deferred[ListResult] = Deferred()
        self._send(action, headers, action_id, timeout, Deferred(), lst)
        return lst

    def _send(
        self,
        action: str,
        headers: Iterable[tuple[str, str]],
        action_id: str | None,
        timeout: float | None,
        result: Deferred[Message],
        list_result: Deferred[ListResult] | None,
    ) -> None:
        target: Deferred[Message] | Deferred[ListResult] = list_result if list_result is not None else result
        if not self._may_send(action):
            target.errback(AmiNotLoggedIn(f"AMI {action} not sent: session {self.state.value}"))
            return
        aid = action_id if action_id is not None else next(self._action_ids)
        if aid in self._pending:
            target.errback(AmiError(f"ActionID {aid!r} already in flight"))
            return
        data = encode_action(action, aid, headers)  # may raise ValueError: nothing written
        delay = self.action_timeout if timeout is None else timeout
        self._pending.add(action, aid, delay, result, list_result)
        assert self.transport is not None
        self.transport.write(data)

    # -- login -------------------------------------------------------------------------------------------

    def when_banner(self, timeout: float | None = None) -> Deferred[str]:
        if self.banner is not None:
            d: Deferred[str] = Deferred()
            d.callback(self.banner)
            return d
        if self.state is SessionState.CLOSED:
            d = Deferred()
            d.errback(AmiConnectionLost("AMI connection closed"))
            return d
        waiter: Deferred[str] = Deferred()
        self._banner_waiters.append(waiter)
        waiter.addTimeout(self.action_timeout if timeout is None else timeout, self.clock)
        return waiter

    def login(
        self,
        username: str,
        secret: str,
        *,
        auth: str = "md5",
        events: str | None = "call,system",
        action_ids: tuple[str, str] | None = None,
    ) -> Deferred[Message]:
        """Log in; fires with the Login response, fails with AmiLoginRefused, AmiActionTimeout...

        `events` is the Events header: "on", "off" or event classes ("call,system": OriginateResponse and
        Hangup are `call` events, Shutdown and FullyBooted are `system`); None: no header (Asterisk: on)."""
        return Deferred.fromCoroutine(self._login(username, secret, auth, events, action_ids))

    async def _login(
        self, username: str, secret: str, auth: str, events: str | None, action_ids: tuple[str, str] | None
    ) -> Message:
        await self.when_banner()
        self._fire(SessionInput.LOGIN_STARTED)
        ids: tuple[str | None, str | None] = action_ids if action_ids is not None else (None, None)
        try:
            if auth == "md5":
                challenge = await self.send_action("Challenge", [("AuthType", "MD5")], action_id=ids[0])
                value = challenge.get("Challenge")
                if not is_success(challenge) or not value:
                    raise AmiLoginRefused(challenge.get("Message") or "MD5 challenge refused")
                headers = [("AuthType", "md5"), ("Username", username), ("Key", md5_key(value, secret))]
            elif auth == "plain":
                headers = [("Username", username), ("Secret", secret)]
            else:
                raise ValueError(f"unknown AMI auth {auth!r}: md5 or plain")
            if events is not None:
                headers.append(("Events", events))
            response = await self.send_action("Login", headers, action_id=ids[1])
            if not is_success(response):
                raise AmiLoginRefused(response.get("Message") or "login refused")
        except AmiLoginRefused:
            if self.state is SessionState.AUTHENTICATING:
                self._fire(SessionInput.LOGIN_REFUSED)
                if self.transport is not None:  # Asterisk closes too; don't wait for it
                    self.transport.abortConnection()  # type: ignore[attr-defined]
            raise
        self._fire(SessionInput.LOGIN_ACCEPTED)
        return response

    # -- keepalive ---------------------------------------------------------------------------------------

    def _schedule_ping(self) -> None:
        self._cancel_ping()
        if self.ping_interval > 0:
            self._ping_call = self.clock.callLater(self.ping_interval, self._ping)

    def _cancel_ping(self) -> None:
        if self._ping_call is not None and self._ping_call.active():
            self._ping_call.cancel()
        self._ping_call = None

    def _ping(self) -> None:
        self._ping_call = None
        d = self.send_action("Ping")

        def pong(_: Message) -> None:
            # Any answer proves the link alive, even "Asterisk is shutting down".
            if self.state in (SessionState.LOGGED_IN, SessionState.SHUTTING_DOWN):
                self._schedule_ping()

        def no_pong(f: Failure) -> None:
            if f.check(AmiActionTimeout):
                self.log.warn(
                    "AMI keepalive: no Pong within {timeout}s, dropping the connection",
                    timeout=self.action_timeout,
                )
                self.abort()
            elif not f.check(AmiConnectionLost, AmiNotLoggedIn):
                self.log.failure("AMI keepalive failed", f)

        d.addCallbacks(pong, no_pong)

    # -- closing -----------------------------------------------------------------------------------------

    def abort(self) -> None:
        """Drop the TCP connection now (no Logoff): used when the link cannot be trusted."""
        if self.state is SessionState.CLOSED:
            return
        self._fire(SessionInput.CLOSE)
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def logoff(self) -> Deferred[None]:
        """Polite close: Logoff, then wait for Asterisk to close (or drop after the action timeout)."""
        closed = self.when_closed()
        if self.state in (SessionState.LOGGED_IN, SessionState.SHUTTING_DOWN):
            d = self.send_action("Logoff")
            d.addErrback(lambda _: None)
            d.addBoth(lambda _: self.abort())
        else:
            self.abort()
        return closed

    def when_closed(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if self.state is SessionState.CLOSED:
            d.callback(None)
        else:
            self._closed_waiters.append(d)
        return d
