"""AMI side of the Asterisk emulator: enough of Asterisk 22.10.1's manager to run the daemon without a PBX.

Reproduces the recorded behaviour (docs/protocols/AMI.md and ORIGINATE-OUTCOMES.md, tests/recorded/ami-*.txt):
banner, Challenge/Login (MD5 key or plain secret; a refusal comes 1.0 s later, then the socket closes),
`Permission denied` before login, Ping/Pong, CoreStatus, CoreShowChannels/Status, unknown actions, Logoff,
and `Originate`. An Async Originate is answered `Originate successfully queued` at once; then ONE
`OriginateResponse` is sent to every logged-in session with the `call` class, plus Newchannel / Dial /
Newstate / Hangup events with the recorded causes. Who answers is decided by the simulated handset that
`HandsetDirectory.take(number)` returns (number = the Channel between `/` and `@`).

When the handset answers, the call runs the daemon's FastAGI script through
`idtronic_tel.simulators.asterisk_agi.run_agi_channel` (imported lazily; injectable for tests).

Test/demo controls: `kick_all()` (manager kick session: plain EOF, calls go on), `restart_gracefully()`
(`core restart gracefully`: new actions refused, calls finish, `Event: Shutdown`, EOF), `kill()` (SIGKILL
and instant restart: EOF, calls vanish without any OriginateResponse), `inject()` (raw bytes, e.g. garbage).

Simplifications: the session is not blocked during a synchronous Originate; non-Local technologies that
are "loaded" (PJSIP by default) are named and behave like Local channels.
"""

from __future__ import annotations

import enum
import hashlib
import itertools
import random
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from twisted.application.service import IService, Service
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IDelayedCall, IListeningPort, IReactorTime, IStreamServerEndpoint
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.logger import Logger
from twisted.python.failure import Failure

from idtronic_tel.ivr.ami_codec import (
    AmiDecoder,
    AmiProtocolError,
    BadLine,
    Message,
    encode_banner,
    encode_message,
)
from idtronic_tel.simulators.asterisk_agi import default_env, run_agi_channel
from idtronic_tel.simulators.handset import Answer, Handset, HandsetDirectory

AgiRunner = Callable[[Any, str, dict[str, str], Handset], Coroutine[Any, Any, str]]

SHUTTING_DOWN = "Asterisk is shutting down"
PRE_LOGIN = frozenset({"login", "challenge", "logoff"})

# OriginateResponse Reason values (Asterisk's AST_CONTROL_* codes), see docs/protocols/ORIGINATE-OUTCOMES.md.
REASON_HANGUP, REASON_NO_ANSWER, REASON_ANSWERED, REASON_BUSY, REASON_CONGESTION = 0, 3, 4, 5, 8
CAUSE_TEXT = {
    0: "Unknown",
    16: "Normal Clearing",
    17: "User busy",
    19: "User alerting, no answer",
    21: "Call Rejected",
    34: "Circuit/channel congestion",
}
STATE_DESC = {0: "Down", 4: "Ring", 5: "Ringing", 6: "Up", 7: "Busy"}


def _default_reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def parse_caller_id(value: str | None) -> tuple[str, str]:
    """`"Enroll" <0600000000>` -> ("0600000000", "Enroll"); missing parts are `<unknown>`."""
    if not value:
        return "<unknown>", "<unknown>"
    value = value.strip()
    if "<" in value and value.endswith(">"):
        name, _, num = value[:-1].partition("<")
        name = name.strip().strip('"') or "<unknown>"
        return num.strip() or "<unknown>", name
    return value, "<unknown>"


def parse_variables(values: list[str]) -> dict[str, str]:
    """`Variable:` headers; one header may carry several comma-separated assignments."""
    out: dict[str, str] = {}
    for header in values:
        for assignment in header.split(","):
            name, sep, val = assignment.partition("=")
            if sep:
                out[name.strip().lstrip("_")] = val
    return out


