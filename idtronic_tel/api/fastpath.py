"""The merchant fast path: the API listener's connections start on a small HTTP/1.1 protocol that serves
the merchant routes (`/v1/payments...`) itself and hands every other request to Twisted's web channel.

Merchants keep their connections alive and call the payment routes only, so their requests skip
Twisted's HTTPChannel and Request (line parsing, header objects, the transport paused and resumed per
request, the resource traversal): about half of the HTTP layer's CPU per request (bench/RESULTS.md). The
bytes go through the sans-I/O parser of api/http11.py; the answer is the same ApiResource's, written as
Twisted writes it (status line, `Server`, `Date`, the same headers, `Content-Length`).

On the first request that is not a plain HTTP/1.1 request for those routes (a page, /admin, /metrics,
a chunked body, `Expect: 100-continue`, HTTP/1.0, ...), the connection is handed over for good: a
GuardedChannel (api/front.py) is made on the same transport and fed every byte from that request on,
its header deadline what was left of ours. The limits are the front's: the same header, body and idle
deadlines (one timer per connection, moved rather than re-armed on each request), a declared body over
the limit refused 413 before it is read, the connections per address counted by the Front, pipelined
requests answered in order. Operators see no difference but the CPU."""

from __future__ import annotations

import time
from collections.abc import Coroutine
from io import BytesIO
from typing import Any, BinaryIO, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IDelayedCall, IPushProducer, ITCPTransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server

from ..config_schema import HttpConfig
from .errors import REASONS, ApiError
from .front import REFUSED, Front, GuardedChannel, raw_answer
from .http11 import HEAD_LIMIT, NEED_DATA, HandOver, Refusal, Request, RequestParser
from .resource import ApiResource
from .routing import Reply

log = Logger()

PREFIX = b"/v1/payments"  # the merchant routes
Answer = Coroutine[Any, Any, tuple[str, Reply]]  # ApiResource.answer's
_NO_BODY = (204, 304)  # statuses answered without a body (Twisted's NO_BODY_CODES)
_SERVER = b"Server: " + server.version + b"\r\n"


class FastRequest:
    """The request as ApiResource reads it (routing.Incoming), without Twisted's Request."""

    __slots__ = ("_headers", "_peer", "args", "content", "method", "path")

    def __init__(self, request: Request, peer: IAddress) -> None:
        self.method = request.method
        path, query, arguments = request.target.partition(b"?")
        self.path = path
        self.args: Any = http.parse_qs(arguments, 1) if query else {}  # as Twisted's Request does
        self.content: BinaryIO | None = BytesIO(request.body)
        self._headers = request.headers
        self._peer = peer

    def getHeader(self, key: bytes) -> bytes | None:
        return self._headers.get(key.lower())

    def getClientAddress(self) -> IAddress:
        return self._peer


