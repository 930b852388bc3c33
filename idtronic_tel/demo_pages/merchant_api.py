"""The demo shop's backend side: it calls the daemon's merchant API over HTTP with its own API key, as a
real merchant's server would (docs/api.md), without blocking the reactor (twisted.web.client)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers

TIMEOUT_SECONDS = 10.0


@dataclass
class Answer:
    status: int
    body: dict[str, Any]
    retry_after: int | None = None

    @property
    def error(self) -> str:
        return str(self.body.get("error", ""))


class MerchantApi:
    """`base()`: the daemon's HTTP URL (known once it listens); `key()`: the merchant's API key, or None
    while the demo has not registered its merchant yet."""

    def __init__(self, reactor: Any, base: Callable[[], str], key: Callable[[], str | None]) -> None:
        self.reactor = reactor
        self.base = base
        self.key = key
        # No kept-alive connections: each call opens and closes its own (a demo's few requests).
        self.agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Answer:
        key = self.key()
        headers = Headers({b"accept": [b"application/json"]})
        if key is not None:
            headers.addRawHeader(b"authorization", f"Bearer {key}".encode())
        producer = None
        if body is not None:
            headers.addRawHeader(b"content-type", b"application/json")
            producer = FileBodyProducer(BytesIO(json.dumps(body).encode()))
        url = (self.base() + path).encode()
        d: Deferred[Any] = self.agent.request(method.encode(), url, headers, producer)
        timer = self.reactor.callLater(TIMEOUT_SECONDS, d.cancel)
        try:
            response = await d
            raw = await _body(response)
        finally:
            if timer.active():
                timer.cancel()
        try:
            parsed = json.loads(raw) if raw else {}
        except ValueError:
            parsed = {}
        retry = response.headers.getRawHeaders(b"retry-after") or [b""]
        return Answer(
            response.code,
            parsed if isinstance(parsed, dict) else {},
            int(retry[0]) if retry[0].isdigit() else None,
        )


class _Collect(Protocol):
    """A response body (readBody warns about the client's transport proxy)."""

    def __init__(self, done: Deferred[bytes]) -> None:
        self.done = done
        self.parts: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self.parts.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self.parts))
        else:
            self.done.errback(reason)


def _body(response: Any) -> Deferred[bytes]:
    done: Deferred[bytes] = Deferred()
    response.deliverBody(_Collect(done))
    return done
