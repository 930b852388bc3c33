"""The manager side of the Asterisk emulator: one AMI session as Asterisk 22.10.1 runs it (banner,
Challenge/Login, `Permission denied` before login, Ping, CoreStatus, CoreShowChannels, Status, Logoff,
Originate; docs/protocols/AMI.md). Calls themselves are the factory's (`ami_calls.CallEngine`)."""

from __future__ import annotations

import enum
import hashlib
import time
from typing import TYPE_CHECKING

from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Protocol
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

if TYPE_CHECKING:
    from idtronic_tel.simulators.asterisk_ami import AmiEmulatorFactory

SHUTTING_DOWN = "Asterisk is shutting down"
PRE_LOGIN = frozenset({"login", "challenge", "logoff"})


class SessionState(enum.Enum):
    UNAUTHENTICATED = "unauthenticated"
    REFUSING = "refusing"  # a failed login is answered 1 s later; input is ignored meanwhile
    AUTHENTICATED = "authenticated"
    CLOSED = "closed"


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
