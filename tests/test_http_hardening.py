"""Issue 9's reproductions against the HTTP API, each a regression test: bad input that got a 500, the
resources a stranger could burn (bodies spooled to disk, /metrics inflated, connections held by a slow
client), status polling charged to the callback budget, and the smaller points (HEAD, ASCII digits only,
the 4th resend, data files 0600).

Real loopback sockets where the bytes matter (headers that are not UTF-8, bodies over the limit, chunked
bodies); `task.Clock` and `StringTransport` for the deadlines."""

from __future__ import annotations

import json
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from apiharness import OPERATOR_KEY, PAYMENT, ApiHarness, api_config, ready
from conftest import FakeClock, test_config
from domain_helpers import FIRST8, LAST8
from prometheus_client import REGISTRY
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.web import http as twisted_http
from twisted.web.resource import Resource

from idtronic_tel.api.front import Front
from idtronic_tel.api.metrics import MetricsResource
from idtronic_tel.config import prepare_data_dir
from idtronic_tel.config_schema import HttpConfig
from idtronic_tel.core.cards import luhn_valid
from idtronic_tel.core.db import make_engine, migrate

ENROLLMENT = {
    "last_name": "Martin",
    "first_name": "Claire",
    "birth_date": "1985-04-12",
    "mobile": "06 11 22 33 44",
    "card_first8": FIRST8,
}


@pytest.fixture
def harness(sqlite_url: str) -> Iterator[ApiHarness]:
    h = ApiHarness(sqlite_url, api_config(test_config()))
    yield h
    pytest_twisted.blockon(Deferred.fromCoroutine(h.stop()))


@pytest.fixture
def failures() -> Iterator[list[dict[str, Any]]]:
    """Every event logged with a traceback while the test runs: bad input must log none."""
    seen: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if "log_failure" in event:
            seen.append(event)

    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


