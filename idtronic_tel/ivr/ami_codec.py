"""Asterisk Manager Interface framing, without I/O (sans-I/O, in the style of h11).

Wire format, as recorded from Asterisk 22.10.1 (docs/protocols/AMI.md):

* on connect the server sends one banner line ``Asterisk Call Manager/11.0.0\\r\\n`` and no blank line;
* then messages in both directions: ``Key: Value\\r\\n`` lines ended by an empty line ``\\r\\n``;
* header names repeat (``Variable:``, ``ChanVariable:``, ``Output:``) and their order is not fixed, so a
  message is an ordered list of pairs, never a dict.

`AmiDecoder.receive_data(bytes)` returns what it could parse (`Banner`, `Message`, `BadLine`) and keeps the
rest; `encode_message` / `encode_action` produce bytes. Sizes are bounded so that a peer sending an endless
line or message cannot exhaust memory: the decoder raises `FrameTooLarge` and the caller drops the link.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

# Bytes are decoded as UTF-8 with surrogateescape: any byte sequence survives a decode/encode round trip.
_ENCODING = "utf-8"
_ERRORS = "surrogateescape"

BANNER_PREFIX = "Asterisk Call Manager/"
MAX_LINE = 8192  # Asterisk itself caps a manager line at 1025 bytes; events are far shorter
MAX_MESSAGE = 1 << 20  # a `Command` action with a long CLI output is the biggest legitimate message


class AmiProtocolError(Exception):
    """The peer broke the framing beyond what we tolerate; the connection must be dropped."""


class FrameTooLarge(AmiProtocolError):
    pass


@dataclass(frozen=True)
class Message:
    """One AMI message: ordered (key, value) pairs. Key look-ups ignore case, as Asterisk's do."""

    headers: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, *pairs: tuple[str, str]) -> Message:
        return cls(tuple(pairs))

    def get(self, key: str, default: str | None = None) -> str | None:
        """The first value of `key`."""
        k = key.lower()
        for name, value in self.headers:
            if name.lower() == k:
                return value
        return default

    def get_all(self, key: str) -> list[str]:
        """Every value of a repeated key, in wire order."""
        k = key.lower()
        return [value for name, value in self.headers if name.lower() == k]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self.headers)

    @property
    def event(self) -> str | None:
        return self.get("Event")

    @property
    def response(self) -> str | None:
        return self.get("Response")

    @property
    def action(self) -> str | None:
        return self.get("Action")

    @property
    def action_id(self) -> str | None:
        return self.get("ActionID")


@dataclass(frozen=True)
class Banner:
    text: str  # e.g. "Asterisk Call Manager/11.0.0"

    @property
    def version(self) -> str:
        return self.text[len(BANNER_PREFIX) :] if self.text.startswith(BANNER_PREFIX) else ""


@dataclass(frozen=True)
class BadLine:
    """A line without `:` inside a message: reported and skipped, the message goes on."""

    line: bytes


Item = Banner | Message | BadLine


class AmiDecoder:
    """Incremental AMI parser. `expect_banner=True` on the client side (the server speaks first)."""

    def __init__(
        self, *, expect_banner: bool, max_line: int = MAX_LINE, max_message: int = MAX_MESSAGE
    ) -> None:
        self._expect_banner = expect_banner
        self._max_line = max_line
        self._max_message = max_message
        self._buffer = bytearray()
        self._headers: list[tuple[str, str]] = []
        self._message_size = 0

    @property
    def buffered(self) -> int:
        """Bytes received and not yet part of a complete message (for tests and metrics)."""
        return len(self._buffer) + self._message_size

    def receive_data(self, data: bytes) -> list[Item]:
        self._buffer += data
        items: list[Item] = []
        start = 0
        buf = self._buffer
        while True:
            end = buf.find(b"\n", start)
            if end < 0:
                break
            # Lines end with CRLF; a bare LF is accepted too (Asterisk accepts it as well).
            line = bytes(buf[start : end - 1 if end > start and buf[end - 1] == 0x0D else end])
            start = end + 1
            if len(line) > self._max_line:
                self._reset()
                raise FrameTooLarge(f"AMI line of {len(line)} bytes (limit {self._max_line})")
            item = self._line(line)
            if item is not None:
                items.append(item)
        del buf[:start]
        if len(buf) > self._max_line:
            self._reset()
            raise FrameTooLarge(f"AMI line longer than {self._max_line} bytes without an end")
        return items

    def _reset(self) -> None:
        self._buffer.clear()
        self._headers = []
        self._message_size = 0

    def _line(self, line: bytes) -> Item | None:
        if self._expect_banner:
            # The banner is the first line the server sends; it is not followed by a blank line.
            self._expect_banner = False
            text = line.decode(_ENCODING, _ERRORS)
            if text.startswith(BANNER_PREFIX) or b":" not in line:
                return Banner(text)
        if not line:
            if not self._headers:
                return None  # stray blank line between messages: nothing to deliver
            message = Message(tuple(self._headers))
            self._headers = []
            self._message_size = 0
            return message
        self._message_size += len(line) + 2
        if self._message_size > self._max_message:
            self._reset()
            raise FrameTooLarge(f"AMI message larger than {self._max_message} bytes")
        colon = line.find(b":")
        if colon <= 0:
            return BadLine(line)
        key = line[:colon].decode(_ENCODING, _ERRORS).strip()
        # "Key: value": drop the one separator space only; CLI `Output:` lines keep their indentation.
        raw = line[colon + 1 :]
        value = (raw[1:] if raw.startswith(b" ") else raw).decode(_ENCODING, _ERRORS)
        self._headers.append((key, value))
        return None


def _check(text: str, what: str) -> None:
    # A CR or LF inside a value would end the line early and let the rest be read as more headers
    # (header injection into an Originate); refuse instead of escaping.
    if "\r" in text or "\n" in text:
        raise ValueError(f"AMI {what} contains a line break: {text!r}")


def encode_message(headers: Iterable[tuple[str, str]]) -> bytes:
    """`Key: Value\\r\\n` per header, then the blank line."""
    out = bytearray()
    for key, value in headers:
        _check(key, "header name")
        _check(value, "header value")
        if not key or ":" in key:
            raise ValueError(f"bad AMI header name {key!r}")
        out += f"{key}: {value}\r\n".encode(_ENCODING, _ERRORS)
    out += b"\r\n"
    return bytes(out)


def encode_action(action: str, action_id: str | None, headers: Iterable[tuple[str, str]] = ()) -> bytes:
    """An action: `Action:` first, `ActionID:` second (as every client in the transcripts sends them)."""
    pairs: list[tuple[str, str]] = [("Action", action)]
    if action_id is not None:
        pairs.append(("ActionID", action_id))
    pairs.extend(headers)
    return encode_message(pairs)


def encode_banner(version: str = "11.0.0") -> bytes:
    return f"{BANNER_PREFIX}{version}\r\n".encode()
