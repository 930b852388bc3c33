"""Assembly of the SMPP edge: the binds, the router and the outbox worker, as one service."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import IReactorTime

from ..config_schema import SmppConfig
from ..core.ports import SmsOutbox
from .binds import BindRouter, EndpointFactory, SmppBind
from .handoff import HandoffWorker
from .receipts import ReceiptHandler, SubmissionTracker


class SmppService(MultiService):
    """Starts the binds, then the worker; stops the worker first (it waits for the responses of what it
    wrote), then unbinds every bind. MultiService would stop them all at once, and an unbind racing
    outstanding submits would make them go out a second time."""

    def __init__(self, binds: list[SmppBind], worker: HandoffWorker) -> None:
        super().__init__()
        self.binds = binds
        self.router = worker.router
        self.worker = worker
        for bind in binds:
            bind.setServiceParent(self)
        worker.setServiceParent(self)

    def stopService(self) -> Deferred[None]:
        self.running = 0

        def unbind_all(_: object) -> Deferred[Any]:
            return DeferredList([bind.stopService() for bind in self.binds], consumeErrors=True)

        stopped: Deferred[Any] = self.worker.stopService()
        return stopped.addCallback(unbind_all).addCallback(lambda _: None)

    def health(self) -> dict[str, bool]:
        """Bind name -> bound, for /healthz."""
        return {bind.config.name: bind.bound for bind in self.binds}


def makeSmppService(
    config: SmppConfig,
    outbox: SmsOutbox,
    worker: str,
    reactor: Any = None,
    endpoint_for: EndpointFactory | None = None,
    jitter: Callable[[], float] = random.random,
) -> SmppService:
    """`worker` names this daemon in the outbox (e.g. host name and pid). `reactor` provides time and
    connections; `endpoint_for` turns a bind's endpoint string into an endpoint (clientFromString)."""
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    clock: IReactorTime = reactor
    if endpoint_for is None:

        def endpoint_for(description: str) -> Any:
            return clientFromString(reactor, description)

    tracker = SubmissionTracker()
    binds = [
        SmppBind(bind, config, clock, endpoint_for, ReceiptHandler(outbox, bind.name, tracker, clock), jitter)
        for bind in config.binds
    ]
    router = BindRouter(binds)
    worker_service = HandoffWorker(
        outbox,
        router,
        clock,
        worker,
        poll_interval=config.poll_interval,
        response_timeout=config.response_timeout,
        registered_delivery=config.registered_delivery,
        tracker=tracker,
    )
    return SmppService(binds, worker_service)
