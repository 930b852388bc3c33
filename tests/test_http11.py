"""The merchant fast path's sans-I/O request parser (api/http11.py), byte for byte: what it reads, what it
hands over to Twisted, what it refuses; any cut of the bytes gives the same events."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from idtronic_tel.api.http11 import (
    HEAD_LIMIT,
    NEED_DATA,
    HandOver,
    Refusal,
    Request,
    RequestParser,
)

CREATE = (
    b"POST /v1/payments HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer k\r\n"
    b'Content-Type: application/json\r\nContent-Length: 7\r\n\r\n{"a":1}'
)
READ = b"GET /v1/payments/pay_1?x=1 HTTP/1.1\r\nHost: api\r\nConnection: keep-alive, Close\r\n\r\n"


def events(*chunks: bytes, max_body: int = 1000) -> list[Any]:
    """The events of the chunks fed one after the other; a hand-over shown with every byte that Twisted's
    channel gets (the later chunks too)."""
    parser = RequestParser(b"/v1/payments", max_body)
    out: list[Any] = []
    for number, chunk in enumerate(chunks):
        parser.feed(chunk)
        while True:
            event = parser.next_event()
            if event is NEED_DATA:
                break
            if isinstance(event, HandOver):
                return [*out, HandOver(event.data + b"".join(chunks[number + 1 :]))]
            out.append(event)
            if isinstance(event, Refusal):
                return out
    return out


def test_plain_requests_are_read_in_order_with_their_headers_and_bodies() -> None:
    assert events(CREATE + READ) == [
        Request(
            b"POST",
            b"/v1/payments",
            {
                b"host": b"api",
                b"authorization": b"Bearer k",
                b"content-type": b"application/json",
                b"content-length": b"7",
            },
            b'{"a":1}',
            False,
        ),
        Request(
            b"GET",
            b"/v1/payments/pay_1?x=1",
            {b"host": b"api", b"connection": b"keep-alive, Close"},
            b"",
            True,
        ),
    ]


def test_every_cut_of_the_bytes_gives_the_same_requests() -> None:
    data = CREATE + READ + CREATE
    whole = events(data)
    assert len(whole) == 3
    for cut in range(1, len(data)):
        assert events(data[:cut], data[cut:]) == whole, cut
    assert events(*[bytes([b]) for b in data]) == whole


def test_a_body_not_yet_complete_waits_and_the_parser_says_where_it_is() -> None:
    parser = RequestParser(b"/v1/payments", 1000)
    assert not parser.started
    parser.feed(CREATE[:10])
    assert parser.next_event() is NEED_DATA and parser.started and not parser.in_body
    parser.feed(CREATE[10:-3])
    assert parser.next_event() is NEED_DATA and parser.in_body
    parser.feed(CREATE[-3:])
    assert isinstance(parser.next_event(), Request) and not parser.started and not parser.in_body


@pytest.mark.parametrize(
    "data",
    [
        b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n",  # not a merchant route
        b"GET /v1/paymentsX HTTP/1.1\r\n\r\n",
        b"GET /admin HTTP/1.1\r\n\r\n",
        b"GET /v1/payments HTTP/1.0\r\n\r\n",
        b"GET  /v1/payments HTTP/1.1\r\n\r\n",
        b"GET /v1/payments HTTP/1.1\n\n",  # bare LF line ends
        b"GET /v1/payments HTTP/1.1\r\nHost: a\nX: b\r\n\r\n",
        b"POST /v1/payments HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"POST /v1/payments HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
        b"GET /v1/payments HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n",  # a header twice
        b"\r\nGET /v1/payments HTTP/1.1\r\n\r\n",
        b"x" * (HEAD_LIMIT + 1),  # no line end at all
    ],
)
def test_what_is_not_a_plain_merchant_request_is_handed_over_whole(data: bytes) -> None:
    assert events(data) == [HandOver(data)]
    assert events(READ + data) == [events(READ)[0], HandOver(data)]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"GET /v1/payments/\xff HTTP/1.1\r\n\r\n", "the path must be printable ASCII"),
        (b"GET /v1/payments/\x01 HTTP/1.1\r\n\r\n", "the path must be printable ASCII"),
        (b"G(T /v1/payments HTTP/1.1\r\n\r\n", "the method must be a token"),
        (b"GET /v1/payments HTTP/1.1\r\nHost a\r\n\r\n", "a header line"),
        (b"GET /v1/payments HTTP/1.1\r\nHost : a\r\n\r\n", "a header line"),
        (b"GET /v1/payments HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", "a header line"),
        (b"GET /v1/payments HTTP/1.1\r\n: a\r\n\r\n", "a header line"),
        (b"GET /v1/payments HTTP/1.1\r\nContent-Length: -1\r\n\r\n", "Content-Length must be digits"),
        (b"GET /v1/payments HTTP/1.1\r\nContent-Length: 1_0\r\n\r\n", "Content-Length must be digits"),
        (b"GET /v1/payments HTTP/1.1\r\nContent-Length: \xd9\xa3\r\n\r\n", "Content-Length must be digits"),
        (b"GET /v1/payments HTTP/1.1\r\nX: " + b"y" * HEAD_LIMIT + b"\r\n\r\n", "limited to 16384"),
        (b"GET /v1/payments HTTP/1.1\r\nX: " + b"y" * HEAD_LIMIT, "limited to 16384"),
        (b"GET /v1/payments HTTP/1.1\r\n" + b"X: y\r\n" * 501 + b"\r\n", "at most 500 headers"),
    ],
)
def test_a_malformed_merchant_request_is_refused_400(data: bytes, message: str) -> None:
    (event,) = events(data)
    assert isinstance(event, Refusal) and event.reason is None
    assert (event.error.status, event.error.code) == (400, "invalid_request")
    assert message in event.error.message


def test_a_declared_body_over_the_limit_is_refused_413_before_it_is_read() -> None:
    head = b"POST /v1/payments HTTP/1.1\r\nContent-Length: 1001\r\n\r\n"
    (event,) = events(head)
    assert isinstance(event, Refusal) and event.reason == "body_too_large"
    assert (event.error.status, event.error.message) == (413, "bodies are limited to 1000 bytes")
    exactly = b"POST /v1/payments HTTP/1.1\r\nContent-Length: 1000\r\n\r\n" + b"x" * 1000
    assert [e.body for e in events(exactly)] == [b"x" * 1000]


# ---- Hypothesis ---------------------------------------------------------------------------------------

_PIECES = [CREATE, READ, b"GET /v1/payments/p HTTP/1.1\r\n\r\n", b"GET / HTTP/1.1\r\n\r\n"]


@settings(max_examples=200, derandomize=True, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), min_size=1, max_size=5), st.lists(st.integers(0, 400)))
def test_cutting_a_stream_anywhere_changes_nothing(pieces: list[bytes], cuts: list[int]) -> None:
    data = b"".join(pieces)
    places = sorted({c % (len(data) + 1) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *places], [*places, len(data)], strict=True)]
    assert events(*chunks) == events(data)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(st.lists(st.binary(max_size=80) | st.sampled_from(_PIECES), max_size=6))
def test_hostile_bytes_give_events_never_an_exception(chunks: list[bytes]) -> None:
    for event in events(*chunks, max_body=50):
        if isinstance(event, Refusal):
            assert event.error.status in (400, 413)
        elif isinstance(event, HandOver):
            assert event.data in b"".join(chunks)
