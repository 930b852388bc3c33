"""The Asterisk side of a FastAGI session, as recorded from Asterisk 22.10.1 (docs/protocols/AGI.md).

    status = await run_agi_channel(reactor, "tcp:127.0.0.1:4573", env, Handset.scripted("w1|d12345678#"))

connects to a FastAGI server, writes the `agi_*` block in Asterisk's order, then answers commands one at
a time as Asterisk does, while a simulated handset keys DTMF and hangs up on its own timeline (the
`callee-seq` script of the recordings). Returns the AGISTATUS the dialplan would see:

* SUCCESS  the server closed the socket;
* FAILURE  connection refused, or a command failed on a live channel (STREAM FILE of a missing file);
* HANGUP   the channel hung up (the callee, or the HANGUP command).

Recorded behaviours reproduced: DTMF keyed while no command runs is discarded; a line written while a
command runs aborts it without a reply (WAIT FOR DIGIT replies `200 result=1`); after a hang-up only
GET VARIABLE & co. work, the rest gets 511; `HANGUP\\n` comes once, ~40 ms after the reply of the
interrupted command or at once when idle; usage text of a 520 reply comes ~40 ms after its first line;
`\\r\\n` is not accepted. Asterisk never closes the socket itself: neither does this emulator.

A prompt that does not exist (`EmulatorOptions.missing_prompts`, or an unknown name) is answered at once
with `200 result=-1` while the channel lives on: STREAM FILE as recorded (`endpos=0`, AGISTATUS becomes
FAILURE), GET DATA as res_agi.c/app.c do (plain `200 result=-1`; GET DATA with an empty prompt plays
nothing and only collects digits). CHANNEL STATUS answers the channel state (6: up), and, like every
command res_agi.c refuses on a dead channel, 511 after a hang-up.

`EmulatorOptions.speed` compresses time (prompts, timeouts, the handset's script) so tests run fast.
"""

from __future__ import annotations

import enum
import functools
import re
import time
import wave
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.endpoints import clientFromString, connectProtocol
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from idtronic_tel.ivr.agi_codec import encode_env, match_command, tokenize
from idtronic_tel.ivr.agi_protocol import Clock, DelayedCall, Transport
from idtronic_tel.simulators.handset import DIGIT_GAP_SECONDS, Answer, Handset, HangUp, Keys, Wait

log = Logger()

SAMPLE_RATE = 8000  # endpos is in 8 kHz samples
DTMF_TONE_SECONDS = 0.12  # SendDTMF(digits,250,120): a digit is received at the end of its tone

# Durations of the stock sounds used in the recordings (docs/protocols/BENCH-DIALPLAN.md), in samples,
# per language.
STOCK_SOUNDS: Mapping[str, Mapping[str, int]] = {
    "fr": {"agent-pass": 23840, "vm-enter-num-to-call": 19200, "demo-congrats": 233760, "beep": 3520},
    "en": {"agent-pass": 26400, "vm-enter-num-to-call": 19200, "demo-congrats": 242240, "beep": 3520},
}

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

REPLY_510 = b"510 Invalid or unknown command\n"
REPLY_511 = b"511 Command Not Permitted on a dead channel or intercept routine\n"
USAGE_FIRST = b"520-Invalid command syntax.  Proper usage follows:\n"
USAGE_LAST = b"520 End of proper usage.\n"


class SessionLeaked(Exception):
    """The FastAGI server kept the session open past EmulatorOptions.max_session_seconds."""


def wav_durations(directory: Path) -> dict[str, int]:
    """Sample counts (at 8 kHz) of the .wav prompts in a directory, by prompt name."""
    out: dict[str, int] = {}
    for path in sorted(directory.glob("*.wav")):
        with wave.open(str(path)) as w:
            out[path.stem] = round(w.getnframes() * SAMPLE_RATE / w.getframerate())
    return out


@functools.cache
def repo_sounds() -> Mapping[str, int]:
    """Durations of the daemon's own prompts when run from a checkout (sounds/fr/*.wav), else {}."""
    directory = Path(__file__).resolve().parents[2] / "sounds" / "fr"
    return wav_durations(directory) if directory.is_dir() else {}


