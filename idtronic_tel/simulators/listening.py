"""A simulated peer listening on a server endpoint string, as a service (the SMSC, the Asterisk manager)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.logger import Logger
from twisted.python.failure import Failure


class ListeningService(Service):
    """Listens on `listen` (`tcp:0:interface=127.0.0.1` picks a free port: `when_listening()` gives it);
    on stop, `on_stop` drops what the peer holds (connections, timers, calls), then the port closes."""

    log = Logger()

    def __init__(
        self, reactor: Any, listen: str, factory: IProtocolFactory, on_stop: Callable[[], None], name: str
    ) -> None:
        self.reactor = reactor
        self.listen = listen
        self.factory = factory
        self.on_stop = on_stop
        self.port: IListeningPort | None = None
        self._waiters: list[Deferred[IListeningPort]] = []
        self.setName(name)

    def startService(self) -> None:
        super().startService()

        def listening(port: IListeningPort) -> None:
            self.port = port
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                waiter.callback(port)

        def failed(failure: Failure) -> None:
            waiters, self._waiters = self._waiters, []
            if not waiters:
                self.log.failure("{name} cannot listen", failure, name=self.name)
            for waiter in waiters:
                waiter.errback(failure)

        serverFromString(self.reactor, self.listen).listen(self.factory).addCallbacks(listening, failed)

    def when_listening(self) -> Deferred[IListeningPort]:
        if self.port is not None:
            return succeed(self.port)
        waiter: Deferred[IListeningPort] = Deferred()
        self._waiters.append(waiter)
        return waiter

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        self.on_stop()
        if self.port is not None:
            port, self.port = self.port, None
            stopped: Deferred[None] | None = port.stopListening()
            return stopped
        return None
