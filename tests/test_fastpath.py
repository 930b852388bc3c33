"""The merchant fast path (api/fastpath.py): the same answers as Twisted's channel byte for byte (but the
Date), keep-alive and pipelining, the hand-over of other requests, and the front's limits (deadlines,
body size, connections per address, reading paused while a request is answered) on its own connections."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from apiharness import ApiHarness, api_config, ready
from conftest import test_config
from prometheus_client import REGISTRY
from test_http_hardening import Raw, parse_answer
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from idtronic_tel.api.fastpath import FastChannel, FastFront
from idtronic_tel.api.front import Front, GuardedChannel
from idtronic_tel.api.http11 import HEAD_LIMIT
from idtronic_tel.api.resource import ApiResource
from idtronic_tel.api.routing import Route, Router
from idtronic_tel.config_schema import ApiConfig, HttpConfig


@pytest.fixture
def harness(sqlite_url: str) -> Iterator[ApiHarness]:
    h = ApiHarness(sqlite_url, api_config(test_config()))
    yield h
    pytest_twisted.blockon(Deferred.fromCoroutine(h.stop()))


async def exchange(port: int, data: bytes) -> bytes:
    """Everything the server sends to `data` until it closes."""
    protocol = Raw(data)
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), protocol)
    return await protocol.closed.addTimeout(30, reactor)


def answers(received: bytes, first: str = "GET") -> list[bytes]:
    """The answers in a stream, each its head and body (the first answers a `first` request, the others
    GET: a HEAD's answer has a Content-Length and no body)."""
    out = []
    while received:
        head, _, rest = received.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b": ")
            if name.lower() == b"content-length" and not (first == "HEAD" and not out):
                length = int(value)
        out.append(head + b"\r\n\r\n" + rest[:length])
        received = rest[length:]
    return out


def without_date(answer: bytes) -> bytes:
    return b"\r\n".join(line for line in answer.split(b"\r\n") if not line.startswith(b"Date: "))


def request(method: str, path: str, *headers: str, body: bytes = b"", close: bool = True) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: api", *headers]
    lines += ["Connection: close"] if close else []
    lines += [f"Content-Length: {len(body)}"] if body else []
    return "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + body


@pytest_twisted.ensureDeferred
async def test_the_fast_path_answers_byte_for_byte_as_twisted_does(harness: ApiHarness) -> None:
    h = harness
    key, _, payment = await ready(h)
    twisted_port = reactor.listenTCP(0, Front(h.resource, h.config.http, reactor), interface="127.0.0.1")  # type: ignore[attr-defined]
    bearer = f"Authorization: Bearer {key}"
    json = "Content-Type: application/json"
    cases = [
        request("GET", f"/v1/payments/{payment}", bearer),
        request("HEAD", f"/v1/payments/{payment}", bearer),
        request("GET", "/v1/payments/nope", bearer),
        request("GET", f"/v1/payments/{payment}", "Authorization: Bearer wrong"),
        request("GET", f"/v1/payments/{payment}"),
        request("PUT", f"/v1/payments/{payment}", bearer),
        request("EVIL", "/v1/payments", bearer),
        request("GET", "/v1/payments/a/b/c?x=%ff", bearer),
        request("POST", f"/v1/payments/{payment}/confirm", bearer, json, body=b"{"),
        request("POST", f"/v1/payments/{payment}/confirm", bearer, "Content-Type: text/plain", body=b"{}"),
        request("POST", f"/v1/payments/{payment}/confirm", bearer, json, body=b'{"token": "x"}'),
        request("POST", "/v1/payments", bearer, "Idempotency-Key: \xff", json, body=b"{}"),
        request("POST", "/v1/payments", bearer, json, "Content-Length: 99999999"),
        request("GET", f"/v1/payments/{payment}", bearer, close=False),  # keep-alive: no Connection
    ]
    try:
        for data in cases:
            method = data.split(b" ")[0].decode()
            expected = await exchange(twisted_port.getHost().port, data + request("GET", "/x"))
            got = await exchange(h.port.getHost().port, data + request("GET", "/x"))
            assert got and [without_date(a) for a in answers(got, method)] == [
                without_date(a) for a in answers(expected, method)
            ], data
    finally:
        await twisted_port.stopListening()


@pytest_twisted.ensureDeferred
async def test_keep_alive_pipelining_and_the_hand_over_of_other_requests(harness: ApiHarness) -> None:
    h = harness
    key, _, payment = await ready(h)
    built: list[Any] = []
    build = h.site.buildProtocol
    h.site.buildProtocol = lambda addr: built.append(build(addr)) or built[-1]  # type: ignore[method-assign]
    bearer = f"Authorization: Bearer {key}"
    read = request("GET", f"/v1/payments/{payment}", bearer, close=False)
    # Three merchant requests in one segment, answered in order on the fast path.
    stream = read + request("GET", "/v1/payments/nope", bearer, close=False) + read
    got = answers(
        await exchange(h.port.getHost().port, stream + request("GET", f"/v1/payments/{payment}", bearer))
    )
    assert [parse_answer(a)[0] for a in got] == [200, 404, 200, 200]
    assert isinstance(built[-1], FastChannel) and built[-1]._twisted is None
    # A page request on the same connection: Twisted's channel answers it, and every request after it.
    stream = read + request("GET", "/v1/notice", close=False) + read + request("GET", "/healthz")
    got = answers(await exchange(h.port.getHost().port, stream))
    assert [parse_answer(a)[0] for a in got] == [200, 200, 200, 200]
    assert isinstance(built[-1]._twisted, GuardedChannel)
    assert h.site._open == {}  # both connections uncounted once closed