def agi_request_url(agi_endpoint: str, script: str) -> str:
    """`tcp:127.0.0.1:4573` (or `127.0.0.1:4573`, or an agi:// URL) -> agi://127.0.0.1:4573/<script>."""
    if agi_endpoint.startswith("agi://"):
        return agi_endpoint
    parts = [p for p in agi_endpoint.split(":") if "=" not in p]
    if parts and parts[0] in ("tcp", "tcp4", "tcp6"):
        parts = parts[1:]
    hostport = ":".join(parts[-2:]) if len(parts) >= 2 else ":".join(parts)
    return f"agi://{hostport}/{script}"


class SessionState(enum.Enum):
    UNAUTHENTICATED = "unauthenticated"
    REFUSING = "refusing"  # a failed login is answered 1 s later; input is ignored meanwhile
    AUTHENTICATED = "authenticated"
    CLOSED = "closed"


@dataclass
class Channel:
    name: str
    uniqueid: str
    linkedid: str
    context: str
    exten: str
    state: int
    priority: int = 1
    caller: tuple[str, str] = ("<unknown>", "<unknown>")
    connected: tuple[str, str] = ("<unknown>", "<unknown>")
    application: str = ""
    application_data: str = ""
    created: float = 0.0

    def headers(self, prefix: str = "") -> list[tuple[str, str]]:
        p = prefix
        return [
            (f"{p}Channel", self.name),
            (f"{p}ChannelState", str(self.state)),
            (f"{p}ChannelStateDesc", STATE_DESC.get(self.state, "Unknown")),
            (f"{p}CallerIDNum", self.caller[0]),
            (f"{p}CallerIDName", self.caller[1]),
            (f"{p}ConnectedLineNum", self.connected[0]),
            (f"{p}ConnectedLineName", self.connected[1]),
            (f"{p}Language", "en"),
            (f"{p}AccountCode", ""),
            (f"{p}Context", self.context),
            (f"{p}Exten", self.exten),
            (f"{p}Priority", str(self.priority)),
            (f"{p}Uniqueid", self.uniqueid),
            (f"{p}Linkedid", self.linkedid),
        ]


@dataclass(eq=False)
class Call:
    action_id: str | None
    dial_string: str
    number: str
    context: str  # where ;1 goes after the answer
    exten: str
    priority: str
    timeout_ms: int
    caller: tuple[str, str]
    variables: dict[str, str]
    handset: Handset
    one: Channel | None = None
    two: Channel | None = None
    sync_reply: Callable[[bool], None] | None = None  # Async: false
    timers: list[IDelayedCall] = field(default_factory=list)
    agi: Deferred[str] | None = None
    answered: bool = False
    agi_status: str | None = None


