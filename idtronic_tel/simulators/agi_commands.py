"""Asterisk's side of each AGI command (res_agi.c as recorded, docs/protocols/AGI.md): what it replies,
when, and how a digit, a hang-up or the next command line interrupts it. The channel
(`agi_channel.EmulatedAgiChannel`) gives the timing, the DTMF and the socket."""

from __future__ import annotations

import enum
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

from twisted.internet.defer import Deferred

from idtronic_tel.ivr.agi_grammar import match_command, tokenize
from idtronic_tel.simulators.agi_options import SAMPLE_RATE, STOCK_SOUNDS, EmulatorOptions

USAGE: Mapping[str, tuple[str, ...]] = {
    "GET DATA": (
        "Stream the given <replaceable>file</replaceable>, and receive DTMF data.",
        "Returns the digits received from the channel at the other end.",
    ),
    "SET VARIABLE": ("Sets a variable to the current channel.",),
    "STREAM FILE": (
        "Send the given file, allowing playback to be interrupted by the given digits, if any. Returns "
        "<literal>0</literal> if playback completes without a digit being pressed, or the ASCII numerical "
        "value of the digit if one was pressed, or <literal>-1</literal> on error or if the channel was "
        "disconnected. If musiconhold is playing before calling stream file it will be automatically "
        "stopped and will not be restarted after completion.",
        "It sets the following channel variables upon completion:",
        "<variable>PLAYBACKSTATUS</variable>: The status of the playback attempt as a text string.",
        "    <value>SUCCESS</value>",
        "    <value>FAILED</value>",
    ),
    "WAIT FOR DIGIT": (
        "Waits up to <replaceable>timeout</replaceable> milliseconds for channel to receive a DTMF digit. "
        "Returns <literal>-1</literal> on channel failure, <literal>0</literal> if no digit is received "
        "in the timeout, or the numerical value of the ascii of the digit if one is received. Use "
        "<literal>-1</literal> for the <replaceable>timeout</replaceable> value if you desire the call "
        "to block indefinitely.",
    ),
    "GET FULL VARIABLE": (
        "Evaluates the given <replaceable>expression</replaceable> against the channel specified by "
        "<replaceable>channelname</replaceable>, or the current channel if "
        "<replaceable>channelname</replaceable> is not provided.",
        "Unlike GET VARIABLE, the <replaceable>expression</replaceable> is processed in a manner similar "
        "to dialplan evaluation, allowing complex and built-in variables to be accessed, e.g. "
        "<literal>The time is ${EPOCH}</literal>",
        "Returns <literal>0</literal> if no channel matching <replaceable>channelname</replaceable> "
        "exists, <literal>1</literal> otherwise.",
        "Example return code: 200 result=1 (The time is 1578493800)",
    ),
}

# Commands res_agi.c runs on a dead channel; the others get 511.
ALLOWED_WHEN_DEAD = frozenset(
    {"EXEC", "GET FULL VARIABLE", "GET VARIABLE", "NOOP", "SET VARIABLE", "VERBOSE"}
)

ANY_KEY = "0123456789*#ABCD"
REPLY_510 = b"510 Invalid or unknown command\n"
REPLY_511 = b"511 Command Not Permitted on a dead channel or intercept routine\n"
USAGE_FIRST = b"520-Invalid command syntax.  Proper usage follows:\n"
USAGE_LAST = b"520 End of proper usage.\n"


class BadArguments(Exception):
    pass


class Wake(enum.Enum):
    """Why a wait ended."""

    TIMEOUT = enum.auto()
    DIGIT = enum.auto()
    HUNG_UP = enum.auto()
    INTERRUPTED = enum.auto()  # a new command line arrived (pipelining) or the socket closed


class Line(Protocol):
    """What the commands need from the emulated channel."""

    options: EmulatorOptions
    env: dict[str, str]
    variables: dict[str, str]
    language: str
    dead: bool  # the channel hung up
    failed: bool  # a command failed on a live channel: AGISTATUS=FAILURE
    closed: bool
    wanted_keys: str  # the digits the running command acts on

    def now(self) -> float: ...
    def playing(self, what: str) -> None: ...
    def write(self, data: bytes) -> None: ...
    def reply(self, text: str) -> None: ...
    def sleep(self, seconds: float) -> Deferred[None]: ...
    def wait(
        self, seconds: float | None, *, dtmf: bool, interruptible: bool = True
    ) -> Deferred[tuple[Wake, str]]: ...


