"""FastAGI wire format, without I/O (sans-I/O, like h11).

What Asterisk 22 really sends is recorded in docs/protocols/AGI.md and its transcripts; the rules
that matter here:

* everything is `\\n`-terminated lines; Asterisk never sends nor accepts `\\r\\n`;
* the session starts with the `agi_*` environment block, ended by an empty line;
* a reply is `200 result=<value>[ (<data>)][ endpos=<n>]`, a provisional `100 ...`, `510`, `511`, or a
  multi-line `520-` block closed by a `520 ` line (its usage text may itself contain `200 result=`);
* `HANGUP` is an asynchronous notice: it may follow a reply or arrive while no command runs.

Replies to GET DATA carry keyed digits: events and exceptions defined here never show a reply's value in
their repr or message.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

MAX_LINE = 8192  # longest line accepted from the peer (env values, usage text, variable values)
MAX_COMMAND = 2048  # Asterisk reads commands into a 2 KiB buffer (AGI_BUF_LEN)
MAX_USAGE_LINES = 64  # usage text kept from a 520 block; the rest is counted, not stored
MAX_ENV_LINES = 256  # agi_* variables accepted before the empty line


class AgiProtocolError(Exception):
    """The peer broke the FastAGI framing or grammar. The message never quotes the offending line."""


# ---------------------------------------------------------------------------------------------------------
# Framing


class LineSplitter:
    """Bytes in, complete lines out (without the `\\n`; a `\\r` is kept, as Asterisk keeps it).

    The buffer is a bytearray consumed from the front, so a burst of small segments costs linear time.
    """

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self._buffer = bytearray()
        self._max_line = max_line

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        lines: list[bytes] = []
        start = 0
        while True:
            end = self._buffer.find(b"\n", start)
            if end < 0:
                break
            if end - start > self._max_line:
                raise AgiProtocolError(f"line longer than {self._max_line} bytes")
            lines.append(bytes(self._buffer[start:end]))
            start = end + 1
        del self._buffer[:start]
        if len(self._buffer) > self._max_line:
            raise AgiProtocolError(f"line longer than {self._max_line} bytes")
        return lines

    @property
    def pending(self) -> int:
        return len(self._buffer)


# ---------------------------------------------------------------------------------------------------------
# Environment block


# The order Asterisk writes the block in (docs/protocols/AGI.md); agi_arg_N follow.
ENV_ORDER: tuple[str, ...] = (
    "agi_network",
    "agi_network_script",
    "agi_request",
    "agi_channel",
    "agi_language",
    "agi_type",
    "agi_uniqueid",
    "agi_version",
    "agi_callerid",
    "agi_calleridname",
    "agi_callingpres",
    "agi_callingani2",
    "agi_callington",
    "agi_callingtns",
    "agi_dnid",
    "agi_rdnis",
    "agi_context",
    "agi_extension",
    "agi_priority",
    "agi_enhanced",
    "agi_accountcode",
    "agi_threadid",
)

_ARG_KEY = re.compile(r"agi_arg_([1-9][0-9]{0,2})")


@dataclass(frozen=True)
class AgiEnv:
    """The `agi_*` block. Values are kept verbatim; nothing is URL-decoded (neither does Asterisk)."""

    values: Mapping[str, str]
    args: tuple[str, ...]  # agi_arg_1..N, empty ones included

    @property
    def script(self) -> str:
        """`agi_network_script` up to any `?`: `enroll?lang=fr` routes as `enroll`."""
        return self.values.get("agi_network_script", "").split("?", 1)[0].strip("/")

    @property
    def query(self) -> str:
        parts = self.values.get("agi_network_script", "").split("?", 1)
        return parts[1] if len(parts) == 2 else ""

    def get(self, key: str, default: str = "") -> str:
        return self.values.get(key, default)

    def arg(self, n: int) -> str:
        """agi_arg_n (1-based); "" when absent."""
        return self.args[n - 1] if 0 < n <= len(self.args) else ""


class EnvParser:
    """Feed lines until it returns the AgiEnv (on the empty line)."""

    def __init__(self) -> None:
        self._values: dict[str, str] = {}
        self._count = 0

    def feed_line(self, line: bytes) -> AgiEnv | None:
        if line == b"":
            return self._finish()
        self._count += 1
        if self._count > MAX_ENV_LINES:
            raise AgiProtocolError("environment block too long")
        text = line.decode("utf-8", errors="replace")
        key, sep, value = text.partition(": ")
        if not sep:
            # `agi_accountcode: ` keeps its space; a bare `key:` is tolerated as empty.
            if text.endswith(":"):
                key, value = text[:-1], ""
            else:
                raise AgiProtocolError(f"environment line {self._count} is not 'key: value'")
        if not key.startswith("agi_"):
            raise AgiProtocolError(f"environment line {self._count} is not an agi_ variable")
        self._values[key] = value
        return None

    def _finish(self) -> AgiEnv:
        numbered: dict[int, str] = {}
        for key, value in self._values.items():
            match = _ARG_KEY.fullmatch(key)
            if match:
                numbered[int(match[1])] = value
        # Missing numbers (never seen from Asterisk) become empty arguments so positions hold.
        last = max(numbered, default=0)
        args = tuple(numbered.get(i, "") for i in range(1, last + 1))
        return AgiEnv(values=dict(self._values), args=args)


def encode_env(env: Mapping[str, str]) -> bytes:
    """The block as Asterisk writes it: known keys in Asterisk's order, other keys, then agi_arg_N."""
    args = sorted(
        ((int(m[1]), k) for k in env if (m := _ARG_KEY.fullmatch(k))),
        key=lambda item: item[0],
    )
    arg_keys = {k for _, k in args}
    keys = [k for k in ENV_ORDER if k in env]
    keys += [k for k in env if k not in ENV_ORDER and k not in arg_keys]
    keys += [k for _, k in args]
    out = bytearray()
    for key in keys:
        value = env[key]
        if "\n" in value or "\n" in key:
            raise ValueError("environment values cannot contain a newline")
        out += f"{key}: {value}\n".encode()
    out += b"\n"
    return bytes(out)


