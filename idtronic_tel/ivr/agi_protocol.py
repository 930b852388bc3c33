"""One FastAGI session over Twisted: a thin line receiver around agi_codec, with an async command API.

    reply = await session.command("GET DATA", "idtronic-enter-last8", "10000", "8")

One command at a time: a line written while STREAM FILE or GET DATA runs makes real Asterisk abort that
command without replying (docs/protocols/AGI.md, pipelining), so a second concurrent call is a
programming error here.
Every command has a timeout (`command_timeout`); after a timeout the session is unusable (a late reply
could be paired with the next command), so it is closed.

The channel hang-up is reported by a `HANGUP` line (after a reply or while idle) or by `511`: the running
or next command raises ChannelHungUp. A media command answered `200 result=-1` is either a hang-up or a
prompt Asterisk could not play (missing sound file: the answer comes at once and the channel lives on);
the session asks the channel (`CHANNEL STATUS`, refused with 511 after the `HANGUP` line on a dead
channel) and raises ChannelHungUp or PromptMissing. The session never logs command arguments nor reply
values: they carry card digits and tokens.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from twisted.internet.defer import Deferred
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure

from idtronic_tel.ivr.agi_codec import (
    MAX_LINE,
    AgiEnv,
    AgiProtocolError,
    Arg,
    DeadChannel,
    EnvParser,
    HangupNotice,
    InvalidCommand,
    Provisional,
    Quoted,
    Reply,
    ReplyEvent,
    ReplyParser,
    UsageError,
    encode_command,
)

log = Logger()


class AgiError(Exception):
    """Base of session errors. Messages name the command (`GET DATA`), never its arguments or reply."""


class ChannelHungUp(AgiError):
    """The caller is gone (HANGUP line, 511, or a media command returned -1 after a hang-up)."""


class AgiCommandTimeout(AgiError):
    pass


class AgiConnectionLost(AgiError):
    pass


class AgiCommandRejected(AgiError):
    """510 (unknown command) or 520 (bad arguments): a bug on our side."""

    def __init__(self, command: str, code: int) -> None:
        super().__init__(f"{command}: Asterisk answered {code}")
        self.command = command
        self.code = code


class AgiSessionError(AgiError):
    """The peer broke the protocol; the session is closed."""


class PromptMissing(AgiError):
    """Asterisk answered a media command with -1 while the channel is still up: it could not play the
    prompt (the sound file is missing on the Asterisk server). `prompt` names the file, never digits."""

    def __init__(self, command: str, prompt: str) -> None:
        super().__init__(f"{command}: Asterisk could not play {prompt}")
        self.prompt = prompt


# SAY DIGITS plays digits/0..9 of the channel's language: the name reported when one of them is missing.
DIGIT_SOUNDS = "digits/<0-9>"


# Commands Asterisk still runs on a dead channel (res_agi.c `dead` flag); the others get 511.
_ALLOWED_WHEN_DEAD = frozenset(
    {"EXEC", "GET FULL VARIABLE", "GET VARIABLE", "NOOP", "SET VARIABLE", "VERBOSE"}
)

# Structural types for what we use of the reactor and transport: Twisted's zope interfaces do not type-check
# under plain mypy (no mypy-zope plugin in this repo).


class DelayedCall(Protocol):
    def active(self) -> bool: ...
    def cancel(self) -> None: ...


class Clock(Protocol):
    def seconds(self) -> float: ...
    def callLater(self, delay: float, fn: Callable[..., Any], /, *args: Any, **kw: Any) -> DelayedCall: ...


class Transport(Protocol):
    def write(self, data: bytes) -> None: ...
    def loseConnection(self) -> None: ...


Handler = Callable[["AgiSession"], Awaitable[None]]
TurnaroundObserver = Callable[[str, float], None]


@dataclass(frozen=True, slots=True)
class DtmfEntry:
    """What GET DATA collected. `digits` may be partial or empty (timeout); never logged."""

    digits: str = field(repr=False)
    timed_out: bool = False


class AgiSession(LineOnlyReceiver):
    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE

    def __init__(
        self,
        handler: Handler,
        clock: Clock,
        command_timeout: float,
        env_timeout: float | None = None,
        on_turnaround: TurnaroundObserver | None = None,
    ) -> None:
        self._handler = handler
        self._clock = clock
        self.command_timeout = command_timeout
        self._env_timeout = command_timeout if env_timeout is None else env_timeout
        self._on_turnaround = on_turnaround
        self._env_parser: EnvParser | None = EnvParser()
        self._replies = ReplyParser()
        self.env: AgiEnv | None = None
        self.hung_up = False  # HANGUP line or 511 seen: only _ALLOWED_WHEN_DEAD commands are sent
        self.closed = False
        self._broken: AgiError | None = None  # the session cannot be used any more
        self._pending: Deferred[Reply] | None = None
        self._pending_name = ""
        self._pending_since = 0.0
        self._timer: DelayedCall | None = None
        self.finished: Deferred[None] = Deferred()  # fires once the connection is gone

    # -- Twisted side ----------------------------------------------------------------------------------

    def connectionMade(self) -> None:
        # One small command per round trip: never let Nagle hold one back behind an unacked write.
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)
        self._timer = self._clock.callLater(self._env_timeout, self._env_timed_out)

    def lineReceived(self, line: bytes) -> None:
        if self._broken is not None:
            return
        if self._env_parser is not None:
            self._env_line(line)
            return
        event = self._replies.feed_line(line)
        if event is not None:
            self._dispatch(event)

    def lineLengthExceeded(self, line: bytes) -> None:
        log.warn("FastAGI peer sent a line longer than {max} bytes; closing", max=self.MAX_LENGTH)
        self._abort(AgiSessionError("line too long"))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed = True
        self._cancel_timer()
        if self._broken is None:
            self._broken = AgiConnectionLost("connection lost")
        self._fail_pending(self._broken)
        if not self.finished.called:
            self.finished.callback(None)

    # -- command API -----------------------------------------------------------------------------------

    async def command(self, name: str, *args: Arg) -> Reply:
        """Send one command and wait for its `200` reply.

        Raises ChannelHungUp, AgiCommandTimeout, AgiCommandRejected, AgiConnectionLost, AgiSessionError.
        """
        if self._pending is not None:
            raise RuntimeError("an AGI command is already in flight")  # pipelining aborts on Asterisk
        if self._broken is not None:
            raise type(self._broken)(*self._broken.args)  # a fresh instance: no shared traceback
        key = name.upper()
        if self.hung_up and key not in _ALLOWED_WHEN_DEAD:
            raise ChannelHungUp(f"{key}: channel hung up")  # Asterisk would answer 511
        data = encode_command(name, *args)
        pending: Deferred[Reply] = Deferred()
        self._pending, self._pending_name = pending, key
        self._pending_since = self._clock.seconds()
        self._timer = self._clock.callLater(self.command_timeout, self._command_timed_out)
        cast(Transport, self.transport).write(data)
        return await pending

    def close(self) -> None:
        """End the session. Asterisk never closes on its own: without this the channel leaks."""
        if not self.closed and self.transport is not None:
            cast(Transport, self.transport).loseConnection()

    # -- the commands the call flows use -------------------------------------------------------------

    async def answer(self) -> None:
        reply = await self.command("ANSWER")
        if reply.result == "-1":
            raise ChannelHungUp("ANSWER: -1")

    async def stream_file(self, name: str, escape_digits: str = "") -> str:
        """Play a prompt; returns the escape digit that stopped it, or "".

        Raises PromptMissing when Asterisk could not play it on a live channel."""
        reply = await self.command("STREAM FILE", name, Quoted(escape_digits))
        if reply.result == "-1":
            raise await self._media_failed("STREAM FILE", name)
        code = reply.result_int()
        return chr(code) if code else ""

    async def get_data(self, prompt: str, timeout_ms: int, max_digits: int) -> DtmfEntry:
        """Play `prompt` (none when "") and collect up to `max_digits` digits, `#` ending the entry."""
        reply = await self.command("GET DATA", prompt, str(timeout_ms), str(max_digits))
        if reply.result == "-1":
            raise await self._media_failed("GET DATA", prompt)  # keyed digits are lost either way
        return DtmfEntry(digits=reply.result, timed_out=reply.timed_out)

    async def say_digits(self, digits: str) -> None:
        reply = await self.command("SAY DIGITS", digits, Quoted(""))
        if reply.result == "-1":
            raise await self._media_failed("SAY DIGITS", DIGIT_SOUNDS)

    async def channel_up(self) -> bool:
        """Whether the channel still lives. CHANNEL STATUS is refused on a dead channel: after a hang-up
        Asterisk sends its `HANGUP` line, then answers 511 (res_agi.c runs it on live channels only)."""
        try:
            reply = await self.command("CHANNEL STATUS")
        except ChannelHungUp:
            return False
        return not self.hung_up and reply.result != "-1"

    async def _media_failed(self, command: str, prompt: str) -> AgiError:
        """A media command answered -1: the caller hung up, or Asterisk could not play the prompt (it
        answers at once and the channel lives on). Only the channel can tell."""
        if prompt and not self.hung_up and await self.channel_up():
            return PromptMissing(command, prompt)
        return ChannelHungUp(f"{command}: -1")

    async def get_variable(self, name: str) -> str | None:
        reply = await self.command("GET VARIABLE", name)
        return reply.data if reply.result == "1" else None

    async def hangup(self) -> None:
        await self.command("HANGUP")
        self.hung_up = True  # the HANGUP line follows; nothing but GET VARIABLE & co. works now

    # -- internals -------------------------------------------------------------------------------------

    def _env_line(self, line: bytes) -> None:
        assert self._env_parser is not None
        try:
            env = self._env_parser.feed_line(line)
        except AgiProtocolError as exc:
            log.warn("Bad FastAGI environment block ({reason}); closing", reason=str(exc))
            self._abort(AgiSessionError(str(exc)))
            return
        if env is None:
            return
        self._env_parser = None
        self._cancel_timer()
        self.env = env
        Deferred.fromCoroutine(self._run_handler())

    async def _run_handler(self) -> None:
        try:
            await self._handler(self)
        except Exception:
            log.failure("FastAGI handler failed")
        finally:
            self.close()

    def _dispatch(self, event: ReplyEvent) -> None:
        if isinstance(event, HangupNotice):
            # The reply to a command in flight (511 or a real one) still comes: keep waiting for it.
            self.hung_up = True
            return
        if isinstance(event, Provisional):
            return  # the real reply follows; the timeout keeps running
        if self._pending is None:
            # A reply to no command: the pairing is lost, nothing after it can be trusted.
            log.warn("Unsolicited FastAGI reply ({kind}); closing", kind=type(event).__name__)
            self._abort(AgiSessionError("unsolicited reply"))
            return
        name = self._pending_name
        if isinstance(event, Reply):
            self._resolve(event)
        elif isinstance(event, DeadChannel):
            self.hung_up = True
            self._fail_pending(ChannelHungUp(f"{name}: 511 dead channel"))
        elif isinstance(event, InvalidCommand):
            self._fail_pending(AgiCommandRejected(name, 510))
        elif isinstance(event, UsageError):
            self._fail_pending(AgiCommandRejected(name, 520))
        else:
            log.warn(
                "Malformed FastAGI reply to {command} ({length} bytes); closing",
                command=name,
                length=event.length,
            )
            self._abort(AgiSessionError(f"{name}: malformed reply"))

    def _resolve(self, reply: Reply) -> None:
        pending, self._pending = self._pending, None
        self._cancel_timer()
        if self._on_turnaround is not None:
            self._on_turnaround(self._pending_name, self._clock.seconds() - self._pending_since)
        assert pending is not None
        pending.callback(reply)

    def _fail_pending(self, error: AgiError) -> None:
        pending, self._pending = self._pending, None
        self._cancel_timer()
        if pending is not None:
            pending.errback(Failure(error))

    def _abort(self, error: AgiError) -> None:
        """The session is unusable: fail what waits, refuse what comes, drop the connection."""
        if self._broken is None:
            self._broken = error
        self._fail_pending(error)
        self._cancel_timer()
        self.close()

    def _command_timed_out(self) -> None:
        self._timer = None
        log.warn(
            "FastAGI {command} got no reply within {timeout}s; closing",
            command=self._pending_name,
            timeout=self.command_timeout,
        )
        self._abort(AgiCommandTimeout(f"{self._pending_name}: no reply within {self.command_timeout}s"))

    def _env_timed_out(self) -> None:
        self._timer = None
        log.warn("No FastAGI environment block within {timeout}s; closing", timeout=self._env_timeout)
        self._abort(AgiSessionError("no environment block"))

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