class Raw(Protocol):
    """Sends bytes as they are and keeps everything the server sends until it closes."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.received = b""
        self.closed: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.data)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self.closed.callback(self.received)


async def raw_exchange(port: int, data: bytes) -> tuple[int, dict[str, str], Any]:
    """(status, headers, JSON body or bytes) of the one answer to `data`, read until the server closes."""
    protocol = Raw(data)
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), protocol)
    received = await protocol.closed.addTimeout(30, reactor)
    return parse_answer(received)


def parse_answer(received: bytes) -> tuple[int, dict[str, str], Any]:
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    is_json = body and headers.get("content-type", "").startswith("application/json")
    parsed = json.loads(body) if is_json else body
    return int(lines[0].split()[1]), headers, parsed


def request_bytes(method: str, path: str, *headers: bytes, body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: 127.0.0.1", b"Connection: close", *headers]
    if body:
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


# ---- bad input that got a 500 --------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_header_bytes_that_are_not_utf8_get_a_400(
    harness: ApiHarness, failures: list[dict[str, Any]]
) -> None:
    h = harness
    port = h.port.getHost().port
    key, _, payment = await ready(h)
    bearer = f"Authorization: Bearer {key}".encode()
    cases = [
        request_bytes("GET", "/healthz", b"Authorization: \xff"),
        request_bytes("GET", "/v1/notice", b"Authorization: Bearer \xc3\x28"),
        request_bytes("GET", f"/v1/payments/{payment}", b"Authorization: Bearer \x01"),
        request_bytes("POST", "/v1/payments", bearer, b"Idempotency-Key: \xff\xfe", body=b"{}"),
        request_bytes("POST", "/v1/enrollments", b"Content-Type: application/\xff", body=b"{}"),
        request_bytes("GET", "/v1/notice?x=%ff"),
        request_bytes("GET", "/v1/notice?x=%7f"),
    ]
    for data in cases:
        status, _, body = await raw_exchange(port, data)
        assert (status, body["error"]) == (400, "invalid_request"), (data, body)
    # Not even a request line: Twisted's own bare 400.
    for target in (b"/v1/payments/\xff", b"/v1/notice?x=\xff", b"/v1/\x01"):
        status, _, _ = await raw_exchange(port, b"GET " + target + b" HTTP/1.1\r\nHost: a\r\n\r\n")
        assert status == 400, target
    assert failures == []


@pytest_twisted.ensureDeferred
async def test_deep_nesting_and_long_integers_get_a_400(
    harness: ApiHarness, failures: list[dict[str, Any]]
) -> None:
    h = harness
    _, key = await h.merchant()
    deep = b"[" * 30_000 + b"]" * 30_000
    assert len(deep) < h.config.http.max_body_bytes  # it fits: the limit alone does not stop it
    long_integer = b"1" * 4_301
    cases = [
        ("/v1/payments", key, deep),
        ("/v1/payments", key, b'{"amount": ' + deep + b"}"),
        ("/v1/enrollments", None, b'{"last_name": ' + b"{" * 30_000 + b"}" * 30_000 + b"}"),
        ("/v1/payments", key, b'{"amount": ' + long_integer + b"}"),
        ("/v1/enrollments", None, b'{"last_name": ' + long_integer + b"}"),
        ("/v1/enrollments", None, b'{"last_name": -' + long_integer + b".5e3}"),
        ("/v1/enrollments", None, b'{"last_name": NaN}'),
        ("/v1/enrollments", None, b'{"last_name": 1e999}'),
        ("/v1/payments", key, b'"' + b"[" * 40 + b'"'),  # brackets in a string (found by bench/fuzz.py)
    ]
    for path, credential, raw in cases:
        answer = await h.call("POST", path, raw=raw, key=credential)
        assert (answer.status, answer.body["error"]) == (400, "invalid_json"), (raw[:40], answer.body)
    identifier = await h.active_cardholder(FIRST8, LAST8)
    brackets = {**PAYMENT, "identifier": identifier, "reference": "[" * 40, "description": "{" * 100}
    created = await h.call("POST", "/v1/payments", brackets, key)
    assert created.status == 201 and created.body["reference"] == "[" * 40
    assert failures == []


@pytest_twisted.ensureDeferred
async def test_lone_surrogates_and_control_characters_are_refused_per_field_or_escaped(
    harness: ApiHarness, failures: list[dict[str, Any]]
) -> None:
    h = harness
    key, identifier, _ = await ready(h)
    refused = [
        ("/v1/payments", key, {**PAYMENT, "identifier": "\ud800"}, "identifier"),
        ("/v1/payments", key, {**PAYMENT, "identifier": identifier, "reference": "r\ud800"}, "reference"),
        ("/v1/payments", key, {**PAYMENT, "identifier": identifier, "reference": "a\x00b"}, "reference"),
        ("/v1/payments", key, {**PAYMENT, "identifier": identifier, "reference": "a\x1b[2J"}, "reference"),
        ("/v1/enrollments", None, {**ENROLLMENT, "last_name": "\ud800"}, "last_name"),
        ("/v1/enrollments", None, {**ENROLLMENT, "first_name": "Claire\r\n"}, "first_name"),
        ("/v1/admin/merchants", OPERATOR_KEY, {"name": "Shop \udfff"}, "name"),
    ]
    for path, credential, body, field in refused:
        # json.dumps escapes the surrogate as \ud800, exactly what an attacker sends
        answer = await h.call("POST", path, raw=json.dumps(body).encode(), key=credential)
        assert (answer.status, answer.body["error"]) == (422, "invalid_fields"), (body, answer.body)
        assert field in answer.body["fields"], answer.body
    unknown = await h.call("POST", "/v1/enrollments", raw=b'{"\\ud800\\u0000": 1}')
    assert (unknown.status, unknown.body["fields"]) == (400, ["\\ud800\\u0000"])

    # free text keeps what was written, with the unsafe characters as visible escapes
    body = {**PAYMENT, "identifier": identifier, "reference": "r2", "description": "a\ud800b\x07c\nd"}
    created = await h.call("POST", "/v1/payments", raw=json.dumps(body).encode(), key=key)
    assert created.status == 201, created.body
    assert created.body["description"] == "a\\ud800b\\u0007c\nd"
    got = await h.call("GET", f"/v1/payments/{created.body['id']}", key=key)
    assert got.body["description"] == "a\\ud800b\\u0007c\nd"
    notice = json.dumps({"notice": "Maintenance\ud800 \x00"}).encode()
    suspended = await h.call("POST", "/v1/admin/suspension", raw=notice, key=OPERATOR_KEY)
    assert suspended.status == 200 and suspended.body["notice"] == "Maintenance\\ud800 \\u0000"
    public = await h.call("GET", "/v1/notice")
    assert public.body == {"suspended": True, "notice": "Maintenance\\ud800 \\u0000"}
    assert failures == []


@pytest_twisted.ensureDeferred
async def test_query_strings_are_decoded_strictly(
    harness: ApiHarness, failures: list[dict[str, Any]]
) -> None:
    h = harness
    for query in ("cardholder=%ff", "cardholder=%00", "%ff=1", "merchant=%c3%28"):
        answer = await h.call("DELETE", f"/v1/admin/suspension?{query}", key=OPERATOR_KEY)
        assert (answer.status, answer.body["error"]) == (400, "invalid_request"), (query, answer.body)
    assert (await h.call("DELETE", "/v1/admin/suspension", key=OPERATOR_KEY)).status == 200
    assert failures == []


FULLWIDTH, ARABIC_INDIC = 0xFF10, 0x0660  # the code points of their digit zero


def lookalike(digits: str, zero: int) -> str:
    return "".join(chr(zero + int(d)) for d in digits)


@pytest_twisted.ensureDeferred
async def test_only_ascii_digits_pass_where_digits_are_expected(harness: ApiHarness) -> None:
    h = harness
    key, identifier, payment = await ready(h)
    fullwidth, arabic = lookalike(identifier, FULLWIDTH), lookalike(identifier, ARABIC_INDIC)
    assert fullwidth.isdigit() and arabic.isdigit()  # what str.isdigit() and \d let through
    for other in (fullwidth, arabic):
        answer = await h.call("POST", "/v1/payments", {**PAYMENT, "identifier": other}, key)
        assert (answer.status, answer.body["error"]) == (422, "invalid_fields"), answer.body
        status = await h.call("GET", "/v1/enrollments/" + other)  # percent-encoded by the client
        assert status.status in (400, 404), status.body
        assert not luhn_valid(other)
    token = await h.call(
        "POST", f"/v1/payments/{payment}/confirm", {"token": lookalike("123456", FULLWIDTH)}, key
    )
    assert (token.status, token.body["error"]) == (422, "invalid_fields")
    card = await h.call(
        "POST", "/v1/enrollments", {**ENROLLMENT, "card_first8": lookalike(FIRST8, FULLWIDTH)}
    )
    assert (card.status, card.body["error"]) == (422, "invalid_fields")
    amount = await h.call(
        "POST", "/v1/payments", raw=f'{{"amount": {lookalike("12", ARABIC_INDIC)}}}'.encode(), key=key
    )
    assert (amount.status, amount.body["error"]) == (400, "invalid_json")


# ---- HEAD ----------------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_head_answers_like_get_without_the_body(harness: ApiHarness) -> None:
    h = harness
    key, _, payment = await ready(h)
    port = h.port.getHost().port
    bearer = f"Authorization: Bearer {key}".encode()
    for path, headers in (
        ("/healthz", ()),
        ("/v1/notice", ()),
        ("/v1/openapi.json", ()),
        ("/", ()),
        ("/static/site.js", ()),
        (f"/v1/payments/{payment}", (bearer,)),
    ):
        get = await raw_exchange(port, request_bytes("GET", path, *headers))
        head = await raw_exchange(port, request_bytes("HEAD", path, *headers))
        assert (head[0], head[2]) == (get[0], b""), path
        assert get[0] == 200 and get[2], path
        for name in ("content-type", "content-length", "cache-control"):
            assert head[1].get(name) == get[1].get(name), (path, name)
    wrong = await h.call("PUT", "/healthz")
    assert wrong.status == 405 and wrong.header("allow") == "GET, HEAD"


# ---- metrics -------------------------------------------------------------------------------------------


def request_series() -> set[tuple[str, ...]]:
    """The label sets of idtronic_http_requests_total."""
    return {
        tuple(sorted(sample.labels.items()))  # type: ignore[misc]
        for metric in REGISTRY.collect()
        if metric.name == "idtronic_http_requests"
        for sample in metric.samples
    }


@pytest_twisted.ensureDeferred
async def test_metrics_labels_cannot_be_inflated(harness: ApiHarness) -> None:
    h = harness
    port = h.port.getHost().port
    key, identifier, _ = await ready(h)

    async def strangers(n: int) -> None:
        for i in range(n):
            assert (await h.call("PUT", f"/v1/payments/evil{i}", key=key)).status == 405
            assert (await h.call("PUT", f"/v1/enrollments/{identifier}")).status == 405
            assert (await h.call("GET", f"/nothing/evil{i}")).status == 404
            status, _, _ = await raw_exchange(port, request_bytes(f"EVIL{i}", f"/v1/payments/evil{i}"))
            assert status == 405

    other = {"route": "unmatched", "method": "other", "status": "405"}
    await strangers(2)
    before = request_series(), REGISTRY.get_sample_value("idtronic_http_requests_total", other)
    await strangers(100)
    assert request_series() == before[0]  # 400 more requests, not one more series
    assert REGISTRY.get_sample_value("idtronic_http_requests_total", other) == (before[1] or 0) + 100
    text = (await h.call("GET", "/metrics", key=OPERATOR_KEY)).body.decode()
    assert "evil" not in text.lower() and identifier not in text


@pytest_twisted.ensureDeferred
async def test_metrics_listener_serves_metrics_only_and_off_the_reactor_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import idtronic_tel.api.metrics as metrics

    threads_used: list[bool] = []
    real = metrics.generate_latest

    def generate() -> bytes:
        threads_used.append(threading.current_thread() is threading.main_thread())
        return bytes(real())

    monkeypatch.setattr(metrics, "generate_latest", generate)
    port = reactor.listenTCP(0, Front(MetricsResource(), HttpConfig(), reactor), interface="127.0.0.1")  # type: ignore[attr-defined]
    try:
        number = port.getHost().port
        status, headers, body = await raw_exchange(number, request_bytes("GET", "/metrics"))
        assert status == 200 and headers["content-type"].startswith("text/plain")
        assert b"idtronic_http_requests_total" in body and int(headers["content-length"]) == len(body)
        status, headers, body = await raw_exchange(number, request_bytes("HEAD", "/metrics"))
        assert status == 200 and body == b"" and int(headers["content-length"]) > 0
        status, _, _ = await raw_exchange(number, request_bytes("GET", "/v1/admin/status"))
        assert status == 404
        assert threads_used == [False, False]  # generated on the thread pool, never on the reactor
    finally:
        await port.stopListening()


# ---- limits enforced while reading ---------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_declared_length_over_the_limit_is_refused_before_the_body(harness: ApiHarness) -> None:
    h = harness
    port = h.port.getHost().port
    _, key = await h.merchant()
    # Only the headers are sent: the answer comes without waiting for any of the 300 MB.
    for extra in ((), (b"Expect: 100-continue",)):
        data = request_bytes(
            "POST",
            "/v1/payments",
            f"Authorization: Bearer {key}".encode(),
            b"Content-Length: 300000000",
            *extra,
        )
        protocol = Raw(data)
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), protocol)
        received = await protocol.closed.addTimeout(30, reactor)
        assert b"100 Continue" not in received
        status, headers, body = parse_answer(received)
        assert (status, body["error"], headers["connection"]) == (413, "body_too_large", "close")


@pytest_twisted.ensureDeferred
async def test_a_chunked_body_is_cut_at_the_limit_and_nothing_goes_to_disk(
    harness: ApiHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = harness
    port = h.port.getHost().port

    def no_spooling() -> None:
        raise AssertionError("a request body was spooled to a temporary file")

    monkeypatch.setattr(twisted_http.tempfile, "TemporaryFile", no_spooling)

    def chunked(body: bytes, size: int = 8192) -> bytes:
        chunks = [body[i : i + size] for i in range(0, len(body), size)]
        encoded = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
        head = request_bytes("POST", "/v1/enrollments", b"Transfer-Encoding: chunked")
        return head + encoded

    small = json.dumps(ENROLLMENT).encode()
    status, _, body = await raw_exchange(port, chunked(small, 16))
    assert status == 201, body
    big = b'{"last_name": "' + b"x" * 200_000 + b'"}'
    status, headers, body = await raw_exchange(port, chunked(big))
    assert (status, body["error"], headers["connection"]) == (413, "body_too_large", "close")
    exactly = b'{"last_name": "' + b"x" * (h.config.http.max_body_bytes - 17) + b'"}'
    assert len(exactly) == h.config.http.max_body_bytes
    status, _, body = await raw_exchange(port, chunked(exactly))
    assert (status, body["error"]) == (422, "invalid_fields")  # read whole: at the limit is allowed


class Ok(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        return b"ok"


class Clocked:
    """A Front on a task.Clock, its connections driven by hand over StringTransports."""

    def __init__(self, **http: Any) -> None:
        self.clock = Clock()
        self.http = HttpConfig(**http)
        self.site = Front(Ok(), self.http, self.clock)

    def connect(self, host: str = "192.0.2.1", port: int = 40000) -> tuple[Any, StringTransport] | None:
        channel = self.site.buildProtocol(IPv4Address("TCP", host, port))
        if channel is None:
            return None
        transport = StringTransport(peerAddress=IPv4Address("TCP", host, port))
        channel.makeConnection(transport)
        return channel, transport


def test_a_client_sending_one_header_byte_every_five_seconds_is_cut_at_the_deadline() -> None:
    front = Clocked()
    connected = front.connect()
    assert connected is not None
    channel, transport = connected
    request = b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: " + b"y" * 100
    for byte in request[:2]:
        channel.dataReceived(bytes([byte]))
        front.clock.advance(4.9)
    assert not transport.disconnecting and transport.value() == b""
    channel.dataReceived(request[2:3])
    front.clock.advance(0.3)  # 10.1 s after the connection opened
    assert transport.disconnecting
    status, _, body = parse_answer(transport.value())
    assert (status, body["error"]) == (408, "request_timeout")
    channel.dataReceived(request[3:])  # too late: ignored
    assert front.clock.getDelayedCalls()  # the abort of a peer that never reads its answer
    channel.connectionLost(Failure(ConnectionError()))
    assert front.clock.getDelayedCalls() == []


def test_the_body_has_its_own_deadline_and_an_idle_connection_is_closed_quietly() -> None:
    front = Clocked(header_timeout=10.0, body_timeout=30.0)
    connected = front.connect()
    assert connected is not None
    channel, transport = connected
    channel.dataReceived(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n12345")
    front.clock.advance(29)
    assert not transport.disconnecting
    front.clock.advance(1)
    status, _, body = parse_answer(transport.value())
    assert (status, body["error"], transport.disconnecting) == (408, "request_timeout", True)

    connected = front.connect()
    assert connected is not None
    channel, transport = connected
    for _ in range(3):  # requests in time keep the connection, each one restarting the deadline
        front.clock.advance(9)
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert transport.value().startswith(b"HTTP/1.1 200 OK") and transport.value().endswith(b"ok")
        transport.clear()
    front.clock.advance(10)
    assert transport.disconnecting and transport.value() == b""  # idle: closed without an answer


def test_open_connections_per_address_are_capped() -> None:
    front = Clocked(max_connections_per_address=3)
    held = [front.connect(port=40000 + i) for i in range(3)]
    assert all(held) and front.connect(port=40100) is None  # a fourth from the same address
    assert front.connect(host="192.0.2.2") is not None  # another address
    first = held[0]
    assert first is not None
    first[0].connectionLost(Failure(ConnectionError()))
    assert front.connect(port=40101) is not None  # room again once one closed


@pytest_twisted.ensureDeferred
async def test_the_connection_cap_holds_on_real_sockets(sqlite_url: str) -> None:
    config = api_config(test_config())
    h = ApiHarness(sqlite_url, config)
    h.site.http = HttpConfig(max_connections_per_address=2)
    try:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", h.port.getHost().port)
        idle = [Raw(b""), Raw(b"")]
        for protocol in idle:
            await connectProtocol(endpoint, protocol)
        refused = Raw(b"")
        await connectProtocol(endpoint, refused)
        assert await refused.closed.addTimeout(30, reactor) == b""  # closed at once, nothing said
        for protocol in idle:
            assert not protocol.closed.called
            assert protocol.transport is not None
            protocol.transport.loseConnection()
            await protocol.closed
        assert (await h.call("GET", "/v1/notice")).status == 200  # room again
    finally:
        await h.stop()


# ---- status polling ------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_status_polling_does_not_use_the_callback_budget(sqlite_url: str) -> None:
    """The page polls every 3 s: 40 polls (2 minutes) stay within the address's 30 a minute only with
    the clock moving, so the limiters run on a clock the test moves."""
    now = [0.0]
    h = ApiHarness(sqlite_url, api_config(test_config()), limiter_clock=lambda: now[0])
    try:
        enrolled = await h.call("POST", "/v1/enrollments", ENROLLMENT)
        identifier = enrolled.body["identifier"]
        for _ in range(40):
            now[0] += 3
            polled = await h.call("GET", f"/v1/enrollments/{identifier}")
            assert (polled.status, polled.body["status"]) == (200, "awaiting_callback"), polled.body
        jobs = await h.calls.claim_due("t", 10)
        await h.ivr.start_call(jobs[0].attempt_id)
        for _ in range(3):  # three wrong entries: the enrollment fails
            await h.ivr.check_card_digits(jobs[0].attempt_id, "11111111")
        failed = await h.call("GET", f"/v1/enrollments/{identifier}")
        assert failed.body["status"] == "failed", failed.body
        again = await h.call("POST", f"/v1/enrollments/{identifier}/callback")
        assert again.status == 202, again.body  # "call me again" still has its budget
    finally:
        await h.stop()


# ---- smaller -------------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_the_fourth_resend_is_409_resend_limit_without_retry_after(sqlite_url: str) -> None:
    clock = FakeClock()
    h = ApiHarness(sqlite_url, api_config(test_config()), clock=clock)
    try:
        key, _, payment = await ready(h)
        for _ in range(3):
            clock.advance(30)
            assert (await h.call("POST", f"/v1/payments/{payment}/resend", key=key)).status == 200
        clock.advance(30)
        fourth = await h.call("POST", f"/v1/payments/{payment}/resend", key=key)
        assert (fourth.status, fourth.body["error"], fourth.body["max_resends"]) == (409, "resend_limit", 3)
        assert fourth.header("retry-after") is None
    finally:
        await h.stop()


def test_data_files_are_created_0600(tmp_path: Path) -> None:
    data = tmp_path / "data"
    previous = os.umask(0o022)
    try:
        prepare_data_dir(data)
        url = f"sqlite:///{data / 'idtronic.db'}"
        migrate(url)
        engine = make_engine(url)
        with engine.begin() as conn:  # WAL mode: the -wal and -shm files exist while connected
            conn.exec_driver_sql("CREATE TABLE probe (x INTEGER)")
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in data.iterdir()}
        engine.dispose()
    finally:
        os.umask(previous)
    assert {"idtronic.db", "idtronic.db-wal", "idtronic.db-shm", "operator.key"} <= set(modes)
    assert modes == dict.fromkeys(modes, 0o600), modes
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
