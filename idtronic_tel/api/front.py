"""The HTTP front: what every HTTP listener does on a connection before a resource sees a request.

Limits hold while reading, not after: a declared Content-Length over the limit is answered 413 before
any body byte is read, a chunked body is cut at the limit, and bodies stay in memory (Twisted's Request
spools any body of 100 kB or more, and every chunked one, to a temporary file). The request line and
headers must arrive within `header_timeout` and the body within `body_timeout` (Twisted's own timeout
restarts on every byte, so a client sending one byte every few seconds kept its connection for ever); a
connection idle between requests is closed after `header_timeout` too. One client address holds at most
`max_connections_per_address` connections: more are closed as they are accepted.

A refusal is the API's JSON error, then the connection is closed; each is counted in
`idtronic_http_refused_total` by reason."""

from __future__ import annotations

import json
from collections import Counter as Tally
from io import BytesIO
from typing import Any

from prometheus_client import Counter
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.http import HTTPChannel

from ..config_schema import HttpConfig
from .errors import REASONS, ApiError

REFUSED = Counter(
    "idtronic_http_refused",
    "HTTP requests or connections refused by the front (body too large, deadline, connections per address)",
    ["reason"],
)


def raw_answer(error: ApiError) -> bytes:
    """A complete HTTP/1.1 response carrying the error, for a connection about to be closed."""
    body = json.dumps(error.body()).encode()
    head = [
        b"HTTP/1.1 %d %s" % (error.status, REASONS[error.status]),
        b"Content-Type: application/json; charset=utf-8",
        b"Content-Length: %d" % len(body),
        b"Cache-Control: no-store",
        b"Connection: close",
    ]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


class BoundedRequest(server.Request):
    """Keeps the body in memory and never more than the limit: the channel refuses the request instead."""

    channel: GuardedChannel

    def gotLength(self, length: int | None) -> None:
        self.content = BytesIO()

    def handleContentChunk(self, data: bytes) -> None:
        assert self.content is not None
        if self.channel.refused:
            return
        if self.content.tell() + len(data) > self.channel.http.max_body_bytes:
            self.channel.refuse(_too_large(self.channel.http), "body_too_large")
            return
        self.content.write(data)


class GuardedChannel(HTTPChannel):
    """An HTTP/1.1 channel with deadlines per phase and a body limit (see the module's text)."""

    site: Front

    def __init__(self, http: HttpConfig, address: str, clock: IReactorTime) -> None:
        super().__init__()
        self.http = http
        self.address = address  # the key of the per-address connection count
        self._clock = clock
        self.refused = False
        self._deadline: IDelayedCall | None = None
        self._between_requests = True  # no byte of the next request received yet

    def connectionMade(self) -> None:
        super().connectionMade()
        self._arm(self.http.header_timeout, "header_timeout")

    def dataReceived(self, data: bytes) -> None:
        if self.refused:
            return
        self._between_requests = False
        super().dataReceived(data)

    def rawDataReceived(self, data: bytes) -> None:
        if not self.refused:  # the rest of a packet whose first part got the request refused
            super().rawDataReceived(data)

    def allHeadersReceived(self) -> None:
        if self.length is not None and self.length > self.http.max_body_bytes:
            self.refuse(_too_large(self.http), "body_too_large")  # before `100 Continue`, before the body
            return
        super().allHeadersReceived()
        self._arm(self.http.body_timeout, "body_timeout")

    def allContentReceived(self) -> None:
        if self.refused:
            return
        self._disarm()  # the resource's own work has no deadline here
        super().allContentReceived()

    def requestDone(self, request: Any) -> None:
        # Armed before the base class replays pipelined data, which may start the next request at once.
        self._between_requests = True
        self._arm(self.http.header_timeout, "header_timeout")
        super().requestDone(request)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._disarm()
        self.site.connection_closed(self.address)
        super().connectionLost(reason)

    def take_over(self, data: bytes, header_seconds: float) -> None:
        """Read the connection from here on, `data` first (api/fastpath.py hands a connection over with the
        bytes of the request it does not serve), the request line and headers due within `header_seconds`."""
        self._arm(header_seconds, "header_timeout")
        self.dataReceived(data)

    def refuse(self, error: ApiError, reason: str) -> None:
        """Answer `error` and close, reading nothing more."""
        if self.refused:
            return
        REFUSED.labels(reason).inc()
        assert self.transport is not None
        self.transport.write(raw_answer(error))
        self._close()

    def _arm(self, seconds: float, reason: str) -> None:
        self._disarm()
        self._deadline = self._clock.callLater(seconds, self._expired, reason)

    def _disarm(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _expired(self, reason: str) -> None:
        self._deadline = None
        if reason == "header_timeout" and self._between_requests:
            self._close()  # an idle keep-alive connection: nothing to answer
            return
        what = "the request line and headers" if reason == "header_timeout" else "the body"
        seconds = self.http.header_timeout if reason == "header_timeout" else self.http.body_timeout
        self.refuse(ApiError("request_timeout", f"{what} must arrive within {seconds:g} seconds"), reason)

    def _close(self) -> None:
        self.refused = True
        self._disarm()
        self.loseConnection()
        # A peer that does not read keeps the close waiting on its unread answer: cut it after a while,
        # as Twisted's own timeout does.
        self._abortingCall = self._clock.callLater(self.abortTimeout, self.forceAbortClient)


class Front(server.Site):
    """The site of every HTTP listener: guarded channels, no access log of Twisted's own (the resource
    counts requests in metrics, and paths may carry identification numbers that operators do not need in
    every log line), and request bodies never parsed into `request.args` (the API takes JSON only, and
    query strings are still parsed): Twisted would otherwise run each POST's Content-Type through the
    `email` package, about 7 % of the daemon's time on the payment routes."""

    requestFactory = BoundedRequest

    def __init__(self, resource: Any, http: HttpConfig, reactor: Any = None) -> None:
        super().__init__(resource, reactor=reactor, timeout=None, parsePOSTFormSubmission=False)
        self.http = http
        self._open: Tally[str] = Tally()

    def buildProtocol(self, addr: IAddress) -> GuardedChannel | None:  # type: ignore[override]
        address = self.admit(addr)
        return None if address is None else self.guarded(address)

    def admit(self, addr: IAddress) -> str | None:
        """The address's key, counted as one more connection; None when it holds too many already."""
        address = str(getattr(addr, "host", "local"))
        if self._open[address] >= self.http.max_connections_per_address:
            REFUSED.labels("too_many_connections").inc()
            return None  # Twisted closes the socket at once
        self._open[address] += 1
        return address

    def guarded(self, address: str) -> GuardedChannel:
        """A channel for a connection of `address` (already admitted)."""
        channel = GuardedChannel(self.http, address, self.reactor)
        channel.factory = self
        channel.site = self
        channel.requestFactory = self.requestFactory
        channel.timeOut = None  # the deadlines above replace Twisted's idle timeout
        return channel

    def connection_closed(self, address: str) -> None:
        self._open[address] -= 1
        if self._open[address] <= 0:
            del self._open[address]

    def log(self, request: Any) -> None:
        pass


def _too_large(http: HttpConfig) -> ApiError:
    return ApiError("body_too_large", f"bodies are limited to {http.max_body_bytes} bytes")