class FastChannel(Protocol):
    """One connection of the API listener (see the module's text)."""

    def __init__(self, front: FastFront, address: str) -> None:
        self._front = front
        self._http: HttpConfig = front.http
        self._address = address
        self._clock = front.reactor
        self._parser = RequestParser(PREFIX, front.http.max_body_bytes)
        self._twisted: GuardedChannel | None = None  # the channel the connection was handed over to
        self._busy = False  # a request is being answered: later bytes wait in the parser
        self._serving = False  # inside _serve (an answer ready at once must not recurse into it)
        self._closed = False
        self._expires: float | None = None  # the deadline of the current phase, None while answering
        self._reason = "header_timeout"
        self._timer: IDelayedCall | None = None
        self._abort: IDelayedCall | None = None
        self._peer: IAddress | None = None
        self._paused = False  # reading stopped: too many bytes arrived while a request is answered
        self._most = HEAD_LIMIT + front.http.max_body_bytes  # what one request may hold

    def connectionMade(self) -> None:
        assert self.transport is not None
        self._peer = self.transport.getPeer()
        self._until(self._http.header_timeout, "header_timeout")

    def dataReceived(self, data: bytes) -> None:
        if self._twisted is not None:
            self._twisted.dataReceived(data)
        elif not self._closed:
            self._parser.feed(data)
            if self._busy and not self._paused and self._parser.buffered > self._most:
                # Pipelined bytes beyond a whole request wait in the socket, not in memory.
                assert self.transport is not None
                self._paused = True
                cast(IPushProducer, self.transport).pauseProducing()
            self._serve()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._twisted is not None:
            self._twisted.connectionLost(reason)
            return
        self._closed = True
        self._expires = None
        for call in (self._timer, self._abort):
            if call is not None and call.active():
                call.cancel()
        self._timer = None
        self._front.connection_closed(self._address)

    # -- requests ------------------------------------------------------------------------------------
    def _serve(self) -> None:
        """Answer what the parser holds, one request at a time, until it needs more bytes."""
        if self._serving:
            return
        self._serving = True
        try:
            while not self._busy and not self._closed and self._twisted is None:
                event = self._parser.next_event()
                if event is NEED_DATA:
                    if self._parser.in_body and self._reason != "body_timeout":
                        self._until(self._http.body_timeout, "body_timeout")
                    return
                if isinstance(event, HandOver):
                    self._hand_over(event.data)
                elif isinstance(event, Refusal):
                    self._refuse(raw_answer(event.error), event.reason)
                else:
                    assert isinstance(event, Request)
                    self._busy = True
                    self._expires = None  # the resource's own work has no deadline here
                    self._answer(event)
        finally:
            self._serving = False

    def _answer(self, request: Request) -> None:
        assert self._peer is not None
        started = time.perf_counter()
        self._step(self._front.api.answer(FastRequest(request, self._peer)), request, started, None)

    def _step(self, answer: Answer, request: Request, started: float, result: Any) -> None:
        """Run the resource's coroutine to its next wait (a Deferred of the core), or to its reply. Not
        Deferred.fromCoroutine: most of what a merchant request awaits has fired already (the key and
        the suspension state come from caches), and Twisted's driver cost more than all our parsing."""
        try:
            if isinstance(result, Failure):
                awaited = result.throwExceptionIntoGenerator(answer)
            else:
                awaited = answer.send(result)
        except StopIteration as done:
            self._respond(done.value, request, started)
            return
        except Exception:
            self._failed(Failure())  # answer() answers every error itself: a bug
            return
        if not isinstance(awaited, Deferred):
            answer.close()
            self._failed(Failure(TypeError(f"the API awaited {awaited!r}, not a Deferred")))
            return
        awaited.addBoth(self._resumed, answer, request, started)

    def _resumed(self, result: Any, answer: Answer, request: Request, started: float) -> None:
        self._step(answer, request, started, result)

    def _respond(self, result: tuple[str, Reply], request: Request, started: float) -> None:
        template, reply = result
        payload = self._front.api.finish(template, reply, request.method, started)
        if self._closed:
            return  # the client left: nothing to write (counted all the same, as Twisted's path does)
        assert self.transport is not None
        head = _head(reply, len(payload), request.close)
        no_body = request.method == b"HEAD" or reply.status in _NO_BODY
        self.transport.write(head if no_body else head + payload)
        if request.close:
            self._closed = True
            self.transport.loseConnection()
            return
        self._busy = False
        if self._paused:
            self._paused = False
            cast(IPushProducer, self.transport).resumeProducing()
        self._until(self._http.header_timeout, "header_timeout")
        self._serve()

    def _failed(self, failure: Failure) -> None:
        log.failure("writing a response failed", failure)
        if not self._closed and self.transport is not None:
            self._closed = True
            self.transport.loseConnection()

    def _hand_over(self, data: bytes) -> None:
        assert self.transport is not None
        left = self._http.header_timeout
        if self._expires is not None:
            left = max(self._expires - self._clock.seconds(), 0.0)
        self._expires = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        channel = self._front.guarded(self._address)
        self._twisted = channel
        channel.makeConnection(self.transport)
        channel.take_over(data, left)

    def _refuse(self, answer: bytes, reason: str | None) -> None:
        """Answer and close, reading nothing more."""
        if reason is not None:
            REFUSED.labels(reason).inc()
        assert self.transport is not None
        self._closed = True
        self._expires = None
        self.transport.write(answer)
        self.transport.loseConnection()
        # A peer that does not read keeps the close waiting on its unread answer: cut it after a while.
        transport = cast(ITCPTransport, self.transport)
        self._abort = self._clock.callLater(GuardedChannel.abortTimeout, transport.abortConnection)

    # -- deadlines: one timer, moved lazily ----------------------------------------------------------
    def _until(self, seconds: float, reason: str) -> None:
        self._reason = reason
        self._expires = self._clock.seconds() + seconds
        if self._timer is None:
            self._timer = self._clock.callLater(seconds, self._check)
        elif self._timer.getTime() > self._expires:
            self._timer.reset(seconds)

    def _check(self) -> None:
        self._timer = None  # fired
        if self._expires is None:
            return  # answering: the next phase arms the timer again
        left = self._expires - self._clock.seconds()
        if left > 0:
            self._timer = self._clock.callLater(left, self._check)
            return
        self._expires = None
        if self._reason == "header_timeout" and not self._parser.started:
            self._closed = True  # an idle keep-alive connection: nothing to answer
            assert self.transport is not None
            self.transport.loseConnection()
            return
        header = self._reason == "header_timeout"
        what = "the request line and headers" if header else "the body"
        seconds = self._http.header_timeout if header else self._http.body_timeout
        error = ApiError("request_timeout", f"{what} must arrive within {seconds:g} seconds")
        self._refuse(raw_answer(error), self._reason)


