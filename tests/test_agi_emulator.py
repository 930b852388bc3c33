"""The Asterisk FastAGI emulator replayed against the real recordings.

A replay server writes each recorded command (>AST) once its recorded time has come and Asterisk's
earlier lines have arrived, then closes (or half-closes) as the recording's test server did. What the
emulator answers must equal the recorded AST> lines byte for byte (endpos within the timing tolerance),
at about the recorded times, and the AGISTATUS must be the one the .ami.txt companion shows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

from idtronic_tel.ivr.agi_codec import EnvParser, LineSplitter
from idtronic_tel.simulators.agi_options import EmulatorOptions
from idtronic_tel.simulators.asterisk_agi import first_run_handset, run_agi_channel
from idtronic_tel.simulators.handset import Handset
from tests import transcripts

SPEED = 10.0
# Emulated seconds: the recording dialplan itself varies by up to 0.35 s (hang-ups), plus 200 ms of real
# scheduling slack: the replay runs on wall-clock time and a loaded 2-core machine (CI beside other jobs)
# was seen to slip 100 ms, i.e. one emulated second at SPEED.
TOLERANCE = 0.35 + 0.2 * SPEED


@dataclass
class Case:
    script: str
    status: str
    variables: dict[str, str] = field(default_factory=dict)
    pause_reading: float = 0.0


CASES = {
    "agi-full-enroll-fr.txt": Case("w6.5|d12345678#|w6|d5", "HANGUP"),
    "agi-stream-file-dtmf.txt": Case("w2|d7|w3|d1|w1.5|d#", "SUCCESS"),
    "agi-getdata-variants.txt": Case("w1|d42#|w2.2|d987#|w3.8|d12", "SUCCESS"),
    "agi-invalid-commands.txt": Case("w60", "FAILURE"),
    "agi-pipelined-commands.txt": Case("w60", "SUCCESS"),
    "agi-close-after-env.txt": Case("w60", "SUCCESS"),
    "agi-hangup-during-stream-file.txt": Case("w2|h", "HANGUP"),
    "agi-hangup-during-get-data.txt": Case("w1.5|d12|w1|h", "HANGUP"),
    "agi-hangup-while-idle.txt": Case("w1.5|h", "HANGUP"),
    "agi-originate-variables.txt": Case(
        "w60",
        "HANGUP",
        {
            "__CALLEE_SCRIPT": "w60",
            "AGI_SCENARIO": "originate-variables",
            "IDTRONIC_CALLBACK": "abc123",
            "GREETING": "hello world",
            "VAR_A": "1",
            "VAR_B": "2",
        },
    ),
    "agi-slow-env-reader.txt": Case("w0.5|d9|w60", "SUCCESS", pause_reading=2.0),
}

_CLOSE = re.compile(r"^\s*(\d+\.\d+) --- test server (closes the socket|half-closes)")


def close_plan(name: str) -> tuple[float, int, bool]:
    """(time, AST> lines received before it, half_close) of the recording's close."""
    seen = 0
    for line in transcripts.path(name).read_text().splitlines():
        m = _CLOSE.match(line)
        if m:
            return float(m[1]), seen, m[2] == "half-closes"
        seen += re.match(r"^\s*\d+\.\d+ AST> ", line) is not None
    raise AssertionError(f"no close in {name}")


