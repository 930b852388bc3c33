"""The emulated Asterisk channel of one FastAGI session: the socket (env block, one command at a time,
pipelining, half-close), the simulated handset keying DTMF and hanging up on its own timeline, the
`HANGUP` notice, and the emulated clock (`EmulatorOptions.speed`). The commands themselves are
`agi_commands.AgiCommands`."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from idtronic_tel.ivr.agi_codec import encode_env
from idtronic_tel.ivr.agi_protocol import Clock, DelayedCall, Transport
from idtronic_tel.simulators.agi_commands import REPLY_510, AgiCommands, Wake
from idtronic_tel.simulators.agi_options import EmulatorOptions, RecordLine, SessionLeaked
from idtronic_tel.simulators.handset import DIGIT_GAP_SECONDS, Handset, HangUp, Keys, Wait

log = Logger()

DTMF_TONE_SECONDS = 0.12  # SendDTMF(digits,250,120): a digit is received at the end of its tone


@dataclass
class _Waiter:
    deferred: Deferred[tuple[Wake, str]]
    dtmf: bool
    interruptible: bool
    timer: DelayedCall | None


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
        self.wanted_keys = ""  # the digits the running command acts on (a person sees whether to key)
        self._script: Deferred[None] | None = None
        self._serve: Deferred[None] | None = None
        self._leak_timer: DelayedCall | None = None
        self.commands = AgiCommands(self)

    # -- time ------------------------------------------------------------------------------------------

    def now(self) -> float:
        """Emulated seconds since the AGI connection."""
        return (self.clock.seconds() - self._t0) * self.options.speed

    def _later(self, seconds: float, fn: Callable[..., Any], *args: Any) -> DelayedCall:
        return self.clock.callLater(max(seconds, 0.0) / self.options.speed, fn, *args)

    def sleep(self, seconds: float) -> Deferred[None]:
        d: Deferred[None] = Deferred(lambda _: timer.cancel())
        timer = self._later(seconds, d.callback, None)
        return d

    # -- the handset -----------------------------------------------------------------------------------

    def start_handset(self) -> None:
        if self.handset.live is not None:
            self.handset.live.connected(self)  # a person keys and hangs up: no script
            return
        self._script = Deferred.fromCoroutine(self._run_script())
        self._script.addErrback(lambda f: f.trap(CancelledError))

    async def _run_script(self) -> None:
        await self.sleep(self.options.handset_delay)
        for index, step in enumerate(self.handset.script):
            if isinstance(step, Wait):
                await self.sleep(step.seconds)
            elif isinstance(step, Keys):
                if index:
                    await self.sleep(self.options.step_overhead)
                for digit in step.digits:
                    await self.sleep(DTMF_TONE_SECONDS)
                    self._dtmf(digit)
                    await self.sleep(DIGIT_GAP_SECONDS)
            elif isinstance(step, HangUp):
                self._callee_hangup()
                return
        await self.sleep(self.options.hold_seconds)
        self._callee_hangup()

    # -- a person at the handset (Keypad) -------------------------------------------------------------

    @property
    def listening(self) -> bool:
        return not self.dead and bool(self.wanted_keys) and self._waiter is not None and self._waiter.dtmf

    def press(self, digit: str) -> None:
        if not self.dead and not self.closed:
            self._dtmf(digit)

    def hang_up(self) -> None:
        self._callee_hangup()

    def playing(self, what: str) -> None:
        if self.handset.live is not None:
            self.handset.live.heard(what)

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
            self.write(line + b"\n")
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
        self.write(REPLY_510)  # Asterisk reads at most 2 KiB; the rest is junk to it

    def readConnectionLost(self) -> None:
        # The server half-closed: Asterisk writes one more HANGUP and closes its side at once.
        self.write(b"HANGUP\n")
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

    def write(self, data: bytes) -> None:
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
            self.write(b"HANGUP\n")

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
                await self.commands.execute(line)
            except CancelledError:
                raise  # the session ended (stop())
            except Exception:
                log.failure("Asterisk emulator: command failed")
            finally:
                self._busy = False
                self.wanted_keys = ""
            if self.dead and not self.notice_sent and not self.closed:
                await self.sleep(self.options.notice_delay)
                self._send_notice()

    def reply(self, text: str) -> None:
        self.write(f"200 {text}\n".encode())

    def wait(
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
