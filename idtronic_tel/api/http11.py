"""A sans-I/O HTTP/1.1 request parser for the merchant fast path (api/fastpath.py): bytes in, events out.

It reads the requests whose target is under one path prefix (the merchant routes), in their plain form
only: `HTTP/1.1`, CRLF line ends, every header once, a `Content-Length` or no body. Anything else, valid
or not, is `HandOver` with every byte from the start of that request: Twisted's channel reads the
connection from there on, exactly as it did before the fast path. A request for the prefix that is
malformed (a target that is not printable ASCII, a method or header name that is not a token, a header
line without a colon, a folded line, a `Content-Length` that is not digits, a head over Twisted's 16 kB)
is a `Refusal` 400; a declared body over the limit is a `Refusal` 413 before any body byte is read."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import ApiError

HEAD_LIMIT = 16_384  # request line and headers together: Twisted's HTTPChannel.totalHeadersSize
MAX_HEADERS = 500  # Twisted's HTTPChannel.maxHeaders
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Header lines, each with its CRLF: a token, a colon, the value (one way to match each line: linear time).
_FIELD = rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):(.*?)\r\n"
_FIELDS = re.compile(rb"(?:" + _FIELD + rb")*")
_FIELD_PARTS = re.compile(_FIELD)
_TARGET = re.compile(rb"[!-~]+")  # printable ASCII, no space
# A whole well-formed head in one match (the usual case); anything else is sorted out line by line.
_PLAIN = re.compile(
    rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) ([!-~]+) HTTP/1\.1\r\n"
    rb"((?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:.*?\r\n)*)\r\n"
)


@dataclass(slots=True, frozen=True)
class Request:
    method: bytes
    target: bytes
    headers: dict[bytes, bytes]  # lower-case names, values without surrounding blanks
    body: bytes
    close: bool  # the client asked for the connection to be closed after the answer


@dataclass(slots=True, frozen=True)
class HandOver:
    data: bytes  # every byte received from the start of the request the parser does not take


@dataclass(slots=True, frozen=True)
class Refusal:
    error: ApiError
    reason: str | None  # the label of idtronic_http_refused_total, None when not counted there


class NeedData:
    """Nothing to do until more bytes arrive."""


NEED_DATA = NeedData()
Event = Request | HandOver | Refusal | NeedData


@dataclass(slots=True, frozen=True)
class _Head:
    method: bytes
    target: bytes
    headers: dict[bytes, bytes]
    length: int
    close: bool


class RequestParser:
    """Feed it bytes, then take events with `next_event` until `NEED_DATA`. After a `HandOver` or a
    `Refusal` it must not be used any more."""

    def __init__(self, prefix: bytes, max_body: int) -> None:
        self._prefix = prefix
        self._max_body = max_body
        self._buffer = b""
        self._head: _Head | None = None  # read, its body not yet complete
        self._body: list[bytes] = []  # what arrives while a body is incomplete, joined once complete
        self._body_size = 0

    def feed(self, data: bytes) -> None:
        if self._head is not None:
            self._body.append(data)  # not added to the buffer chunk by chunk: large bodies cost linear time
            self._body_size += len(data)
        else:
            self._buffer = self._buffer + data if self._buffer else data

    @property
    def started(self) -> bool:
        """Bytes of a request not answered yet have arrived."""
        return bool(self._buffer) or self._head is not None

    @property
    def buffered(self) -> int:
        """Bytes received and not yet taken as a request."""
        return len(self._buffer) + self._body_size

    @property
    def in_body(self) -> bool:
        return self._head is not None

    def next_event(self) -> Event:
        if not self._buffer and self._head is None:
            return NEED_DATA
        if self._head is None:
            event = self._read_head()
            if event is not None:
                return event
        head = self._head
        assert head is not None
        if len(self._buffer) + self._body_size < head.length:
            return NEED_DATA
        if self._body:
            self._buffer = b"".join([self._buffer, *self._body])
            self._body, self._body_size = [], 0
        body, self._buffer = self._buffer[: head.length], self._buffer[head.length :]
        self._head = None
        return Request(head.method, head.target, head.headers, body, head.close)

    def _read_head(self) -> Event | None:
        """None once self._head is set, or the event that ends the head's reading."""
        buffer = self._buffer
        plain = _PLAIN.match(buffer)
        if plain is not None and plain.end() <= HEAD_LIMIT and self._ours(plain[2]):
            return self._take(plain[1], plain[2], plain[3], plain.end())
        line_end = buffer.find(b"\n")
        if line_end < 0:
            return HandOver(buffer) if len(buffer) > HEAD_LIMIT else NEED_DATA
        parts = buffer[:line_end].split(b" ")
        if len(parts) != 3 or parts[2] != b"HTTP/1.1\r" or not self._ours(parts[1]):
            return HandOver(buffer)  # not a plain HTTP/1.1 request for the prefix: Twisted's
        end = buffer.find(b"\r\n\r\n")
        block = buffer[: end if end >= 0 else len(buffer)]
        if block.count(b"\n") != block.count(b"\r\n"):
            return HandOver(buffer)  # bare LF line ends: valid for Twisted, not read here
        if (end < 0 and len(buffer) > HEAD_LIMIT) or end + 4 > HEAD_LIMIT:
            return _bad(f"the request line and headers are limited to {HEAD_LIMIT} bytes")
        if end < 0:
            return NEED_DATA
        method, target = parts[0], parts[1]
        if not _TOKEN.fullmatch(method):
            return _bad("the method must be a token")
        if not _TARGET.fullmatch(target):
            return _bad("the path must be printable ASCII (percent-encode the rest)")
        fields = buffer[line_end + 1 : end + 2]
        if not _FIELDS.fullmatch(fields):
            return _bad("a header line is not `name: value` (or is folded)")
        return self._take(method, target, fields, end + 4)

    def _take(self, method: bytes, target: bytes, fields: bytes, size: int) -> Event | None:
        """The head's checks once its lines are well formed (`size`: its bytes, blank line included)."""
        pairs = _FIELD_PARTS.findall(fields)
        if len(pairs) > MAX_HEADERS:
            return _bad(f"at most {MAX_HEADERS} headers")
        headers = {name.lower(): value.strip(b" \t") for name, value in pairs}
        if len(headers) != len(pairs):
            return HandOver(self._buffer)  # a repeated header: Twisted's rules for which one counts
        if b"transfer-encoding" in headers or b"expect" in headers:
            return HandOver(self._buffer)  # chunked bodies and `100 Continue`: Twisted's
        declared = headers.get(b"content-length", b"0")
        if not declared.isdigit():
            return _bad("Content-Length must be digits")
        length = int(declared)
        if length > self._max_body:
            error = ApiError("body_too_large", f"bodies are limited to {self._max_body} bytes")
            return Refusal(error, "body_too_large")
        connection = headers.get(b"connection", b"").lower()
        close = b"close" in (token.strip() for token in connection.split(b","))
        self._head = _Head(method, target, headers, length, close)
        self._buffer = self._buffer[size:]
        return None

    def _ours(self, target: bytes) -> bool:
        prefix = self._prefix
        return target.startswith(prefix) and (len(target) == len(prefix) or target[len(prefix)] in b"/?")


def _bad(message: str) -> Refusal:
    return Refusal(ApiError("invalid_request", message), None)