class Clocked:
    """The API listener's front on a task.Clock, its connections driven by hand over StringTransports."""

    def __init__(self, h: ApiHarness, **http: Any) -> None:
        self.clock = Clock()
        self.site = FastFront(h.resource, HttpConfig(**http), self.clock)

    def connect(self, port: int = 40000) -> tuple[Any, StringTransport]:
        channel = self.site.buildProtocol(IPv4Address("TCP", "192.0.2.1", port))
        assert channel is not None
        transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.1", port))
        channel.makeConnection(transport)
        return channel, transport


def refused(reason: str) -> float:
    return REGISTRY.get_sample_value("idtronic_http_refused_total", {"reason": reason}) or 0.0


def test_the_header_and_body_deadlines_and_the_idle_close(harness: ApiHarness) -> None:
    front = Clocked(harness, header_timeout=10.0, body_timeout=30.0)
    channel, transport = front.connect()
    before = refused("header_timeout")
    channel.dataReceived(b"GET /v1/payments HTTP/1.1\r\nHo")
    front.clock.advance(9.9)
    assert not transport.disconnecting
    front.clock.advance(0.2)
    status, headers, body = parse_answer(transport.value())
    assert (status, body["error"], headers["connection"]) == (408, "request_timeout", "close")
    assert body["message"] == "the request line and headers must arrive within 10 seconds"
    assert transport.disconnecting and refused("header_timeout") == before + 1
    channel.dataReceived(b"st: a\r\n\r\n")  # too late: ignored
    front.clock.advance(GuardedChannel.abortTimeout)  # the abort of a peer that never reads its answer
    assert front.clock.getDelayedCalls() == []

    channel, transport = front.connect()
    channel.dataReceived(b"POST /v1/payments HTTP/1.1\r\nContent-Length: 10\r\n\r\n12345")
    front.clock.advance(29.9)
    assert not transport.disconnecting
    front.clock.advance(0.2)
    status, _, body = parse_answer(transport.value())
    assert (status, body["message"]) == (408, "the body must arrive within 30 seconds")

    channel, transport = front.connect()
    front.clock.advance(10.1)
    assert transport.disconnecting and transport.value() == b""  # idle: closed without an answer


def test_a_handed_over_connection_keeps_what_was_left_of_the_header_deadline(harness: ApiHarness) -> None:
    front = Clocked(harness, header_timeout=10.0)
    channel, transport = front.connect()
    front.clock.advance(6)
    channel.dataReceived(b"GET /healthz HTTP/1.1\r\nHost: a\r\n")
    assert isinstance(channel._twisted, GuardedChannel)
    front.clock.advance(3.9)
    assert not transport.disconnecting
    front.clock.advance(0.2)
    status, _, body = parse_answer(transport.value())
    assert (status, body["error"]) == (408, "request_timeout")


def test_a_declared_body_over_the_limit_and_a_malformed_request_are_refused(harness: ApiHarness) -> None:
    front = Clocked(harness, max_body_bytes=100)
    channel, transport = front.connect()
    before = refused("body_too_large")
    channel.dataReceived(b"POST /v1/payments HTTP/1.1\r\nContent-Length: 101\r\n\r\n{")
    status, headers, body = parse_answer(transport.value())
    assert (status, body["error"], headers["connection"]) == (413, "body_too_large", "close")
    assert transport.disconnecting and refused("body_too_large") == before + 1

    channel, transport = front.connect()
    channel.dataReceived(b"GET /v1/payments/\xff HTTP/1.1\r\nHost: a\r\n\r\n")
    status, headers, body = parse_answer(transport.value())
    assert (status, body["error"], headers["connection"]) == (400, "invalid_request", "close")
    assert "printable ASCII" in body["message"] and transport.disconnecting


def test_connections_per_address_are_counted_on_both_paths(harness: ApiHarness) -> None:
    front = Clocked(harness, max_connections_per_address=2)
    (fast, _), (handed, _) = front.connect(40001), front.connect(40002)
    assert front.site.buildProtocol(IPv4Address("TCP", "192.0.2.1", 40003)) is None
    handed.dataReceived(b"GET /healthz HTTP/1.1\r\nHost: a\r\n")
    assert isinstance(handed._twisted, GuardedChannel)
    fast.connectionLost()
    handed.connectionLost()
    assert front.site._open == {}


class Waiting:
    """A core whose key check never answers: the request stays in the resource's hands."""

    def authenticate_merchant(self, key: str) -> Deferred[None]:
        return Deferred()


def test_bytes_beyond_one_request_while_one_is_answered_pause_reading() -> None:
    async def never(call: Any) -> Any:
        raise AssertionError("not reached")

    http = HttpConfig(max_body_bytes=1024)
    router = Router([Route("GET", "/v1/payments/{id}", never, "merchant", "", {})])
    resource = ApiResource(Waiting(), router, http, ApiConfig())  # type: ignore[arg-type]
    site = FastFront(resource, http, Clock())
    channel = site.buildProtocol(IPv4Address("TCP", "192.0.2.1", 40000))
    assert channel is not None
    transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.1", 40000))
    channel.makeConnection(transport)
    channel.dataReceived(request("GET", "/v1/payments/p", "Authorization: Bearer k", close=False))
    assert transport.producerState == "producing"
    channel.dataReceived(b"GET /v1/payments/p HTTP/1.1\r\nX: " + b"y" * (HEAD_LIMIT + 1024))
    assert transport.producerState == "paused" and transport.value() == b""
