"""One configured bind: its connection(s) to the SMSC, its window and its throughput cap.

Each connection is a ClientService: exponential back-off with jitter between attempts, the bind done in
`prepareConnection` (a refused bind counts as a failed attempt). A refused bind (wrong password, ...) is
logged once with the SMSC's status and then retried every `bind_refused_retry` seconds: retrying a wrong
password every second only fills the operator's logs and may get the account locked.

Mode "transceiver" is one connection; "transmitter_receiver" is two (submits on the transmitter, receipts
on the receiver).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from twisted.application.internet import backoffPolicy
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..config_schema import SmppBindConfig, SmppConfig
from ..reconnect import client_service
from . import codec
from .errors import BindRefused, NotBound
from .protocol import DeliverHandler, SessionSettings, SmppClientFactory, SmppClientProtocol
from .ratelimit import TokenBucket
from .session import SessionState
from .status import status_name

_CONNECTIONS = {
    "transceiver": ("transceiver",),
    "transmitter_receiver": ("transmitter", "receiver"),
    "transmitter": ("transmitter",),  # submits only; receipts come on another bind
}
_INITIAL_DELAY = 1.0
_FACTOR = 1.5

EndpointFactory = Callable[[str], IStreamClientEndpoint]


def session_settings(bind: SmppBindConfig, smpp: SmppConfig) -> SessionSettings:
    return SessionSettings(
        system_id=bind.system_id,
        password=bind.password,
        system_type=bind.system_type,
        enquire_link_interval=smpp.enquire_link_interval,
        link_dead_timeout=smpp.link_dead_timeout,
        response_timeout=smpp.response_timeout,
    )


class _Connection:
    """One ClientService and what it currently has bound."""

    def __init__(
        self, owner: SmppBind, mode: str, endpoint: IStreamClientEndpoint, jitter: Callable[[], float]
    ):
        self.owner = owner
        self.mode = mode
        self.label = f"{owner.config.name}/{mode}"
        self.protocol: SmppClientProtocol | None = None
        self.refused_status: int | None = None  # last bind refusal, None once a bind succeeds
        self._backoff = backoffPolicy(_INITIAL_DELAY, owner.smpp.reconnect_max_delay, _FACTOR, jitter)
        factory = SmppClientFactory(
            session_settings(owner.config, owner.smpp),
            owner.clock,
            owner.on_deliver if mode != "transmitter" else None,
            self.label,
        )
        self.service = client_service(
            endpoint, factory, SmppClientProtocol, self._bind, self._retry_delay, owner.clock
        )
        self.service.setName(self.label)

    def _retry_delay(self, attempt: int) -> float:
        if self.refused_status is not None:
            return self.owner.smpp.bind_refused_retry
        return float(self._backoff(attempt))

    def _bind(self, protocol: SmppClientProtocol) -> Deferred[None]:
        bound = protocol.bind(self.mode)

        def up(smsc: str) -> None:
            if self.refused_status is not None:
                self.owner.log.info("SMPP {label}: bind accepted again", label=self.label)
            self.refused_status = None
            self.protocol = protocol
            self.owner.log.info(
                "SMPP {label}: bound to {smsc} on {endpoint}",
                label=self.label,
                smsc=smsc,
                endpoint=self.owner.config.endpoint,
            )
            protocol.when_closed().addCallback(lambda _: self._down(protocol))
            self.owner.changed()

        def failed(failure: Failure) -> Failure:
            if isinstance(failure.value, BindRefused):
                status = failure.value.status
                if status != self.refused_status:
                    # Once per distinct status: the retry policy keeps retrying quietly and slowly.
                    self.owner.log.error(
                        "SMPP {label}: the SMSC refused the bind: {status}; retrying every {delay}s",
                        label=self.label,
                        status=status_name(status),
                        delay=self.owner.smpp.bind_refused_retry,
                    )
                self.refused_status = status
            else:
                self.owner.log.warn("SMPP {label}: bind failed: {why}", label=self.label, why=failure.value)
            return failure

        return bound.addCallbacks(up, failed)

    def _down(self, protocol: SmppClientProtocol) -> None:
        if self.protocol is protocol:
            self.protocol = None
            self.owner.log.info("SMPP {label}: connection closed", label=self.label)
            self.owner.changed()

    def unbind(self) -> Deferred[None]:
        if self.protocol is None:
            return succeed(None)
        return self.protocol.unbind()


class SmppBind(MultiService):
    log = Logger()

    def __init__(
        self,
        config: SmppBindConfig,
        smpp: SmppConfig,
        clock: IReactorTime,
        endpoint_for: EndpointFactory,
        on_deliver: DeliverHandler | None,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        super().__init__()
        if config.mode not in _CONNECTIONS:
            raise ValueError(f"bind {config.name}: unknown mode {config.mode!r}")
        self.config = config
        self.smpp = smpp
        self.clock = clock
        self.on_deliver = on_deliver
        self.name = config.name
        self.in_flight = 0
        self.submitted = 0  # submit_sm written since start: the operator's console derives the TPS
        self.bucket = TokenBucket(config.max_tps, clock)
        self._listeners: list[Callable[[], None]] = []
        self._connections = [
            _Connection(self, mode, endpoint_for(config.endpoint), jitter)
            for mode in _CONNECTIONS[config.mode]
        ]
        for connection in self._connections:
            connection.service.setServiceParent(self)
        # The connection that carries submit_sm: the transceiver, or the transmitter.
        self._submitter = self._connections[0]

    @property
    def window(self) -> int:
        return self.config.window

    def subscribe(self, listener: Callable[[], None]) -> None:
        """`listener()` is called whenever this bind may have become able to take more (or less) work."""
        self._listeners.append(listener)

    def changed(self) -> None:
        for listener in list(self._listeners):
            listener()

    @property
    def bound(self) -> bool:
        protocol = self._submitter.protocol
        return protocol is not None and protocol.state is SessionState.BOUND

    @property
    def refused_status(self) -> int | None:
        return self._submitter.refused_status

    def wait_time(self) -> float | None:
        """0: a submit may go now; > 0: seconds until the rate cap allows one; None: down or window full."""
        if not self.bound or self.in_flight >= self.window:
            return None
        return self.bucket.wait_time()

    def submit(self, fields: dict[str, Any]) -> Deferred[codec.Pdu]:
        """Write one submit_sm now (the caller checked wait_time() == 0). Raises NotBound if the session
        went away: nothing was written then. The caller calls `answered()` once the Deferred fires."""
        protocol = self._submitter.protocol
        if protocol is None:
            raise NotBound(f"bind {self.config.name} is down")
        result = protocol.submit_sm(fields)
        self.bucket.take()
        self.in_flight += 1
        self.submitted += 1
        return result

    def answered(self) -> None:
        """A submit's outcome is in (response, timeout or connection lost): its window slot is free.
        Called by the submitter's own callback rather than from one added here (a callback layer less per
        message); no changed() either: the caller decides what to send next once it has handled this
        outcome (a throttled message must go again before the next one takes the freed slot)."""
        self.in_flight -= 1

    def stopService(self) -> Deferred[None]:
        """Unbind every connection (each waits for unbind_resp or the response timeout), then stop the
        connection services so that they do not reconnect."""
        unbinding = [connection.unbind() for connection in self._connections]
        done: Deferred[Any] = DeferredList(unbinding, consumeErrors=True)
        done.addCallback(lambda _: maybeDeferred(MultiService.stopService, self))
        return done.addCallback(lambda _: None)


class BindRouter:
    """Round-robin over the binds that can take a submit now; a bind that is down, full or throttled is
    skipped, which is the failover."""

    def __init__(self, binds: list[SmppBind]) -> None:
        self.binds = binds
        self._next = 0

    def subscribe(self, listener: Callable[[], None]) -> None:
        for bind in self.binds:
            bind.subscribe(listener)

    def any_bound(self) -> bool:
        return any(bind.bound for bind in self.binds)

    def pick(self, only: SmppBind | None = None) -> tuple[SmppBind | None, float | None]:
        """(bind, 0) for a bind that can send now; else (None, seconds until the first rate-limited bind
        can send), or (None, None) when every bind is down or full. `only` restricts the choice (the
        later parts of a long message stay on the bind of its first part)."""
        candidates = [only] if only is not None else self.binds
        count = len(candidates)
        soonest: float | None = None
        for step in range(count):
            index = (self._next + step) % count
            bind = candidates[index]
            wait = bind.wait_time()
            if wait is None:
                continue
            if wait <= 0:
                if only is None:
                    self._next = (index + 1) % count
                return bind, 0.0
            soonest = wait if soonest is None else min(soonest, wait)
        return None, soonest
