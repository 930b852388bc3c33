"""A client link that reconnects (the AMI link, each SMPP bind): Twisted's `ClientService`, with the new
connection prepared (AMI login, SMPP bind) before it counts as connected, so that a refused login or bind
counts as a failed attempt and backs off like a refused TCP connection."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from twisted.application.internet import ClientService
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocolFactory, IReactorTime, IStreamClientEndpoint

P = TypeVar("P")


def client_service(
    endpoint: IStreamClientEndpoint,
    factory: IProtocolFactory,
    protocol: type[P],
    prepare: Callable[[P], Awaitable[object]],
    retry_policy: Callable[[int], float],
    clock: IReactorTime,
) -> ClientService:
    """`prepare(protocol)` runs on each new connection; the connection is given to `whenConnected()`
    callers once it succeeded."""

    async def prepare_connection(proxy: Any) -> None:
        # ClientService hands over a proxy around the protocol the factory built.
        built = getattr(proxy, "_protocol", proxy)
        assert isinstance(built, protocol)
        # Workaround (Twisted 26.10): ClientService has no transition for "connection lost" while
        # prepareConnection runs or after it failed (NoTransition is raised from connectionLost), and
        # peers close after refusing a login or a bind. Silence the proxy's notice until the connection
        # is prepared; a failed prepareConnection already counts as a failed attempt.
        notify = getattr(proxy, "_lostNotification", None)
        if notify is not None:
            proxy._lostNotification = _ignore_lost
        await prepare(built)
        if notify is not None:
            proxy._lostNotification = notify

    return ClientService(
        endpoint,
        factory,
        retryPolicy=retry_policy,
        clock=clock,
        prepareConnection=lambda proxy: Deferred.fromCoroutine(prepare_connection(proxy)),
    )


def _ignore_lost(reason: object) -> None:
    pass