# ---------------------------------------------------------------------------------------------------------
# Replies (Asterisk -> server)


@dataclass(frozen=True, slots=True)
class Reply:
    """`200 result=...`. `result` and `data` may hold keyed digits: kept out of repr."""

    result: str = field(repr=False)
    data: str | None = field(default=None, repr=False)
    endpos: int | None = None

    @property
    def timed_out(self) -> bool:
        """GET DATA's `(timeout)` marker (only meaningful for GET DATA)."""
        return self.data == "timeout"

    def result_int(self) -> int | None:
        try:
            return int(self.result)
        except ValueError:
            return None


@dataclass(frozen=True, slots=True)
class Provisional:
    """`100 ...`: the command runs; the real reply follows."""


@dataclass(frozen=True, slots=True)
class InvalidCommand:
    """`510 Invalid or unknown command`."""


@dataclass(frozen=True, slots=True)
class DeadChannel:
    """`511 Command Not Permitted on a dead channel or intercept routine`."""


@dataclass(frozen=True, slots=True)
class UsageError:
    """`520`, single line or a `520-` ... `520 ` block: the arguments were wrong."""

    usage: tuple[str, ...] = field(repr=False)
    dropped_lines: int = 0


@dataclass(frozen=True, slots=True)
class HangupNotice:
    """The asynchronous `HANGUP` line: the channel is gone (sent once)."""


@dataclass(frozen=True, slots=True)
class Unexpected:
    """A line that fits no reply form. Only its length is kept (it may echo digits)."""

    length: int


ReplyEvent = Reply | Provisional | InvalidCommand | DeadChannel | UsageError | HangupNotice | Unexpected

_REPLY_200 = re.compile(r"200 result=(?P<result>\S*)(?: \((?P<data>.*)\))?(?: endpos=(?P<endpos>-?\d+))?")


class ReplyParser:
    """Feed lines from Asterisk (after the env block); returns one event per complete reply."""

    def __init__(self) -> None:
        self._usage: list[str] | None = None  # inside a 520- block
        self._dropped = 0

    @property
    def in_block(self) -> bool:
        return self._usage is not None

    def feed_line(self, line: bytes) -> ReplyEvent | None:
        text = line.decode("utf-8", errors="replace")
        if self._usage is not None:
            # Inside the block every line is usage text until `520 `: even `200 result=` or `HANGUP`.
            if text.startswith("520 "):
                usage, dropped = tuple(self._usage), self._dropped
                self._usage, self._dropped = None, 0
                return UsageError(usage=usage, dropped_lines=dropped)
            if len(self._usage) < MAX_USAGE_LINES:
                self._usage.append(text)
            else:
                self._dropped += 1
            return None
        if text == "HANGUP":
            return HangupNotice()
        if text.startswith("200 "):
            return self._parse_200(text)
        if text.startswith("100 ") or text == "100":
            return Provisional()
        if text.startswith("510") and text[3:4] in ("", " "):
            return InvalidCommand()
        if text.startswith("511") and text[3:4] in ("", " "):
            return DeadChannel()
        if text.startswith("520-"):
            self._usage = []
            return None
        if text.startswith("520") and text[3:4] in ("", " "):
            return UsageError(usage=())
        return Unexpected(length=len(line))

    @staticmethod
    def _parse_200(text: str) -> ReplyEvent:
        match = _REPLY_200.fullmatch(text)
        if match is None:
            return Unexpected(length=len(text))
        endpos = match["endpos"]
        return Reply(
            result=match["result"],
            data=match["data"],
            endpos=int(endpos) if endpos is not None else None,
        )


# ---------------------------------------------------------------------------------------------------------
# Commands (server -> Asterisk)


@dataclass(frozen=True, slots=True)
class Quoted:
    """An argument always written in double quotes (`"0123456789#"`, `""`), even if it needs none."""

    text: str = field(repr=False)


Arg = str | Quoted

_COMMAND_NAME = re.compile(r"[A-Za-z]+(?: [A-Za-z]+)*")
_NEEDS_QUOTES = re.compile(r'[\s"\\]')


class CommandTooLong(ValueError):
    pass


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def encode_arg(arg: Arg) -> str:
    text = arg.text if isinstance(arg, Quoted) else arg
    if "\n" in text or "\r" in text or "\0" in text:
        # The message names no content: the argument may be secret.
        raise ValueError("AGI arguments cannot contain CR, LF or NUL")
    if isinstance(arg, Quoted) or text == "" or _NEEDS_QUOTES.search(text):
        return _quote(text)
    return text


def encode_command(name: str, *args: Arg) -> bytes:
    """`GET DATA`, "prompt", "10000", "8" -> b'GET DATA prompt 10000 8\\n'. Never `\\r\\n`."""
    if not _COMMAND_NAME.fullmatch(name):
        raise ValueError(f"bad AGI command name {name!r}")
    line = " ".join([name, *(encode_arg(a) for a in args)])
    data = (line + "\n").encode("utf-8")
    if len(data) > MAX_COMMAND:
        raise CommandTooLong(f"{name} command longer than {MAX_COMMAND} bytes")
    return data