@dataclass(frozen=True)
class EmulatorOptions:
    speed: float = 1.0  # 10.0 runs ten times faster than a real call
    sounds: Mapping[str, int] = field(default_factory=repo_sounds)  # prompts: name -> samples
    default_prompt_samples: int | None = 16000  # any other `idtronic-*` prompt (None: missing file)
    hold_seconds: float = 60.0  # callee-seq: the callee hangs up this long after its script
    say_digit_seconds: float = 0.57  # SAY DIGITS 1234 took 2.3 s in fr
    notice_delay: float = 0.04  # HANGUP after a reply, usage text after `520-`
    handset_delay: float = 0.15  # the callee's script starts this long after the AGI connection
    step_overhead: float = 0.1  # each later DTMF step of the callee-seq While loop starts this late
    variables: Mapping[str, str] = field(default_factory=dict)  # Originate variables (IDTRONIC_CALLBACK)
    max_session_seconds: float | None = None  # raise SessionLeaked if the server never closes
    missing_prompts: frozenset[str] = frozenset()  # sound files this Asterisk lacks


RecordLine = tuple[float, str, bytes]  # (emulated seconds, "AST>" or ">AST", raw line)


class Wake(enum.Enum):
    TIMEOUT = enum.auto()
    DIGIT = enum.auto()
    HUNG_UP = enum.auto()
    INTERRUPTED = enum.auto()  # a new command line arrived (pipelining) or the socket closed


@dataclass
class _Waiter:
    deferred: Deferred[tuple[Wake, str]]
    dtmf: bool
    interruptible: bool
    timer: DelayedCall | None


class BadArguments(Exception):
    pass


def default_env(
    script: str = "enroll",
    args: tuple[str, ...] = (),
    *,
    host: str = "127.0.0.1",
    port: int = 4573,
    language: str = "fr",
    channel: str = "Local/0611223344@callee-seq-00000000;1",
    uniqueid: str = "1795710490.0",
    callerid: str = "0600000000",
) -> dict[str, str]:
    """An env block like the recordings' (agi-fr context, priority 4)."""
    env = {
        "agi_network": "yes",
        "agi_network_script": script,
        "agi_request": f"agi://{host}:{port}/{script}",
        "agi_channel": channel,
        "agi_language": language,
        "agi_type": channel.split("/", 1)[0],
        "agi_uniqueid": uniqueid,
        "agi_version": "22.10.1",
        "agi_callerid": callerid,
        "agi_calleridname": "Enroll",
        "agi_callingpres": "0",
        "agi_callingani2": "0",
        "agi_callington": "0",
        "agi_callingtns": "0",
        "agi_dnid": "unknown",
        "agi_rdnis": "unknown",
        "agi_context": "agi-fr" if language == "fr" else "agi-en",
        "agi_extension": "s",
        "agi_priority": "4" if language == "fr" else "3",
        "agi_enhanced": "0.0",
        "agi_accountcode": "",
        "agi_threadid": "139731737990848",
    }
    env.update({f"agi_arg_{i}": a for i, a in enumerate(args, start=1)})
    return env


def first_run_handset(last8: str, welcome_seconds: float | None = None) -> Handset:
    """The demo's simulated cardholder: answers, lets the welcome prompt play to its end, then keys
    `last8` and `#` while the entry prompt plays."""
    if not re.fullmatch(r"\d{8}", last8):
        raise ValueError("the simulated handset needs exactly 8 digits")
    if welcome_seconds is None:
        welcome_seconds = repo_sounds().get("idtronic-welcome", 16000) / SAMPLE_RATE
    return Handset.scripted(f"w{welcome_seconds + 1.0:.2f}|d{last8}#")