@implementer(IHalfCloseableProtocol)
class ReplayServer(Protocol):
    def __init__(self, name: str, pause: float) -> None:
        lines = transcripts.load(name)
        self.commands: list[tuple[float, int, bytes]] = []  # (time, AST> lines seen before, data)
        seen = 0
        for ln in lines:
            if ln.direction == "in":
                seen += 1
            else:
                self.commands.append((ln.t, seen, ln.data))
        self.close_at: float | None
        self.close_at, self.close_needed, self.half_close = close_plan(name)
        self.pause = pause
        self.received: list[tuple[float, bytes]] = []
        self.splitter = LineSplitter(max_line=100_000)
        self.done: Deferred[None] = Deferred()
        self.timers: list[Any] = []

    def now(self) -> float:
        return (reactor.seconds() - self.t0) * SPEED

    def connectionMade(self) -> None:
        self.t0 = reactor.seconds()
        if self.pause:
            self.transport.pauseProducing()
            self.timers.append(reactor.callLater(self.pause / SPEED, self.transport.resumeProducing))
        self._tick()

    def dataReceived(self, data: bytes) -> None:
        for line in self.splitter.feed(data):
            self.received.append((self.now(), line + b"\n"))
        self._tick()

    def _tick(self) -> None:
        while self.commands:
            t, needed, data = self.commands[0]
            if len(self.received) < needed:
                return
            if self.now() < t:
                self._schedule(t)
                return
            self.commands.pop(0)
            self.transport.write(data)
        if self.close_at is not None and len(self.received) >= self.close_needed:
            if self.now() < self.close_at:
                self._schedule(self.close_at)
                return
            self.close_at = None
            if self.half_close:
                self.transport.loseWriteConnection()
            else:
                self.transport.loseConnection()

    def _schedule(self, t: float) -> None:
        for timer in self.timers:
            if timer.active():
                timer.cancel()
        self.timers = [reactor.callLater(max(t - self.now(), 0) / SPEED + 0.0005, self._tick)]

    def readConnectionLost(self) -> None:
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: object = None) -> None:
        for timer in self.timers:
            if timer.active():
                timer.cancel()
        if not self.done.called:
            self.done.callback(None)


async def listen(protocol: Protocol) -> tuple[Any, str]:
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        Factory.forProtocol(lambda: protocol)
    )
    return port, f"tcp:127.0.0.1:{port.getHost().port}"


def recorded_env(name: str) -> dict[str, str]:
    parser = EnvParser()
    for ln in transcripts.load(name):
        if ln.direction == "in":
            env = parser.feed_line(ln.data[:-1])
            if env is not None:
                return dict(env.values)
    raise AssertionError("no env")


_ENDPOS = re.compile(rb"endpos=(\d+)")


def same_line(got: bytes, want: bytes) -> bool:
    """Equal, except endpos that depends on timing (within TOLERANCE)."""
    if _ENDPOS.sub(b"endpos=N", got) != _ENDPOS.sub(b"endpos=N", want):
        return False
    g, w = _ENDPOS.search(got), _ENDPOS.search(want)
    if g is None or w is None:
        return True
    return abs(int(g[1]) - int(w[1])) <= TOLERANCE * 8000 or g[1] == b"0" == w[1]


@pytest.mark.parametrize("name", sorted(CASES))
@pytest_twisted.ensureDeferred
async def test_emulator_reproduces_recording(name: str) -> None:
    case = CASES[name]
    server = ReplayServer(name, case.pause_reading)
    port, endpoint = await listen(server)
    try:
        options = EmulatorOptions(speed=SPEED, variables=case.variables, max_session_seconds=60)
        status = await run_agi_channel(
            reactor, endpoint, recorded_env(name), Handset.scripted(case.script), options
        )
        await server.done
    finally:
        await port.stopListening()
    want = [(ln.t, ln.data) for ln in transcripts.load(name) if ln.direction == "in"]
    got = server.received
    assert len(got) == len(want), [d for _, d in got]
    for (gt, gd), (wt, wd) in zip(got, want, strict=True):
        assert same_line(gd, wd), (gd, wd)
        assert abs(gt - wt) <= TOLERANCE, (gd, gt, wt)
    assert status == case.status


@pytest_twisted.ensureDeferred
async def test_connection_refused_is_failure() -> None:
    port, endpoint = await listen(Protocol())
    await port.stopListening()
    status = await run_agi_channel(
        reactor, endpoint, {}, Handset.scripted("w1"), EmulatorOptions(speed=SPEED)
    )
    assert status == "FAILURE"


@pytest_twisted.ensureDeferred
async def test_server_that_never_closes_is_reported() -> None:
    from idtronic_tel.simulators.agi_options import SessionLeaked

    server = Protocol()
    port, endpoint = await listen(server)
    try:
        with pytest.raises(SessionLeaked):
            await run_agi_channel(
                reactor,
                endpoint,
                {},
                Handset.scripted("w1|h"),
                EmulatorOptions(speed=SPEED, max_session_seconds=5),
            )
    finally:
        await port.stopListening()


