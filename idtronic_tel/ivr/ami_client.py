"""The AMI link as the rest of the daemon sees it: one object that outlives TCP sessions.

* `ClientService` reconnects with backoff; `prepareConnection` logs in, so a refused login counts as a failed
  attempt and backs off like a refused TCP connection (Asterisk also closes 1 s after refusing).
* Event subscriptions belong to this object, not to a session: they survive reconnects.
* `expect_originate_response(action_id)` waits for the `OriginateResponse` event of an Async Originate on
  ANY session: Asterisk sends that event to every logged-in session, including one opened after the
  originating session was dropped (ami-drop-kicked-session.txt), so the ActionID alone correlates it.
* `originate_outcome()` maps the event to the core's `CallOutcome` (docs/protocols/ORIGINATE-OUTCOMES.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from twisted.application.internet import backoffPolicy
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IAddress, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from idtronic_tel.config_schema import AmiConfig
from idtronic_tel.core.ports import CallOutcome
from idtronic_tel.ivr.ami_actions import AmiLoginRefused, AmiNotLoggedIn, ListResult
from idtronic_tel.ivr.ami_codec import Message
from idtronic_tel.ivr.ami_protocol import AmiProtocol
from idtronic_tel.ivr.ami_states import SessionState
from idtronic_tel.logsafe import loggable
from idtronic_tel.reconnect import client_service

EventCallback = Callable[[Message], None]

# OriginateResponse `Reason` (Asterisk's AST_CONTROL_* of the outgoing channel) -> outcome.
_REASONS = {"5": CallOutcome.BUSY, "3": CallOutcome.NO_ANSWER, "8": CallOutcome.CONGESTION}


def originate_outcome(event: Message) -> CallOutcome:
    """Success -> ANSWERED; Failure with Reason 5/3/8 -> BUSY/NO_ANSWER/CONGESTION; anything else
    (Reason 0: rejected, missing context/extension/technology; 1: hung up) -> FAILED."""
    if (event.response or "").lower() == "success":
        return CallOutcome.ANSWERED
    return _REASONS.get((event.get("Reason") or "").strip(), CallOutcome.FAILED)


class _ProtocolFactory(Factory):
    def __init__(self, client: AmiClient) -> None:
        self.client = client

    def buildProtocol(self, addr: IAddress | None) -> AmiProtocol:
        return self.client._build_protocol()


class AmiClient(Service):
    """Owns the AMI link. Start it as a service; use `ready`, `when_ready()`, `send_action()`,
    `originate()`, `expect_originate_response()`, `subscribe()`."""

    log = Logger()

    def __init__(
        self,
        endpoint: IStreamClientEndpoint,
        config: AmiConfig,
        *,
        clock: IReactorTime | None = None,
        retry_policy: Callable[[int], float] | None = None,
        events: str = "call,system",
    ) -> None:
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        assert clock is not None
        self.clock: IReactorTime = clock
        self.config = config
        self.events = events
        self.endpoint = endpoint
        self.login_attempts = 0
        self.logins = 0
        self._current: AmiProtocol | None = None
        self._subscribers: list[EventCallback] = []
        self._ready_listeners: list[Callable[[], None]] = []
        self._ready_waiters: list[Deferred[AmiProtocol]] = []
        self._originate_waiters: dict[str, Deferred[Message]] = {}
        policy = retry_policy or backoffPolicy(
            initialDelay=1.0, maxDelay=config.reconnect_max_delay, factor=1.5
        )
        self._service = client_service(
            endpoint, _ProtocolFactory(self), AmiProtocol, self._prepare, policy, clock
        )

    # -- service -----------------------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._service.startService()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        current = self._current
        d: Deferred[None] = self._service.stopService()
        if current is not None:
            current.abort()
        waiters, self._ready_waiters = self._ready_waiters, []
        for w in waiters:
            if not w.called:
                w.errback(AmiNotLoggedIn("AMI client stopped"))
        return d

    # -- sessions ----------------------------------------------------------------------------------------

    def _build_protocol(self) -> AmiProtocol:
        return AmiProtocol(
            self.clock,
            action_timeout=self.config.action_timeout,
            ping_interval=self.config.ping_interval,
            on_event=self._on_event,
            on_state=self._on_state,
        )

    async def _prepare(self, proto: AmiProtocol) -> None:
        self.login_attempts += 1
        try:
            await proto.login(
                self.config.username, self.config.secret, auth=self.config.auth, events=self.events
            )
        except AmiLoginRefused as e:
            # Logged once per attempt; ClientService then schedules the next attempt with backoff.
            self.log.warn(
                "AMI login refused for user {username} ({reason}), attempt {attempt}",
                username=self.config.username,
                reason=loggable(e.message),
                attempt=self.login_attempts,
            )
            proto.abort()
            raise
        except CancelledError:
            proto.abort()  # the service is stopping
            raise
        except Exception as e:
            self.log.warn(
                "AMI login failed for user {username}: {error}, attempt {attempt}",
                username=self.config.username,
                error=repr(e),
                attempt=self.login_attempts,
            )
            proto.abort()
            raise
        self.logins += 1
        self.login_attempts = 0
        self._current = proto
        self.log.info(
            "AMI link up on {endpoint}: logged in as {username} ({banner})",
            endpoint=self.config.endpoint,
            username=self.config.username,
            banner=loggable(proto.banner),
        )
        # Announce on the next turn: ClientService has not recorded the connection yet, and a waiter that
        # stops the service from inside prepareConnection would confuse its state machine.
        self.clock.callLater(0, self._announce, proto)

    def _announce(self, proto: AmiProtocol) -> None:
        if proto is not self._current or not self.ready:
            return
        waiters, self._ready_waiters = self._ready_waiters, []
        for w in waiters:
            if not w.called:
                w.callback(proto)
        for listener in list(self._ready_listeners):
            try:
                listener()
            except Exception:
                self.log.failure("AMI ready listener failed")

    def _on_state(self, proto: AmiProtocol, state: SessionState) -> None:
        if proto is not self._current:
            return
        if state is SessionState.SHUTTING_DOWN:
            self.log.warn("Asterisk is shutting down: no new calls until it is back")
        elif state in (SessionState.CLOSING, SessionState.CLOSED):
            self._current = None
            self.log.warn("AMI link lost; reconnecting")

    def _on_event(self, event: Message) -> None:
        name = (event.event or "").lower()
        if name == "originateresponse":
            action_id = event.action_id
            waiter = self._originate_waiters.pop(action_id, None) if action_id else None
            if waiter is not None:
                waiter.callback(event)
        elif name == "shutdown":
            self.log.warn(
                "Asterisk shutdown (Shutdown: {how}, Restart: {restart})",
                how=loggable(event.get("Shutdown")),
                restart=loggable(event.get("Restart")),
            )
        for callback in list(self._subscribers):
            try:
                callback(event)
            except Exception:
                self.log.failure("AMI event subscriber failed on {event}", event=loggable(event.event))

    # -- public API --------------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Logged in and Asterisk not shutting down: new calls may be placed."""
        return self._current is not None and self._current.state is SessionState.LOGGED_IN

    @property
    def protocol(self) -> AmiProtocol | None:
        return self._current

    def when_ready(self) -> Deferred[AmiProtocol]:
        """Fires with the session once logged in (now, or at the next login). Cancellable."""
        d: Deferred[AmiProtocol]
        if self.ready:
            assert self._current is not None
            d = Deferred()
            d.callback(self._current)
            return d

        def cancel(d: Deferred[AmiProtocol]) -> None:
            if d in self._ready_waiters:
                self._ready_waiters.remove(d)

        d = Deferred(cancel)
        self._ready_waiters.append(d)
        return d

    def on_ready(self, callback: Callable[[], None]) -> None:
        """Call `callback` after every successful login (the dialer drains its queue then)."""
        self._ready_listeners.append(callback)

    def subscribe(self, callback: EventCallback) -> Callable[[], None]:
        """Receive every event of every session; returns the unsubscribe function."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    def send_action(
        self,
        action: str,
        headers: Iterable[tuple[str, str]] = (),
        *,
        action_id: str | None = None,
        timeout: float | None = None,
    ) -> Deferred[Message]:
        """Send on the current session; fails with AmiNotLoggedIn when there is none."""
        if self._current is None:
            d: Deferred[Message] = Deferred()
            d.errback(AmiNotLoggedIn("AMI not connected"))
            return d
        return self._current.send_action(action, headers, action_id=action_id, timeout=timeout)

    def send_list_action(
        self,
        action: str,
        headers: Iterable[tuple[str, str]] = (),
        *,
        action_id: str | None = None,
    ) -> Deferred[ListResult]:
        if self._current is None:
            d: Deferred[ListResult] = Deferred()
            d.errback(AmiNotLoggedIn("AMI not connected"))
            return d
        return self._current.send_list_action(action, headers, action_id=action_id)

    def expect_originate_response(self, action_id: str) -> Deferred[Message]:
        """The OriginateResponse event carrying `action_id`, from whichever session receives it.
        Register BEFORE writing the Originate. Cancel the Deferred to stop waiting."""
        if action_id in self._originate_waiters:
            raise ValueError(f"already waiting for OriginateResponse {action_id!r}")

        def cancel(_: Deferred[Message]) -> None:
            self._originate_waiters.pop(action_id, None)

        d: Deferred[Message] = Deferred(cancel)
        self._originate_waiters[action_id] = d
        return d

    def originate(self, action_id: str, headers: Iterable[tuple[str, str]]) -> Deferred[Message]:
        """Write `Action: Originate` (headers must include `Async: true`); fires with the immediate
        response. Fails with AmiNotLoggedIn (not written) or AmiActionTimeout/AmiConnectionLost (in doubt)."""
        if not self.ready:
            d: Deferred[Message] = Deferred()
            d.errback(AmiNotLoggedIn("AMI not logged in (or Asterisk shutting down)"))
            return d
        return self.send_action("Originate", headers, action_id=action_id)

    @property
    def waiting_originates(self) -> int:
        return len(self._originate_waiters)
