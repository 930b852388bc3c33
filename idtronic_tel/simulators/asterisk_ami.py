"""AMI side of the Asterisk emulator: enough of Asterisk 22.10.1's manager to run the daemon without a PBX.

Reproduces the recorded behaviour (docs/protocols/AMI.md and ORIGINATE-OUTCOMES.md, tests/recorded/ami-*.txt):
banner, Challenge/Login (MD5 key or plain secret; a refusal comes 1.0 s later, then the socket closes),
`Permission denied` before login, Ping/Pong, CoreStatus, CoreShowChannels/Status, unknown actions, Logoff,
and `Originate`. An Async Originate is answered `Originate successfully queued` at once; then ONE
`OriginateResponse` is sent to every logged-in session with the `call` class, plus Newchannel / Dial /
Newstate / Hangup events with the recorded causes. Who answers is decided by the simulated handset that
`HandsetDirectory.take(number)` returns (number = the Channel between `/` and `@`).

The modules: `ami_session` (one manager session and its actions), `ami_calls` (calls, their channels
and events; an answered call runs the daemon's FastAGI script through `asterisk_agi.run_agi_channel`,
injectable for tests), `ami_channels` (what a call is made of); this one holds them together.

Test/demo controls: `kick_all()` (manager kick session: plain EOF, calls go on), `restart_gracefully()`
(`core restart gracefully`: new actions refused, calls finish, `Event: Shutdown`, EOF), `kill()` (SIGKILL
and instant restart: EOF, calls vanish without any OriginateResponse), `inject()` (raw bytes, e.g. garbage).

Simplifications: the session is not blocked during a synchronous Originate; non-Local technologies that
are "loaded" (PJSIP by default) are named and behave like Local channels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.service import IService
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ServerFactory

from idtronic_tel.ivr.ami_codec import Message
from idtronic_tel.simulators.ami_calls import CallEngine
from idtronic_tel.simulators.ami_channels import AgiRunner
from idtronic_tel.simulators.ami_session import AmiServerProtocol
from idtronic_tel.simulators.handset import HandsetDirectory
from idtronic_tel.simulators.listening import ListeningService


def _default_reactor() -> Any:
    from twisted.internet import reactor

    return reactor


class AmiEmulatorFactory(CallEngine, ServerFactory):
    """The emulated Asterisk: sessions, calls and test controls. Usable directly with `listenTCP`."""

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
        super().__init__(
            reactor=reactor if reactor is not None else _default_reactor(),
            handsets=handsets if handsets is not None else HandsetDirectory(),
            agi_endpoint=agi_endpoint,
            agi_script=agi_script,
            language=language,
            agi_runner=agi_runner,
            answered_hold=answered_hold,
            loaded_technologies=loaded_technologies,
            seed=seed,
        )
        self.username = username
        self.secret = secret
        self.auth_failure_delay = auth_failure_delay
        # A 9-digit number, as recorded; injectable so tests can replay a recorded MD5 login.
        self.make_challenge = challenge or (lambda: str(self.random.randrange(100_000_000, 1_000_000_000)))
        self.sessions: set[AmiServerProtocol] = set()
        self.actions: list[Message] = []  # every message received (for tests)
        self.originates: list[Message] = []  # every Originate received (for tests)
        self.logins = 0
        self.login_failures = 0
        self.shutting_down = False
        self._shutdown_done: list[Deferred[None]] = []
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

    def _call_removed(self) -> None:
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
        self.drop_calls()
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
    return ListeningService(reactor, listen, factory, factory.kill, "asterisk-emulator")