class FastFront(Front):
    """The API listener's site: connections start on the fast path (FastChannel)."""

    def __init__(self, api: ApiResource, http_config: HttpConfig, reactor: Any = None) -> None:
        super().__init__(api, http_config, reactor)
        self.api = api

    def buildProtocol(self, addr: IAddress) -> FastChannel | None:  # type: ignore[override]
        address = self.admit(addr)
        if address is None:
            return None
        channel = FastChannel(self, address)
        channel.factory = self
        return channel


def _head(reply: Reply, length: int, close: bool) -> bytes:
    """The status line and headers, as Twisted's Request writes them for ApiResource's answer."""
    reason = REASONS.get(reply.status) or http.RESPONSES.get(reply.status, b"Unknown Status")
    lines = [b"HTTP/1.1 %d %s\r\n" % (reply.status, reason)]
    if close:
        lines.append(b"Connection: close\r\n")
    lines.append(_SERVER)
    lines.append(_date())
    lines.append(b"Content-Type: %s\r\n" % reply.content_type.encode())
    lines.append(b"Cache-Control: no-store\r\n")
    for name, value in reply.headers.items():
        lines.append(b"%s: %s\r\n" % (_canonical(name), value.encode()))
    for cookie in reply.cookies:
        lines.append(b"Set-Cookie: %s\r\n" % cookie.encode())
    lines.append(b"Content-Length: %d\r\n\r\n" % length)
    return b"".join(lines)


_names: dict[str, bytes] = {}


def _canonical(name: str) -> bytes:
    """`retry-after` -> `Retry-After`, as Twisted's Headers capitalise them."""
    known = _names.get(name)
    if known is None:
        known = _names[name] = "-".join(part.capitalize() for part in name.split("-")).encode()
    return known


class _Date:
    """The Date line of the current second."""

    second = -1
    line = b""


def _date() -> bytes:
    now = int(time.time())
    if _Date.second != now:
        _Date.second, _Date.line = now, b"Date: " + http.datetimeToString(now) + b"\r\n"
    return _Date.line