class AmiServerProtocol(Protocol):
    log = Logger()

    def __init__(self, factory: AmiEmulatorFactory) -> None:
        self.factory = factory
        self.state = SessionState.UNAUTHENTICATED
        self.decoder = AmiDecoder(expect_banner=False)
        self.event_classes: frozenset[str] | None = frozenset()  # None: all ("on")
        self.challenge: str | None = None
        self.username: str | None = None
        self._refusal: IDelayedCall | None = None

    def connectionMade(self) -> None:
        self.factory.sessions.add(self)
        assert self.transport is not None
        self.transport.write(encode_banner())

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.state = SessionState.CLOSED
        self.factory.sessions.discard(self)
        if self._refusal is not None and self._refusal.active():
            self._refusal.cancel()

    def dataReceived(self, data: bytes) -> None:
        try:
            items = self.decoder.receive_data(data)
        except AmiProtocolError:
            self.drop()
            return
        for item in items:
            if self.state in (SessionState.REFUSING, SessionState.CLOSED):
                return
            if isinstance(item, Message):
                self.factory.actions.append(item)
                self.handle(item)
            elif isinstance(item, BadLine):
                self.log.debug("emulator: line without ':' ignored")

    # -- output ------------------------------------------------------------------------------------------

    def write(self, pairs: list[tuple[str, str]]) -> None:
        if self.transport is not None and self.state is not SessionState.CLOSED:
            self.transport.write(encode_message(pairs))

    def respond(self, request: Message, response: str, *rest: tuple[str, str]) -> None:
        pairs = [("Response", response)]
        if request.action_id is not None:
            pairs.append(("ActionID", request.action_id))
        pairs.extend(rest)
        self.write(pairs)

    def error(self, request: Message, message: str) -> None:
        self.respond(request, "Error", ("Message", message))

    def wants(self, event_class: str) -> bool:
        if self.state is not SessionState.AUTHENTICATED:
            return False
        return self.event_classes is None or event_class in self.event_classes

    def drop(self) -> None:
        """Close like Asterisk does (EOF, no message)."""
        if self.transport is not None:
            self.transport.loseConnection()

    # -- actions -----------------------------------------------------------------------------------------

    def handle(self, msg: Message) -> None:
        action = (msg.action or "").strip()
        if not action:
            self.error(msg, "Missing action in request")
            return
        name = action.lower()
        if self.factory.shutting_down:
            self.error(msg, SHUTTING_DOWN)
            return
        if self.state is not SessionState.AUTHENTICATED and name not in PRE_LOGIN:
            self.error(msg, "Permission denied")
            return
        handler = getattr(self, f"action_{name}", None)
        if handler is None:
            self.error(
                msg,
                f"Invalid/unknown command: {action}. Use Action: ListCommands to show available commands.",
            )
            return
        handler(msg)

    def action_challenge(self, msg: Message) -> None:
        if (msg.get("AuthType") or "").lower() != "md5":
            self.error(msg, "Must specify AuthType")
            return
        if self.challenge is None:
            self.challenge = self.factory.make_challenge()
        self.respond(msg, "Success", ("Challenge", self.challenge))

    def action_login(self, msg: Message) -> None:
        if self.state is SessionState.AUTHENTICATED:
            self.respond(msg, "Success", ("Message", "Already authenticated"))
            return
        username = msg.get("Username") or ""
        f = self.factory
        ok = username == f.username
        if ok and (msg.get("AuthType") or "").lower() == "md5":
            expected = hashlib.md5(
                ((self.challenge or "") + f.secret).encode(), usedforsecurity=False
            ).hexdigest()
            ok = self.challenge is not None and (msg.get("Key") or "").lower() == expected
        elif ok:
            ok = msg.get("Secret") == f.secret
        if not ok:
            f.login_failures += 1
            self.state = SessionState.REFUSING
            self._refusal = f.clock.callLater(f.auth_failure_delay, self._refuse, msg)
            f._notify("login_failure")
            return
        self.state = SessionState.AUTHENTICATED
        self.username = username
        self.event_classes = _event_filter(msg.get("Events"))
        f.logins += 1
        self.respond(msg, "Success", ("Message", "Authentication accepted"))
        if self.wants("system"):
            uptime = str(int(f.clock.seconds() - f.started_at))
            self.write(
                [
                    ("Event", "FullyBooted"),
                    ("Privilege", "system,all"),
                    ("Uptime", uptime),
                    ("LastReload", uptime),
                    ("Status", "Fully Booted"),
                ]
            )
        if self.wants("security"):
            self.write(self._successful_auth(username, md5=self.challenge is not None))
        f._notify("login")

    def _successful_auth(self, username: str, *, md5: bool) -> list[tuple[str, str]]:
        tv = _event_tv(self.factory.clock.seconds())
        local = remote = "IPV4/TCP/127.0.0.1/0"
        if self.transport is not None:
            h, p = self.transport.getHost(), self.transport.getPeer()
            local = f"IPV4/TCP/{getattr(h, 'host', '127.0.0.1')}/{getattr(h, 'port', 0)}"
            remote = f"IPV4/TCP/{getattr(p, 'host', '127.0.0.1')}/{getattr(p, 'port', 0)}"
        return [
            ("Event", "SuccessfulAuth"),
            ("Privilege", "security,all"),
            ("EventTV", tv),
            ("Severity", "Informational"),
            ("Service", "AMI"),
            ("EventVersion", "1"),
            ("AccountID", username),
            ("SessionID", f"0x{id(self):x}"),
            ("LocalAddress", local),
            ("RemoteAddress", remote),
            ("UsingPassword", "0" if md5 else "1"),
            ("SessionTV", tv),
        ]

    def _refuse(self, msg: Message) -> None:
        self._refusal = None
        self.error(msg, "Authentication failed")
        self.drop()

    def action_logoff(self, msg: Message) -> None:
        self.respond(msg, "Goodbye", ("Message", "Thanks for all the fish."))
        self.drop()

    def action_ping(self, msg: Message) -> None:
        self.respond(msg, "Success", ("Ping", "Pong"), ("Timestamp", f"{self.factory.clock.seconds():.6f}"))

    def action_corestatus(self, msg: Message) -> None:
        f = self.factory
        self.respond(
            msg,
            "Success",
            ("CoreStartupDate", "2026-11-26"),
            ("CoreStartupTime", "16:28:08"),
            ("CoreReloadDate", "2026-11-26"),
            ("CoreReloadTime", "16:28:08"),
            ("CoreCurrentCalls", str(len(f.calls))),
            ("CoreProcessedCalls", str(f.processed_calls)),
        )

    def action_coreshowchannels(self, msg: Message) -> None:
        channels = self.factory.channels()
        self.respond(msg, "Success", ("EventList", "start"), ("Message", "Channels will follow"))
        aid = [("ActionID", msg.action_id)] if msg.action_id is not None else []
        now = self.factory.clock.seconds()
        for ch in channels:
            secs = int(now - ch.created)
            self.write(
                [
                    ("Event", "CoreShowChannel"),
                    *aid,
                    *ch.headers(),
                    ("Application", ch.application),
                    ("ApplicationData", ch.application_data),
                    ("Duration", f"{secs // 3600:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}"),
                    ("BridgeId", ""),
                ]
            )
        self.write(
            [
                ("Event", "CoreShowChannelsComplete"),
                *aid,
                ("EventList", "Complete"),
                ("ListItems", str(len(channels))),
            ]
        )

    def action_status(self, msg: Message) -> None:
        channels = self.factory.channels()
        self.respond(msg, "Success", ("EventList", "start"), ("Message", "Channel status will follow"))
        aid = [("ActionID", msg.action_id)] if msg.action_id is not None else []
        now = self.factory.clock.seconds()
        for ch in channels:
            # As recorded: Privilege "Call" and the ActionID LAST in Status events.
            self.write(
                [
                    ("Event", "Status"),
                    ("Privilege", "Call"),
                    *ch.headers(),
                    ("Type", "Local"),
                    ("DNID", ""),
                    ("Application", ch.application),
                    ("Data", ch.application_data),
                    ("Seconds", str(int(now - ch.created))),
                    *aid,
                ]
            )
        self.write(
            [
                ("Event", "StatusComplete"),
                *aid,
                ("EventList", "Complete"),
                ("ListItems", str(len(channels))),
                ("Items", str(len(channels))),
            ]
        )

    def action_originate(self, msg: Message) -> None:
        channel = msg.get("Channel")
        if not channel:
            self.error(msg, "Channel not specified")
            return
        if not msg.get("Exten") and not msg.get("Application"):
            self.error(msg, "Exten not specified")  # (the emulator does not run applications)
            return
        try:
            timeout_ms = int(msg.get("Timeout") or "30000")
        except ValueError:
            self.error(msg, "Invalid timeout")
            return
        asynchronous = (msg.get("Async") or "").lower() in ("true", "yes", "1", "on", "y", "t")
        f = self.factory
        f.originates.append(msg)
        f._notify("originate")
        if asynchronous:
            self.respond(msg, "Success", ("Message", "Originate successfully queued"))
            f.start_call(msg, timeout_ms, None)
        else:

            def reply(ok: bool) -> None:
                if ok:
                    self.respond(msg, "Success", ("Message", "Originate successfully queued"))
                else:
                    self.error(msg, "Originate failed")

            f.start_call(msg, timeout_ms, reply)