class AgiCommands:
    """The commands Asterisk answers on one channel."""

    def __init__(self, ch: Line) -> None:
        self.ch = ch
        self._handlers: dict[str, Callable[[list[str]], Awaitable[None]]] = {
            "ANSWER": self._answer,
            "CHANNEL STATUS": self._channel_status,
            "EXEC": self._exec,
            "GET DATA": self._get_data,
            "GET FULL VARIABLE": self._get_full_variable,
            "GET VARIABLE": self._get_variable,
            "HANGUP": self._hangup,
            "NOOP": self._noop,
            "SAY DIGITS": self._say_digits,
            "SET VARIABLE": self._set_variable,
            "STREAM FILE": self._stream_file,
            "VERBOSE": self._verbose,
            "WAIT FOR DIGIT": self._wait_for_digit,
        }

    async def execute(self, raw: bytes) -> None:
        """One command line, answered as Asterisk does (510 unknown, 511 on a dead channel, 520 usage)."""
        words = [t.text for t in tokenize(raw.decode("utf-8", errors="replace"))]
        matched = match_command(words)
        if matched is None:
            self.ch.write(REPLY_510)
            return
        name, args = matched
        if self.ch.dead and name not in ALLOWED_WHEN_DEAD:
            self.ch.write(REPLY_511)
            return
        try:
            await self._handlers[name](args)
        except BadArguments:
            await self._usage(name)

    async def _usage(self, name: str) -> None:
        self.ch.write(USAGE_FIRST)
        await self.ch.sleep(self.ch.options.notice_delay)
        for line in USAGE.get(name, (f"Usage: {name.lower()} ...",)):
            self.ch.write(line.encode() + b"\n")
        self.ch.write(USAGE_LAST)

    def sound_samples(self, name: str) -> int | None:
        if name in self.ch.options.missing_prompts:
            return None
        if name in self.ch.options.sounds:
            return self.ch.options.sounds[name]
        stock = STOCK_SOUNDS.get(self.ch.language, STOCK_SOUNDS["en"])
        if name in stock:
            return stock[name]
        if name.startswith("idtronic-"):
            return self.ch.options.default_prompt_samples
        return None

    # -- commands --------------------------------------------------------------------------------------

    async def _answer(self, args: list[str]) -> None:
        self.ch.reply("result=0")

    async def _noop(self, args: list[str]) -> None:
        self.ch.reply("result=0")

    async def _channel_status(self, args: list[str]) -> None:
        if len(args) > 1:
            raise BadArguments
        if args and args[0] != self.ch.env.get("agi_channel"):
            self.ch.reply("result=-1")  # no such channel
            return
        self.ch.reply("result=6")  # AST_STATE_UP: a dead channel never gets here (511)

    async def _verbose(self, args: list[str]) -> None:
        if not args:
            raise BadArguments
        self.ch.reply("result=1")

    async def _hangup(self, args: list[str]) -> None:
        self.ch.reply("result=1")
        self.ch.dead = True  # the notice follows after notice_delay (command loop)

    async def _set_variable(self, args: list[str]) -> None:
        if len(args) != 2:
            raise BadArguments
        self.ch.variables[args[0].lstrip("_")] = args[1]
        self.ch.reply("result=1")

    async def _get_variable(self, args: list[str]) -> None:
        if len(args) != 1:
            raise BadArguments
        value = self._lookup(args[0])
        self.ch.reply("result=0" if value is None else f"result=1 ({value})")

    async def _get_full_variable(self, args: list[str]) -> None:
        if len(args) not in (1, 2):
            raise BadArguments
        expanded = re.sub(r"\$\{([^}]*)\}", lambda m: self._lookup(m[1]) or "", args[0])
        self.ch.reply(f"result=1 ({expanded})")

    def _lookup(self, name: str) -> str | None:
        builtins = {
            "CHANNEL": self.ch.env.get("agi_channel", ""),
            "UNIQUEID": self.ch.env.get("agi_uniqueid", ""),
            "CALLERID(num)": self.ch.env.get("agi_callerid", ""),
            "CALLERID(name)": self.ch.env.get("agi_calleridname", ""),
            "CHANNEL(language)": self.ch.language,
            "EPOCH": str(int(time.time())),
        }
        if name in self.ch.variables:
            return self.ch.variables[name]
        return builtins.get(name)

    async def _exec(self, args: list[str]) -> None:
        if not args:
            raise BadArguments
        app, app_args = args[0].lower(), (args[1] if len(args) > 1 else "")
        if app == "playback":
            samples = self.sound_samples(app_args.split(",")[0])
            if samples is None:
                self.ch.reply("result=0")  # Playback warns but the application itself succeeds
                return
            self.ch.playing(app_args.split(",")[0])
            await self.ch.wait(samples / SAMPLE_RATE, dtmf=False, interruptible=False)
            self.ch.reply("result=0")
        elif app in ("noop", "verbose", "log", "set"):
            self.ch.reply("result=0")
        else:
            self.ch.reply("result=-2")  # no such application

    async def _stream_file(self, args: list[str]) -> None:
        if len(args) not in (2, 3):
            raise BadArguments
        name, escape = args[0], args[1]
        length = self.sound_samples(name)
        if length is None:
            self.ch.failed = True  # AGISTATUS becomes FAILURE although the channel lives on
            self.ch.reply("result=-1 endpos=0")
            return
        offset = min(int(args[2]) if len(args) == 3 and args[2].isdigit() else 0, length)
        self.ch.wanted_keys = escape
        self.ch.playing(name)
        start = self.ch.now()
        while True:
            remaining = (length - offset) / SAMPLE_RATE - (self.ch.now() - start)
            wake, digit = await self.ch.wait(remaining, dtmf=True)
            # Asterisk counts whole 20 ms frames (160 samples).
            position = min(length, offset + int((self.ch.now() - start) * SAMPLE_RATE) // 160 * 160)
            if wake is Wake.TIMEOUT:
                self.ch.reply(f"result=0 endpos={length}")
                return
            if wake is Wake.HUNG_UP:
                self.ch.reply(f"result=-1 endpos={position}")
                return
            if wake is Wake.INTERRUPTED:
                return  # aborted by the next command: no reply
            if digit in escape:
                self.ch.reply(f"result={ord(digit)} endpos={position}")
                return
            # not an escape digit: ignored, playback goes on

    async def _get_data(self, args: list[str]) -> None:
        if not 1 <= len(args) <= 3:
            raise BadArguments
        timeout_ms = int(args[1]) if len(args) >= 2 and args[1].lstrip("-").isdigit() else 0
        timeout = (timeout_ms if timeout_ms > 0 else 6000) / 1000
        max_digits = int(args[2]) if len(args) == 3 and args[2].isdigit() else 1024
        digits: list[str] = []
        # The prompt plays first (none when empty); a digit keyed meanwhile stops it and counts.
        prompt = self.sound_samples(args[0]) if args[0] else 0
        if prompt is None:
            self.ch.reply("result=-1")  # ast_streamfile failed: at once, the channel lives on
            return
        self.ch.wanted_keys = ANY_KEY
        if args[0]:
            self.ch.playing(args[0])
        wake, digit = await self.ch.wait(prompt / SAMPLE_RATE, dtmf=True)
        if wake is Wake.TIMEOUT:  # the prompt played to its end: the digit timeout starts now
            wake, digit = await self.ch.wait(timeout, dtmf=True)
        while True:
            if wake is Wake.TIMEOUT:
                self.ch.reply(f"result={''.join(digits)} (timeout)")
                return
            if wake is Wake.HUNG_UP:
                self.ch.reply("result=-1")  # what was keyed is lost
                return
            if wake is Wake.INTERRUPTED:
                return  # aborted by the next command: no reply
            if digit == "#":
                break  # ends the entry, not returned
            digits.append(digit)
            if len(digits) >= max_digits:
                break
            wake, digit = await self.ch.wait(timeout, dtmf=True)
        self.ch.reply(f"result={''.join(digits)}")

    async def _say_digits(self, args: list[str]) -> None:
        if len(args) != 2:
            raise BadArguments
        text, escape = args
        self.ch.wanted_keys = escape
        self.ch.playing(f"digits:{text}")
        for _ in text:
            end = self.ch.now() + self.ch.options.say_digit_seconds
            while True:
                wake, digit = await self.ch.wait(end - self.ch.now(), dtmf=True)
                if wake is Wake.TIMEOUT:
                    break
                if wake is Wake.HUNG_UP:
                    self.ch.reply("result=-1")
                    return
                if wake is Wake.INTERRUPTED:
                    return
                if digit in escape:
                    self.ch.reply(f"result={ord(digit)}")
                    return
        self.ch.reply("result=0")

    async def _wait_for_digit(self, args: list[str]) -> None:
        if len(args) != 1 or not args[0].lstrip("-").isdigit():
            raise BadArguments
        timeout_ms = int(args[0])
        self.ch.wanted_keys = ANY_KEY
        wake, digit = await self.ch.wait(None if timeout_ms < 0 else timeout_ms / 1000, dtmf=True)
        if wake is Wake.DIGIT:
            self.ch.reply(f"result={ord(digit)}")
        elif wake is Wake.TIMEOUT:
            self.ch.reply("result=0")
        elif wake is Wake.HUNG_UP:
            self.ch.reply("result=-1")
        elif not self.ch.closed:
            # Aborted by the next command: recorded as `200 result=1`, the next reply ~40 ms later.
            self.ch.reply("result=1")
            await self.ch.wait(self.ch.options.notice_delay, dtmf=False, interruptible=False)