def test_first_run_handset() -> None:
    handset = first_run_handset("12345678", welcome_seconds=3.9)
    assert [type(s).__name__ for s in handset.script] == ["Wait", "Keys"]
    assert handset.script[1].digits == "12345678#"  # type: ignore[union-attr]
    with pytest.raises(ValueError):
        first_run_handset("1234")


# -- what the recordings do not show, emulated from res_agi.c / app.c --------------------------------------


async def scripted_session(handler: Any, script: str, **options: Any) -> tuple[str, list[bytes]]:
    """Our AgiSession as the server, driven by `handler`; returns AGISTATUS and Asterisk's lines."""
    from idtronic_tel.ivr.agi_protocol import AgiSession

    record: list[tuple[float, str, bytes]] = []
    factory = Factory.forProtocol(lambda: AgiSession(handler, reactor, command_timeout=30.0))  # type: ignore[arg-type]
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    try:
        status = await run_agi_channel(
            reactor,
            f"tcp:127.0.0.1:{port.getHost().port}",
            {},
            Handset.scripted(script),
            EmulatorOptions(**{"speed": SPEED, "max_session_seconds": 60, **options}),
            record,
        )
    finally:
        await port.stopListening()
    lines = [data for _, direction, data in record if direction == "AST>"]
    return status, lines[lines.index(b"\n") + 1 :]  # after the environment block


@pytest_twisted.ensureDeferred
async def test_missing_prompt_answers_at_once_and_the_channel_lives_on() -> None:
    from idtronic_tel.ivr.agi_protocol import AgiSession, PromptMissing

    seen: list[object] = []

    async def handler(session: AgiSession) -> None:
        await session.answer()
        for play in (
            lambda: session.stream_file("idtronic-welcome", "0123456789"),
            lambda: session.get_data("idtronic-welcome", 3000, 8),
        ):
            try:
                await play()
            except PromptMissing as exc:
                seen.append(exc.prompt)
        seen.append(await session.channel_up())

    status, replies = await scripted_session(handler, "w60", missing_prompts=frozenset({"idtronic-welcome"}))
    assert seen == ["idtronic-welcome", "idtronic-welcome", True]
    assert replies == [
        b"200 result=0\n",
        b"200 result=-1 endpos=0\n",  # STREAM FILE, as agi-invalid-commands.txt
        b"200 result=6\n",  # CHANNEL STATUS: up
        b"200 result=-1\n",  # GET DATA: ast_streamfile failed
        b"200 result=6\n",
        b"200 result=6\n",
        b"HANGUP\n",  # the server closed
    ]
    assert status == "FAILURE"  # the failed STREAM FILE, as recorded


@pytest_twisted.ensureDeferred
async def test_channel_status_after_a_hangup_and_get_data_without_prompt() -> None:
    from idtronic_tel.ivr.agi_protocol import AgiSession, ChannelHungUp

    seen: list[object] = []

    async def handler(session: AgiSession) -> None:
        await session.answer()
        digit = await session.stream_file("demo-congrats", "0123456789")  # keyed over: barge-in
        entry = await session.get_data("", 3000, 3)  # no prompt: the next digits at once
        seen.extend([digit, entry.digits])
        try:
            await session.stream_file("demo-congrats", "#")  # the callee hangs up meanwhile
        except ChannelHungUp:
            seen.append("hung up")
        seen.append(await session.channel_up())

    # Slower time: a digit keyed between two commands is dropped (as by Asterisk), 0.37 s of call apart.
    status, replies = await scripted_session(handler, "w1|d4992|w1|h", speed=2.0)
    assert seen == ["4", "992", "hung up", False]
    assert replies[1].startswith(b"200 result=52 endpos=")  # the welcome stopped by the 4
    assert replies[2] == b"200 result=992\n"
    assert replies[3].startswith(b"200 result=-1 endpos=")
    assert replies[4:] == [
        b"HANGUP\n",  # sent before the answer to the probe
        b"511 Command Not Permitted on a dead channel or intercept routine\n",  # CHANNEL STATUS
        b"HANGUP\n",  # the server closed
    ]
    assert status == "HANGUP"