def _event_tv(seconds: float) -> str:
    frac = int((seconds % 1) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{frac:03d}+0000"


def _event_filter(value: str | None) -> frozenset[str] | None:
    if value is None:
        return None
    v = value.strip().lower()
    if v in ("on", "yes", "true", "all"):
        return None
    if v in ("off", "no", "false", ""):
        return frozenset()
    return frozenset(c.strip() for c in v.split(",") if c.strip())


class AmiEmulatorFactory(ServerFactory):
    """The emulated Asterisk: sessions, calls and test controls. Usable directly with `listenTCP`."""

    log = Logger()

    def __init__(
        self,
        *,
        username: str,
        secret: str,
        handsets: HandsetDirectory | None = None,
        agi_endpoint: str | None = None,
        agi_script: str = "enroll",
        language: str = "fr",
        reactor: Any = None,
        agi_runner: AgiRunner | None = None,
        auth_failure_delay: float = 1.0,
        answered_hold: float = 0.0,
        loaded_technologies: tuple[str, ...] = ("Local", "PJSIP"),
        seed: int | None = None,
        challenge: Callable[[], str] | None = None,
    ) -> None:
        self.reactor = reactor if reactor is not None else _default_reactor()
        self.clock: IReactorTime = self.reactor
        self.username = username
        self.secret = secret
        self.handsets = handsets if handsets is not None else HandsetDirectory()
        self.agi_endpoint = agi_endpoint
        self.agi_script = agi_script
        self.language = language
        self.agi_runner = agi_runner
        self.auth_failure_delay = auth_failure_delay
        self.answered_hold = answered_hold  # without FastAGI: how long an answered call stays up
        self.loaded_technologies = {t.lower() for t in loaded_technologies}
        self.random = random.Random(seed)
        # A 9-digit number, as recorded; injectable so tests can replay a recorded MD5 login.
        self.make_challenge = challenge or (lambda: str(self.random.randrange(100_000_000, 1_000_000_000)))
        self.started_at = self.clock.seconds()
        self.sessions: set[AmiServerProtocol] = set()
        self.calls: list[Call] = []
        self.actions: list[Message] = []  # every message received (for tests)
        self.originates: list[Message] = []  # every Originate received (for tests)
        self.outcomes: list[tuple[str | None, str, int]] = []  # (ActionID, Response, Reason) sent
        self.logins = 0
        self.login_failures = 0
        self.processed_calls = 0
        self.shutting_down = False
        self._shutdown_done: list[Deferred[None]] = []
        self._chan_seq = itertools.count(0x70)
        self._uid_seq = itertools.count(1)
        self._waiters: list[tuple[str, int, Deferred[int]]] = []

    def buildProtocol(self, addr: Any) -> AmiServerProtocol:
        return AmiServerProtocol(self)

    # -- test synchronisation ----------------------------------------------------------------------------

    def _count(self, what: str) -> int:
        return {
            "login": self.logins,
            "login_failure": self.login_failures,
            "originate": len(self.originates),
            "outcome": len(self.outcomes),
        }[what]

    def when(self, what: str, count: int) -> Deferred[int]:
        """Fires once `what` ("login", "login_failure", "originate", "outcome") reached `count`."""
        d: Deferred[int] = Deferred()
        if self._count(what) >= count:
            d.callback(self._count(what))
        else:
            self._waiters.append((what, count, d))
        return d

    def _notify(self, what: str) -> None:
        n = self._count(what)
        ready = [w for w in self._waiters if w[0] == what and n >= w[1]]
        self._waiters = [w for w in self._waiters if w not in ready]
        for _, _, d in ready:
            if not d.called:
                d.callback(n)

    # -- events ------------------------------------------------------------------------------------------

    def broadcast(self, pairs: list[tuple[str, str]], event_class: str = "call") -> None:
        for session in list(self.sessions):
            if session.wants(event_class):
                session.write(pairs)

    def _channel_event(self, name: str, ch: Channel, *extra: tuple[str, str]) -> None:
        self.broadcast([("Event", name), ("Privilege", "call,all"), *ch.headers(), *extra])

    def channels(self) -> list[Channel]:
        out: list[Channel] = []
        for call in self.calls:
            out.extend(c for c in (call.two, call.one) if c is not None)
        return out

    # -- calls -------------------------------------------------------------------------------------------

    def _uniqueid(self) -> str:
        return f"{int(self.started_at)}.{next(self._uid_seq)}"

    def start_call(self, msg: Message, timeout_ms: int, sync_reply: Callable[[bool], None] | None) -> None:
        dial = msg.get("Channel") or ""
        tech, _, rest = dial.partition("/")
        number, _, callee_ctx = rest.partition("@")
        call = Call(
            action_id=msg.action_id,
            dial_string=dial,
            number=number,
            context=msg.get("Context") or "",
            exten=msg.get("Exten") or "",
            priority=msg.get("Priority") or "1",
            timeout_ms=timeout_ms,
            caller=parse_caller_id(msg.get("CallerID")),
            variables=parse_variables(msg.get_all("Variable")),
            handset=self.handsets.take(number),
            sync_reply=sync_reply,
        )
        if tech.lower() not in self.loaded_technologies or not number:
            # No channel is created at all: only the failure (ami-originate-bad-channel-tech.txt).
            self.clock.callLater(0, self._finish, call, "Failure", REASON_HANGUP)
            return
        self.calls.append(call)
        seq = next(self._chan_seq)
        base = f"{dial}-{seq:08x}"
        channel_id = msg.get("ChannelId")
        uid1 = channel_id or self._uniqueid()
        uid2 = f"{channel_id};2" if channel_id else self._uniqueid()
        now = self.clock.seconds()
        call.one = Channel(
            f"{base};1",
            uid1,
            uid1,
            callee_ctx,
            number,
            0,
            caller=call.caller,
            connected=call.caller,
            application="AppDial2",
            application_data="(Outgoing Line)",
            created=now,
        )
        call.two = Channel(
            f"{base};2",
            uid2,
            uid1,
            callee_ctx,
            number,
            4,
            caller=call.caller,
            connected=call.caller,
            application="Wait",
            created=now,
        )
        self._channel_event("Newchannel", call.one)
        self._channel_event("Newchannel", call.two)
        self._dial_event("DialBegin", call, ("DialString", rest))
        h = call.handset
        ring = max(0.0, h.ring_seconds)
        timeout = timeout_ms / 1000.0
        if h.answer is Answer.NO_ANSWER or (h.answer is Answer.ANSWER and ring >= timeout):
            self._ringing(call)
            self._later(call, timeout, self._no_answer, call)
        elif h.answer is Answer.ANSWER:
            if ring > 0:
                self._ringing(call)
            self._later(call, ring, self._answer, call)
        else:
            self._later(call, min(ring, timeout), self._reject, call, h.answer)

    def _later(self, call: Call, delay: float, fn: Callable[..., None], *args: Any) -> None:
        call.timers.append(self.clock.callLater(delay, fn, *args))

    def _dial_event(self, name: str, call: Call, *extra: tuple[str, str]) -> None:
        assert call.one is not None
        self.broadcast([("Event", name), ("Privilege", "call,all"), *call.one.headers("Dest"), *extra])

    def _set_state(self, ch: Channel, state: int) -> None:
        ch.state = state
        self._channel_event("Newstate", ch)

    def _ringing(self, call: Call) -> None:
        assert call.one is not None
        self._set_state(call.one, 5)
        self._dial_event("DialState", call, ("DialStatus", "RINGING"))

    def _hangup(self, ch: Channel | None, cause: int) -> None:
        if ch is not None:
            text = CAUSE_TEXT.get(cause, "Unknown")
            self._channel_event("Hangup", ch, ("Cause", str(cause)), ("Cause-txt", text))

    def _answer(self, call: Call) -> None:
        assert call.one is not None and call.two is not None
        call.answered = True
        self._set_state(call.two, 6)
        self._set_state(call.one, 6)
        self._dial_event("DialEnd", call, ("DialStatus", "ANSWER"))
        self._outcome(call, "Success", REASON_ANSWERED)
        # ;1 now runs the caller context: Answer() then AGI() at priority 2.
        call.one.context, call.one.exten, call.one.priority = call.context, call.exten, 2
        call.one.application, call.one.application_data = "AGI", f"agi://.../{self.script_for(call)}"
        if self.agi_endpoint is None:
            self._later(call, self.answered_hold, self._end, call, 16, 16)
            return
        runner = self.agi_runner or run_agi_channel
        env = self.agi_env(call)
        call.agi = ensureDeferred(runner(self.reactor, self.agi_endpoint, env, call.handset))

        def done(status: str) -> None:
            call.agi = None
            call.agi_status = status
            self._end(call, 16, 16)

        def failed(f: Failure) -> None:
            call.agi = None
            if f.check(CancelledError):
                return  # kill(): the call vanished
            self.log.failure("emulator: FastAGI session failed", f)
            call.agi_status = "FAILURE"
            self._end(call, 16, 16)

        call.agi.addCallbacks(done, failed)

    def script_for(self, call: Call) -> str:
        """As dialplan/extensions_idtronic.conf routes it: the voice fallback runs `voice-token`."""
        if call.variables.get("IDTRONIC_KIND") == "voice_token":
            return "voice-token"
        return self.agi_script

    def agi_env(self, call: Call) -> dict[str, str]:
        """The FastAGI environment Asterisk sends (agi-*.txt), for the ;1 channel."""
        assert call.one is not None
        assert self.agi_endpoint is not None
        script = self.script_for(call)
        host, _, port = (
            agi_request_url(self.agi_endpoint, script)[len("agi://") :].partition("/")[0].rpartition(":")
        )
        env = default_env(
            script,
            (call.variables.get("IDTRONIC_CALLBACK", ""),),
            host=host,
            port=int(port),
            language=self.language,
            channel=call.one.name,
            uniqueid=call.one.uniqueid,
            callerid=call.caller[0],
        )
        env.update(
            agi_calleridname=call.caller[1],
            agi_context=call.context,
            agi_extension=call.exten,
            agi_priority="2",
            agi_threadid=str(140000000000000 + self.random.randrange(1_000_000_000)),
        )
        return env

    def _no_answer(self, call: Call) -> None:
        self._hangup(call.two, 19)
        self._hangup(call.one, 19)
        self._finish(call, "Failure", REASON_NO_ANSWER)

    def _reject(self, call: Call, answer: Answer) -> None:
        if answer is Answer.BUSY:
            self._dial_event("DialEnd", call, ("DialStatus", "BUSY"))
            self._hangup(call.two, 17)
            self._outcome(call, "Failure", REASON_BUSY)
            self._hangup(call.one, 0)
        elif answer is Answer.CONGESTION:
            assert call.two is not None
            self._set_state(call.two, 7)
            self._dial_event("DialEnd", call, ("DialStatus", "CONGESTION"))
            self._hangup(call.two, 34)
            self._hangup(call.one, 0)
            self._outcome(call, "Failure", REASON_CONGESTION)
        else:  # REJECT: Hangup(21)
            self._hangup(call.two, 21)
            self._dial_event("DialEnd", call, ("DialStatus", "NOANSWER"))
            self._outcome(call, "Failure", REASON_HANGUP)
            self._hangup(call.one, 21)
        self._remove(call)

    def _finish(self, call: Call, response: str, reason: int) -> None:
        self._outcome(call, response, reason)
        self._remove(call)

    def _end(self, call: Call, cause_one: int, cause_two: int) -> None:
        """An answered call ends (AGI finished or hold time over): both halves hang up."""
        if call not in self.calls:
            return
        self._hangup(call.one, cause_one)
        self._hangup(call.two, cause_two)
        self._remove(call)

    def _outcome(self, call: Call, response: str, reason: int) -> None:
        self.outcomes.append((call.action_id, response, reason))
        if call.sync_reply is not None:
            call.sync_reply(response == "Success")  # Async: false: no OriginateResponse event
        else:
            success = response == "Success" and call.one is not None
            pairs = [("Event", "OriginateResponse"), ("Privilege", "call,all")]
            if call.action_id is not None:
                pairs.append(("ActionID", call.action_id))
            pairs += [
                ("Response", response),
                ("Channel", call.one.name if success and call.one else call.dial_string),
                ("Context", call.context),
                ("Exten", call.exten),
                ("Reason", str(reason)),
                ("Uniqueid", call.one.uniqueid if success and call.one else "<unknown>"),
                ("CallerIDNum", call.caller[0]),
                ("CallerIDName", call.caller[1]),
            ]
            self.broadcast(pairs)
        self._notify("outcome")

    def _remove(self, call: Call) -> None:
        for t in call.timers:
            if t.active():
                t.cancel()
        call.timers.clear()
        if call in self.calls:
            self.calls.remove(call)
            self.processed_calls += 1
        if self.shutting_down and not self.calls:
            self.clock.callLater(0, self._complete_shutdown)

    # -- controls ----------------------------------------------------------------------------------------

    def kick_all(self) -> int:
        """`manager kick session` on every session: EOF without a message; calls continue."""
        sessions = list(self.sessions)
        for s in sessions:
            s.drop()
        return len(sessions)

    def inject(self, data: bytes) -> None:
        """Write raw bytes to every session (garbage, partial lines...)."""
        for s in list(self.sessions):
            if s.transport is not None:
                s.transport.write(data)

    def kill(self) -> None:
        """SIGKILL, then an instant restart: sessions get EOF, calls vanish with no OriginateResponse."""
        for call in list(self.calls):
            for t in call.timers:
                if t.active():
                    t.cancel()
            if call.agi is not None and not call.agi.called:
                call.agi.cancel()
        self.calls.clear()
        for s in list(self.sessions):
            if s.transport is not None:
                s.transport.abortConnection()  # type: ignore[attr-defined]
        self.shutting_down = False
        self.started_at = self.clock.seconds()

    def restart_gracefully(self) -> Deferred[None]:
        """`core restart gracefully`: refuse new actions, let calls finish, Shutdown event, EOF, restart."""
        d: Deferred[None] = Deferred()
        self._shutdown_done.append(d)
        if not self.shutting_down:
            self.shutting_down = True
            if not self.calls:
                self.clock.callLater(0, self._complete_shutdown)
        return d

    def _complete_shutdown(self) -> None:
        if not self.shutting_down or self.calls:
            return
        self.broadcast(
            [
                ("Event", "Shutdown"),
                ("Privilege", "system,all"),
                ("Shutdown", "Cleanly"),
                ("Restart", "True"),
            ],
            "system",
        )
        for s in list(self.sessions):
            s.drop()
        self.shutting_down = False
        self.started_at = self.clock.seconds()
        done, self._shutdown_done = self._shutdown_done, []
        for d in done:
            d.callback(None)


class AmiEmulatorService(Service):
    """Listens on an endpoint string; `when_listening()` gives the port (useful with `tcp:0`)."""

    def __init__(self, endpoint: IStreamServerEndpoint, factory: AmiEmulatorFactory) -> None:
        self.endpoint = endpoint
        self.factory = factory
        self.port: IListeningPort | None = None
        self._listening: Deferred[IListeningPort] | None = None
        self._waiters: list[Deferred[IListeningPort]] = []

    def startService(self) -> None:
        super().startService()
        self._listening = self.endpoint.listen(self.factory)

        def listening(port: IListeningPort) -> IListeningPort:
            self.port = port
            waiters, self._waiters = self._waiters, []
            for w in waiters:
                w.callback(port)
            return port

        self._listening.addCallback(listening)

    def when_listening(self) -> Deferred[IListeningPort]:
        d: Deferred[IListeningPort] = Deferred()
        if self.port is not None:
            d.callback(self.port)
        else:
            self._waiters.append(d)
        return d

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        self.factory.kill()
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
        return None


def makeService(
    listen: str,
    username: str,
    secret: str,
    agi_endpoint: str | None,
    handsets: HandsetDirectory,
    *,
    reactor: Any = None,
    **options: Any,
) -> IService:
    """The emulator as a service: `listen` is a server endpoint string (`tcp:0:interface=127.0.0.1`)."""
    reactor = reactor if reactor is not None else _default_reactor()
    factory = AmiEmulatorFactory(
        username=username,
        secret=secret,
        handsets=handsets,
        agi_endpoint=agi_endpoint,
        reactor=reactor,
        **options,
    )
    return AmiEmulatorService(serverFromString(reactor, listen), factory)