async def run_agi_channel(
    reactor: Any,
    agi_endpoint: str,
    env: Mapping[str, str],
    handset: Handset,
    options: EmulatorOptions | None = None,
    record: list[RecordLine] | None = None,
) -> str:
    """Run one emulated AGI() dialplan application against a FastAGI server; returns AGISTATUS."""
    if handset.answer is not Answer.ANSWER:
        raise ValueError("only an answered call runs the AGI application")
    options = options or EmulatorOptions()
    full_env = default_env(**_env_hints(env))
    full_env.update(env)
    channel = EmulatedAgiChannel(reactor, full_env, handset, options, record)
    try:
        await connectProtocol(clientFromString(reactor, agi_endpoint), channel)
    except ConnectError:
        channel.stop()
        return "FAILURE"
    return await channel.status


def _env_hints(env: Mapping[str, str]) -> dict[str, Any]:
    hints: dict[str, Any] = {}
    if "agi_network_script" in env:
        hints["script"] = env["agi_network_script"]
    if "agi_language" in env:
        hints["language"] = env["agi_language"]
    return hints


@implementer(IHalfCloseableProtocol)
class EmulatedAgiChannel(LineOnlyReceiver):
    delimiter = b"\n"
    MAX_LENGTH = 65536

    def __init__(
        self,
        clock: Clock,
        env: Mapping[str, str],
        handset: Handset,
        options: EmulatorOptions,
        record: list[RecordLine] | None = None,
    ) -> None:
        self.clock = clock
        self.env = dict(env)
        self.handset = handset
        self.options = options
        self.record = record
        self.language = env.get("agi_language", "en")
        self.variables: dict[str, str] = {k.lstrip("_"): v for k, v in options.variables.items()}
        self.dead = False  # the channel hung up
        self.failed = False  # a command failed on a live channel: AGISTATUS=FAILURE
        self.notice_sent = False
        self.closed = False
        self.keyed: list[str] = []  # every digit the handset keyed (for tests)
        self.discarded: list[str] = []  # digits keyed while no command wanted them
        self.status: Deferred[str] = Deferred()
        self._t0 = clock.seconds()
        self._lines: deque[bytes] = deque()
        self._line_waiter: Deferred[bytes | None] | None = None
        self._waiter: _Waiter | None = None
        self._busy = False
        self._script: Deferred[None] | None = None
        self._serve: Deferred[None] | None = None
        self._leak_timer: DelayedCall | None = None
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

    # -- time ------------------------------------------------------------------------------------------

    def now(self) -> float:
        """Emulated seconds since the AGI connection."""
        return (self.clock.seconds() - self._t0) * self.options.speed

    def _later(self, seconds: float, fn: Callable[..., Any], *args: Any) -> DelayedCall:
        return self.clock.callLater(max(seconds, 0.0) / self.options.speed, fn, *args)

    def _sleep(self, seconds: float) -> Deferred[None]:
        d: Deferred[None] = Deferred(lambda _: timer.cancel())
        timer = self._later(seconds, d.callback, None)
        return d

    # -- the handset -----------------------------------------------------------------------------------

    def start_handset(self) -> None:
        self._script = Deferred.fromCoroutine(self._run_script())
        self._script.addErrback(lambda f: f.trap(CancelledError))

    async def _run_script(self) -> None:
        await self._sleep(self.options.handset_delay)
        for index, step in enumerate(self.handset.script):
            if isinstance(step, Wait):
                await self._sleep(step.seconds)
            elif isinstance(step, Keys):
                if index:
                    await self._sleep(self.options.step_overhead)
                for digit in step.digits:
                    await self._sleep(DTMF_TONE_SECONDS)
                    self._dtmf(digit)
                    await self._sleep(DIGIT_GAP_SECONDS)
            elif isinstance(step, HangUp):
                self._callee_hangup()
                return
        await self._sleep(self.options.hold_seconds)
        self._callee_hangup()

    def _dtmf(self, digit: str) -> None:
        self.keyed.append(digit)
        waiter = self._waiter
        if waiter is not None and waiter.dtmf:
            self._wake(Wake.DIGIT, digit)
        else:
            self.discarded.append(digit)

    def _callee_hangup(self) -> None:
        if self.dead:
            return
        self.dead = True
        if self._waiter is not None and self._waiter.dtmf:
            self._wake(Wake.HUNG_UP)  # the media command replies -1; the notice follows it
        elif not self._busy:
            self._send_notice()  # idle: unsolicited HANGUP at once

    # -- socket ----------------------------------------------------------------------------------------

    def connectionMade(self) -> None:
        self._t0 = self.clock.seconds()
        # Without TCP_NODELAY, Nagle + delayed ACK hold small writes (a HANGUP after a reply) ~40 ms:
        # the emulator adds its recorded delays itself.
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)
        self.start_handset()
        for line in encode_env(self.env).split(b"\n")[:-1]:
            self._write(line + b"\n")
        if self.options.max_session_seconds is not None:
            self._leak_timer = self._later(self.options.max_session_seconds, self._leaked)
        self._serve = Deferred.fromCoroutine(self._serve_commands())
        self._serve.addErrback(lambda f: f.trap(CancelledError))

    def lineReceived(self, line: bytes) -> None:
        self._log(">AST", line + b"\n")
        self._lines.append(line)
        if self._line_waiter is not None:
            waiter, self._line_waiter = self._line_waiter, None
            waiter.callback(self._lines.popleft())
        elif self._waiter is not None and self._waiter.interruptible:
            self._wake(Wake.INTERRUPTED)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._write(REPLY_510)  # Asterisk reads at most 2 KiB; the rest is junk to it

    def readConnectionLost(self) -> None:
        # The server half-closed: Asterisk writes one more HANGUP and closes its side at once.
        self._write(b"HANGUP\n")
        cast(Transport, self.transport).loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed = True
        # Let a running command and the command loop see the end first, then cancel what still sleeps.
        if self._line_waiter is not None:
            waiter, self._line_waiter = self._line_waiter, None
            waiter.callback(None)
        if self._waiter is not None:
            self._wake(Wake.INTERRUPTED)
        self.stop()
        if not self.status.called:
            self.status.callback("HANGUP" if self.dead else "FAILURE" if self.failed else "SUCCESS")

    def stop(self) -> None:
        """Stop the handset, the command loop and the timers (end of session or connection refused)."""
        for running in (self._script, self._serve):
            if running is not None and not running.called:
                running.cancel()
        if self._leak_timer is not None and self._leak_timer.active():
            self._leak_timer.cancel()

    def _leaked(self) -> None:
        self._leak_timer = None
        if not self.status.called:
            limit = self.options.max_session_seconds
            self.status.errback(SessionLeaked(f"the server kept the session open {limit}s"))
        cast(Any, self.transport).abortConnection()

    def _write(self, data: bytes) -> None:
        if self.closed or self.transport is None:
            return
        self._log("AST>", data)
        cast(Transport, self.transport).write(data)

    def _log(self, direction: str, data: bytes) -> None:
        if self.record is not None:
            self.record.append((round(self.now(), 3), direction, data))

    def _send_notice(self) -> None:
        if not self.notice_sent:
            self.notice_sent = True
            self._write(b"HANGUP\n")

    # -- command loop ----------------------------------------------------------------------------------

    def _next_line(self) -> Deferred[bytes | None]:
        if self._lines:
            return succeed(self._lines.popleft())
        if self.closed:
            return succeed(None)
        self._line_waiter = Deferred()
        return self._line_waiter

    async def _serve_commands(self) -> None:
        while True:
            line = await self._next_line()
            if line is None:
                return
            self._busy = True
            try:
                await self._execute(line)
            except CancelledError:
                raise  # the session ended (stop())
            except Exception:
                log.failure("Asterisk emulator: command failed")
            finally:
                self._busy = False
            if self.dead and not self.notice_sent and not self.closed:
                await self._sleep(self.options.notice_delay)
                self._send_notice()

    async def _execute(self, raw: bytes) -> None:
        words = [t.text for t in tokenize(raw.decode("utf-8", errors="replace"))]
        matched = match_command(words)
        if matched is None:
            self._write(REPLY_510)
            return
        name, args = matched
        if self.dead and name not in ALLOWED_WHEN_DEAD:
            self._write(REPLY_511)
            return
        try:
            await self._handlers[name](args)
        except BadArguments:
            await self._usage(name)

    async def _usage(self, name: str) -> None:
        self._write(USAGE_FIRST)
        await self._sleep(self.options.notice_delay)
        for line in USAGE.get(name, (f"Usage: {name.lower()} ...",)):
            self._write(line.encode() + b"\n")
        self._write(USAGE_LAST)

    def _reply(self, text: str) -> None:
        self._write(f"200 {text}\n".encode())

    def _wait(
        self, seconds: float | None, *, dtmf: bool, interruptible: bool = True
    ) -> Deferred[tuple[Wake, str]]:
        """Wait for a digit (if `dtmf`), a hang-up (media waits), a new command line, or the timeout."""
        d: Deferred[tuple[Wake, str]] = Deferred()
        timer = None if seconds is None else self._later(seconds, self._wake, Wake.TIMEOUT)
        self._waiter = _Waiter(d, dtmf, interruptible, timer)
        if self.closed or (interruptible and self._lines):
            self._wake(Wake.INTERRUPTED)
        elif dtmf and self.dead:
            self._wake(Wake.HUNG_UP)
        return d

    def _wake(self, wake: Wake, digit: str = "") -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is None:
            return
        if waiter.timer is not None and waiter.timer.active():
            waiter.timer.cancel()
        waiter.deferred.callback((wake, digit))

    # -- sounds ----------------------------------------------------------------------------------------

    def sound_samples(self, name: str) -> int | None:
        if name in self.options.missing_prompts:
            return None
        if name in self.options.sounds:
            return self.options.sounds[name]
        stock = STOCK_SOUNDS.get(self.language, STOCK_SOUNDS["en"])
        if name in stock:
            return stock[name]
        if name.startswith("idtronic-"):
            return self.options.default_prompt_samples
        return None

    # -- commands --------------------------------------------------------------------------------------

    async def _answer(self, args: list[str]) -> None:
        self._reply("result=0")

    async def _noop(self, args: list[str]) -> None:
        self._reply("result=0")

    async def _channel_status(self, args: list[str]) -> None:
        if len(args) > 1:
            raise BadArguments
        if args and args[0] != self.env.get("agi_channel"):
            self._reply("result=-1")  # no such channel
            return
        self._reply("result=6")  # AST_STATE_UP: a dead channel never gets here (511)

    async def _verbose(self, args: list[str]) -> None:
        if not args:
            raise BadArguments
        self._reply("result=1")

    async def _hangup(self, args: list[str]) -> None:
        self._reply("result=1")
        self.dead = True  # the notice follows after notice_delay (command loop)

    async def _set_variable(self, args: list[str]) -> None:
        if len(args) != 2:
            raise BadArguments
        self.variables[args[0].lstrip("_")] = args[1]
        self._reply("result=1")

    async def _get_variable(self, args: list[str]) -> None:
        if len(args) != 1:
            raise BadArguments
        value = self._lookup(args[0])
        self._reply("result=0" if value is None else f"result=1 ({value})")

    async def _get_full_variable(self, args: list[str]) -> None:
        if len(args) not in (1, 2):
            raise BadArguments
        expanded = re.sub(r"\$\{([^}]*)\}", lambda m: self._lookup(m[1]) or "", args[0])
        self._reply(f"result=1 ({expanded})")

    def _lookup(self, name: str) -> str | None:
        builtins = {
            "CHANNEL": self.env.get("agi_channel", ""),
            "UNIQUEID": self.env.get("agi_uniqueid", ""),
            "CALLERID(num)": self.env.get("agi_callerid", ""),
            "CALLERID(name)": self.env.get("agi_calleridname", ""),
            "CHANNEL(language)": self.language,
            "EPOCH": str(int(time.time())),
        }
        if name in self.variables:
            return self.variables[name]
        return builtins.get(name)

    async def _exec(self, args: list[str]) -> None:
        if not args:
            raise BadArguments
        app, app_args = args[0].lower(), (args[1] if len(args) > 1 else "")
        if app == "playback":
            samples = self.sound_samples(app_args.split(",")[0])
            if samples is None:
                self._reply("result=0")  # Playback warns but the application itself succeeds
                return
            await self._wait(samples / SAMPLE_RATE, dtmf=False, interruptible=False)
            self._reply("result=0")
        elif app in ("noop", "verbose", "log", "set"):
            self._reply("result=0")
        else:
            self._reply("result=-2")  # no such application

    async def _stream_file(self, args: list[str]) -> None:
        if len(args) not in (2, 3):
            raise BadArguments
        name, escape = args[0], args[1]
        length = self.sound_samples(name)
        if length is None:
            self.failed = True  # AGISTATUS becomes FAILURE although the channel lives on
            self._reply("result=-1 endpos=0")
            return
        offset = min(int(args[2]) if len(args) == 3 and args[2].isdigit() else 0, length)
        start = self.now()
        while True:
            remaining = (length - offset) / SAMPLE_RATE - (self.now() - start)
            wake, digit = await self._wait(remaining, dtmf=True)
            # Asterisk counts whole 20 ms frames (160 samples).
            position = min(length, offset + int((self.now() - start) * SAMPLE_RATE) // 160 * 160)
            if wake is Wake.TIMEOUT:
                self._reply(f"result=0 endpos={length}")
                return
            if wake is Wake.HUNG_UP:
                self._reply(f"result=-1 endpos={position}")
                return
            if wake is Wake.INTERRUPTED:
                return  # aborted by the next command: no reply
            if digit in escape:
                self._reply(f"result={ord(digit)} endpos={position}")
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
            self._reply("result=-1")  # ast_streamfile failed: at once, the channel lives on
            return
        wake, digit = await self._wait(prompt / SAMPLE_RATE, dtmf=True)
        if wake is Wake.TIMEOUT:  # the prompt played to its end: the digit timeout starts now
            wake, digit = await self._wait(timeout, dtmf=True)
        while True:
            if wake is Wake.TIMEOUT:
                self._reply(f"result={''.join(digits)} (timeout)")
                return
            if wake is Wake.HUNG_UP:
                self._reply("result=-1")  # what was keyed is lost
                return
            if wake is Wake.INTERRUPTED:
                return  # aborted by the next command: no reply
            if digit == "#":
                break  # ends the entry, not returned
            digits.append(digit)
            if len(digits) >= max_digits:
                break
            wake, digit = await self._wait(timeout, dtmf=True)
        self._reply(f"result={''.join(digits)}")

    async def _say_digits(self, args: list[str]) -> None:
        if len(args) != 2:
            raise BadArguments
        text, escape = args
        for _ in text:
            end = self.now() + self.options.say_digit_seconds
            while True:
                wake, digit = await self._wait(end - self.now(), dtmf=True)
                if wake is Wake.TIMEOUT:
                    break
                if wake is Wake.HUNG_UP:
                    self._reply("result=-1")
                    return
                if wake is Wake.INTERRUPTED:
                    return
                if digit in escape:
                    self._reply(f"result={ord(digit)}")
                    return
        self._reply("result=0")

    async def _wait_for_digit(self, args: list[str]) -> None:
        if len(args) != 1 or not args[0].lstrip("-").isdigit():
            raise BadArguments
        timeout_ms = int(args[0])
        wake, digit = await self._wait(None if timeout_ms < 0 else timeout_ms / 1000, dtmf=True)
        if wake is Wake.DIGIT:
            self._reply(f"result={ord(digit)}")
        elif wake is Wake.TIMEOUT:
            self._reply("result=0")
        elif wake is Wake.HUNG_UP:
            self._reply("result=-1")
        elif not self.closed:
            # Aborted by the next command: recorded as `200 result=1`, the next reply ~40 ms later.
            self._reply("result=1")
            await self._wait(self.options.notice_delay, dtmf=False, interruptible=False)
