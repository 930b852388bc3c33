"""The FastAGI server and the Asterisk emulator on real loopback sockets."""

from __future__ import annotations

import io
import json
import random
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, serverFromString
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher
from zope.interface import provider

from idtronic_tel.config_schema import AgiConfig, CallbackConfig, VoiceFallbackConfig
from idtronic_tel.core.ports import CallKind
from idtronic_tel.ivr.agi_server import AgiServerFactory, make_agi_service, with_backlog
from idtronic_tel.ivr.call_flows import FlowSettings
from idtronic_tel.simulators.agi_options import EmulatorOptions, RecordLine, wav_durations
from idtronic_tel.simulators.asterisk_agi import default_env, first_run_handset, run_agi_channel
from idtronic_tel.simulators.handset import Handset
from tests.fakes_ivr import FakeIvrGateway

SOUNDS = Path(__file__).resolve().parent.parent / "sounds" / "fr"
SPEED = 20.0
GOOD = "49927398"  # distinctive digit strings, searched for in every log event and command
WRONG = "73155807"


def options(**kw: Any) -> EmulatorOptions:
    sounds = wav_durations(SOUNDS) if SOUNDS.is_dir() else {}
    return EmulatorOptions(**{"speed": SPEED, "sounds": sounds, "max_session_seconds": 600, **kw})


class LogCapture:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def text(self) -> str:
        parts = []
        for event in self.events:
            parts.append(formatEvent(event) or "")
            parts.extend(repr(v) for k, v in event.items() if k != "log_logger")
            if "log_failure" in event:
                parts.append(event["log_failure"].getTraceback())
        return "\n".join(parts)

    def failures(self) -> list[dict[str, Any]]:
        return [e for e in self.events if "log_failure" in e]


@pytest.fixture
def logs() -> Iterator[LogCapture]:
    capture = LogCapture()

    @provider(ILogObserver)
    def observer(event: dict[str, Any]) -> None:
        capture.events.append(event)

    globalLogPublisher.addObserver(observer)
    yield capture
    globalLogPublisher.removeObserver(observer)


class Server:
    def __init__(self, gateway: FakeIvrGateway, settings: FlowSettings, **kw: Any) -> None:
        self.factory = AgiServerFactory(reactor, gateway, settings, command_timeout=30.0, language="fr", **kw)
        self.gateway = gateway

    async def __aenter__(self) -> Server:
        endpoint = serverFromString(reactor, with_backlog("tcp:0:interface=127.0.0.1", 1024))
        self.port = await endpoint.listen(self.factory)
        self.endpoint = f"tcp:127.0.0.1:{self.port.getHost().port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.port.stopListening()

    async def call(
        self,
        attempt: str,
        script: str,
        *,
        agi_script: str = "enroll?lang=fr",
        record: list[RecordLine] | None = None,
        **kw: Any,
    ) -> str:
        env = default_env(agi_script, (attempt,))
        return await run_agi_channel(
            reactor, self.endpoint, env, Handset.scripted(script), options(**kw), record
        )


SETTINGS = FlowSettings(dtmf_timeout_ms=3000, token_repeats=2)


def commands(record: list[RecordLine]) -> list[bytes]:
    return [data for _, direction, data in record if direction == ">AST"]


@pytest_twisted.ensureDeferred
async def test_success(logs: LogCapture) -> None:
    gateway = FakeIvrGateway()
    gateway.add("att-1", last8=GOOD)
    record: list[RecordLine] = []
    async with Server(gateway, SETTINGS) as server:
        status = await server.call("att-1", f"w7|d{GOOD}#", record=record)
    attempt = gateway.attempts["att-1"]
    assert attempt.verdicts == ["accepted"] and attempt.end_reasons == ["completed"]
    assert status == "HANGUP"  # our HANGUP command
    assert commands(record) == [
        b"ANSWER\n",
        b'STREAM FILE idtronic-welcome "0123456789"\n',  # interruptible
        b"GET DATA idtronic-enter-last8 3000 8\n",
        b'STREAM FILE idtronic-success ""\n',
        b"HANGUP\n",
    ]
    assert GOOD not in logs.text() and not logs.failures()
    assert server.factory.active == 0


@pytest_twisted.ensureDeferred
async def test_wrong_three_times(logs: LogCapture) -> None:
    gateway = FakeIvrGateway()
    gateway.add("att-1", last8=GOOD)
    record: list[RecordLine] = []
    # Each entry: keyed during the enter-last8 prompt, `#` ends it.
    script = f"w7|d{WRONG}#|w6|d{WRONG}#|w6|d{WRONG}#"
    async with Server(gateway, SETTINGS) as server:
        await server.call("att-1", script, record=record)
    attempt = gateway.attempts["att-1"]
    assert attempt.entries == [WRONG] * 3
    assert attempt.verdicts == ["retry", "retry", "failed"]
    assert attempt.end_reasons == ["completed"]
    sent = commands(record)
    assert sent.count(b'STREAM FILE idtronic-wrong-retry "0123456789"\n') == 2
    assert b'STREAM FILE idtronic-failed ""\n' in sent
    assert not [c for c in sent if WRONG.encode() in c or GOOD.encode() in c]  # no VERBOSE/SET VARIABLE
    assert WRONG not in logs.text() and not logs.failures()


@pytest_twisted.ensureDeferred
async def test_timeout_without_entry() -> None:
    gateway = FakeIvrGateway()
    gateway.add("att-1", last8=GOOD)
    record: list[RecordLine] = []
    async with Server(gateway, SETTINGS) as server:
        await server.call("att-1", "w300", record=record)
    attempt = gateway.attempts["att-1"]
    assert attempt.entries == ["", "", ""]  # each silent timeout counted as an entry
    assert attempt.verdicts == ["retry", "retry", "failed"]
    assert commands(record).count(b'STREAM FILE idtronic-no-entry "0123456789"\n') == 2


@pytest_twisted.ensureDeferred
async def test_hangup_during_welcome_prompt() -> None:
    gateway = FakeIvrGateway()
    gateway.add("att-1")
    record: list[RecordLine] = []
    async with Server(gateway, SETTINGS) as server:
        status = await server.call("att-1", "w1|h", record=record)
    assert status == "HANGUP"
    assert gateway.attempts["att-1"].end_reasons == ["hangup"]
    # -1 from STREAM FILE: the channel is asked, answers 511 after its HANGUP line; nothing more is sent.
    assert commands(record)[-2:] == [b'STREAM FILE idtronic-welcome "0123456789"\n', b"CHANNEL STATUS\n"]
    replies = [data for _, direction, data in record if direction == "AST>"]
    assert replies[-4].startswith(b"200 result=-1 endpos=")
    # HANGUP, 511 to CHANNEL STATUS, and the HANGUP Asterisk writes when the server closes.
    dead = b"511 Command Not Permitted on a dead channel or intercept routine\n"
    assert replies[-3:] == [b"HANGUP\n", dead, b"HANGUP\n"]


@pytest_twisted.ensureDeferred
async def test_hangup_during_entry(logs: LogCapture) -> None:
    gateway = FakeIvrGateway()
    gateway.add("att-1")
    async with Server(gateway, SETTINGS) as server:
        status = await server.call("att-1", "w7|d4992|w1|h")
    assert status == "HANGUP"
    attempt = gateway.attempts["att-1"]
    assert attempt.entries == [] and attempt.end_reasons == ["hangup"]  # the partial entry was lost
    assert not logs.failures()


@pytest_twisted.ensureDeferred
async def test_digits_typed_during_the_welcome_start_the_entry(logs: LogCapture) -> None:
    gateway = FakeIvrGateway()
    gateway.add("att-1", last8=GOOD)
    record: list[RecordLine] = []
    async with Server(gateway, SETTINGS) as server:
        # Keyed 1 s into the 3.9 s welcome. Slower emulated time: a digit keyed between the STREAM FILE
        # reply and the next command would be dropped (as by Asterisk), 370 ms of call time apart.
        await server.call("att-1", f"w1|d{GOOD}#", record=record, speed=2.0)
    attempt = gateway.attempts["att-1"]
    assert attempt.entries == [GOOD] and attempt.verdicts == ["accepted"]
    assert commands(record)[:3] == [
        b"ANSWER\n",
        b'STREAM FILE idtronic-welcome "0123456789"\n',
        b'GET DATA "" 3000 7\n',  # the other 7 digits, without a prompt
    ]
    replies = [data for _, direction, data in record if direction == "AST>"]
    assert f"200 result={ord(GOOD[0])} endpos=".encode() in replies[-5]  # the welcome stopped at digit 1
    assert GOOD not in logs.text()


@pytest_twisted.ensureDeferred
async def test_partial_typed_ahead_entry_is_asked_again(logs: LogCapture) -> None:
    gateway = FakeIvrGateway()
    gateway.add("att-1", last8=GOOD, budget=5)
    async with Server(gateway, SETTINGS) as server:
        # "857#" during the welcome, then the full number during the entry prompt.
        await server.call("att-1", f"w1|d857#|w7|d{GOOD}#", speed=2.0)
    attempt = gateway.attempts["att-1"]
    assert attempt.entries == ["857", GOOD]
    assert attempt.verdicts == ["retry", "accepted"] and attempt.budget == 5  # not counted


@pytest.mark.parametrize(
    ("prompt", "script", "sent"),
    [
        ("idtronic-welcome", "w60", b'STREAM FILE idtronic-welcome "0123456789"\n'),
        ("idtronic-enter-last8", "w60", b"GET DATA idtronic-enter-last8 3000 8\n"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_missing_prompt_is_told_apart_from_a_hangup(
    logs: LogCapture, prompt: str, script: str, sent: bytes
) -> None:
    gateway = FakeIvrGateway()
    gateway.add("att-1")
    record: list[RecordLine] = []
    async with Server(gateway, SETTINGS) as server:
        status = await server.call("att-1", script, record=record, missing_prompts=frozenset({prompt}))
    assert gateway.attempts["att-1"].end_reasons == ["prompt_missing"]
    assert commands(record)[-3:] == [sent, b"CHANNEL STATUS\n", b"HANGUP\n"]
    replies = [data for _, direction, data in record if direction == "AST>"]
    assert b"200 result=6\n" in replies  # the channel was still up
    assert status == "HANGUP"  # we hung up; the callee did not
    (line,) = [formatEvent(e) or "" for e in logs.events if "could not play" in (formatEvent(e) or "")]
    assert prompt in line and "missing" in line
    assert not logs.failures()


@pytest_twisted.ensureDeferred
async def test_hostile_channel_name_and_argument_are_escaped_in_logs(logs: LogCapture) -> None:
    from idtronic_tel.runner import JsonLinesObserver

    gateway = FakeIvrGateway()
    channel = "PJSIP/evil\x1b[2J\x1b[31mfake\rERROR forged line-00000001"
    huge = "A" * 8000
    async with Server(gateway, SETTINGS) as server:
        for script, arg in (("no\x1b]0;title\x07pe", "att-1"), ("enroll", huge)):
            env = default_env(script, (arg,), channel=channel)
            await run_agi_channel(reactor, server.endpoint, env, Handset.scripted("w60"), options())
    lines: list[str] = []
    stream = io.StringIO()
    json_observer = JsonLinesObserver(stream)
    for event in logs.events:
        lines.append(formatEvent(event) or "")
        json_observer(event)
    for text in [*lines, *(json.loads(line)["text"] for line in stream.getvalue().splitlines())]:
        assert "\x1b" not in text and "\r" not in text and "\x07" not in text
        assert len(text) < 600
    assert any("\\x1b[2J" in text and "fake\\rERROR" in text and "\\x07pe" in text for text in lines)
    assert any("more of 8000 chars" in text for text in lines)  # the 8000-character argument, cut


@pytest_twisted.ensureDeferred
async def test_unknown_attempt_refused(logs: LogCapture) -> None:
    gateway = FakeIvrGateway()
    record: list[RecordLine] = []
    async with Server(gateway, SETTINGS) as server:
        status = await server.call("nope", "w60", record=record)
    assert status == "HANGUP"
    assert commands(record) == [b"ANSWER\n", b'STREAM FILE idtronic-unknown-call ""\n', b"HANGUP\n"]
    assert gateway.log == [("start_call", "nope")]
    assert any("unknown or finished attempt" in (formatEvent(e) or "") for e in logs.events)


@pytest_twisted.ensureDeferred
async def test_unknown_script_refused(logs: LogCapture) -> None:
    gateway = FakeIvrGateway()
    gateway.add("att-1", kind=CallKind.VOICE_TOKEN, token="483920")
    record: list[RecordLine] = []
    async with Server(gateway, SETTINGS) as server:  # voice-token not enabled
        status = await server.call("att-1", "w60", agi_script="voice-token", record=record)
    assert status == "HANGUP"
    assert commands(record) == [b"ANSWER\n", b'STREAM FILE idtronic-unknown-call ""\n', b"HANGUP\n"]
    assert gateway.log == []
    assert any("unknown script" in (formatEvent(e) or "") for e in logs.events)


@pytest_twisted.ensureDeferred
async def test_voice_token(logs: LogCapture) -> None:
    gateway = FakeIvrGateway()
    gateway.add("att-1", kind=CallKind.VOICE_TOKEN, token="483920")
    record: list[RecordLine] = []
    async with Server(gateway, SETTINGS, voice_token_enabled=True) as server:
        await server.call("att-1", "w60", agi_script="voice-token", record=record)
    assert commands(record).count(b'SAY DIGITS 483920 ""\n') == 2
    assert gateway.attempts["att-1"].end_reasons == ["completed"]
    assert "483920" not in logs.text()


@pytest_twisted.ensureDeferred
async def test_language_set_when_dialplan_did_not() -> None:
    gateway = FakeIvrGateway()
    gateway.add("att-1", last8=GOOD)
    record: list[RecordLine] = []
    async with Server(gateway, SETTINGS) as server:
        env = default_env("enroll", ("att-1",), language="en")
        await run_agi_channel(
            reactor, server.endpoint, env, Handset.scripted(f"w7|d{GOOD}#"), options(), record
        )
    assert commands(record)[0] == b"SET VARIABLE CHANNEL(language) fr\n"
    assert gateway.attempts["att-1"].verdicts == ["accepted"]


@pytest_twisted.ensureDeferred
async def test_first_run_handset_succeeds() -> None:
    gateway = FakeIvrGateway()
    gateway.add("att-1", last8=GOOD)
    welcome = wav_durations(SOUNDS).get("idtronic-welcome", 16000) / 8000 if SOUNDS.is_dir() else 2.0
    async with Server(gateway, SETTINGS) as server:
        env = default_env("enroll", ("att-1",))
        await run_agi_channel(reactor, server.endpoint, env, first_run_handset(GOOD, welcome), options())
    assert gateway.attempts["att-1"].verdicts == ["accepted"]


@pytest_twisted.ensureDeferred
async def test_attempt_id_from_channel_variable() -> None:
    gateway = FakeIvrGateway()
    gateway.add("abc123", last8=GOOD)
    async with Server(gateway, SETTINGS) as server:
        env = default_env("enroll", ("", ""))
        opts = options(variables={"IDTRONIC_CALLBACK": "abc123"})
        await run_agi_channel(reactor, server.endpoint, env, Handset.scripted(f"w7|d{GOOD}#"), opts)
    assert gateway.attempts["abc123"].end_reasons == ["completed"]


@pytest_twisted.ensureDeferred
async def test_hundred_simultaneous_sessions(logs: LogCapture) -> None:
    gateway = FakeIvrGateway()
    for i in range(100):
        gateway.add(f"att-{i}", last8=GOOD)
    async with Server(gateway, SETTINGS) as server:
        # Keyed well after the welcome (its end drifts under the load of 100 sessions at 20x speed), while
        # the entry prompt plays or GET DATA waits for the first digit.
        calls = [Deferred.fromCoroutine(server.call(f"att-{i}", f"w9|d{GOOD}#")) for i in range(100)]
        results = await DeferredList(calls, consumeErrors=True)
        assert server.factory.active == 0
    assert [r for ok, r in results if not ok] == []
    assert {r for _, r in results} == {"HANGUP"}
    assert all(
        a.verdicts == ["accepted"] and a.end_reasons == ["completed"] for a in gateway.attempts.values()
    )
    assert not logs.failures()


# -- hostile or broken peers ---------------------------------------------------------------------------


class RawPeer(Protocol):
    def __init__(self, payload: list[bytes]) -> None:
        self.payload = payload
        self.received = b""
        self.closed: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        for chunk in self.payload:
            self.transport.write(chunk)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: object = None) -> None:
        self.closed.callback(None)


ENV_BLOCK = b"".join(f"{k}: {v}\n".encode() for k, v in default_env("enroll", ("att-1",)).items()) + b"\n"


def garbage_payloads() -> list[list[bytes]]:
    rng = random.Random(4573)
    cases = [
        [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"],
        [b"\x00\xff\xfe" * 100 + b"\n"],
        [b"x" * 20000],
        [ENV_BLOCK, b"200 result=0\n"],  # a reply before any command
        [ENV_BLOCK, b"HANGUP\nHANGUP\n511 x\n"],
        [ENV_BLOCK, b"520-usage\n" + b"more\n" * 500],  # an endless usage block
        [ENV_BLOCK, b"200 result=0 endpos=\n"],
        [ENV_BLOCK[:50]],
    ]
    for _ in range(20):
        cases.append([ENV_BLOCK, bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 300)))])
    return cases


@pytest_twisted.ensureDeferred
async def test_garbage_from_peer_never_crashes(logs: LogCapture) -> None:
    gateway = FakeIvrGateway()
    settings = FlowSettings(dtmf_timeout_ms=3000)
    factory = AgiServerFactory(reactor, gateway, settings, command_timeout=0.5, language="")
    port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(factory)
    try:
        for payload in garbage_payloads():
            gateway.add("att-1")
            peer = RawPeer(payload)
            await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), peer)
            await peer.closed  # the server closed: by protocol error, timeout or the end of the flow
            assert factory.active == 0
    finally:
        await port.stopListening()
    assert not logs.failures()


# -- listening -----------------------------------------------------------------------------------------


def test_with_backlog() -> None:
    assert with_backlog("tcp:4573:interface=127.0.0.1", 1024) == "tcp:4573:interface=127.0.0.1:backlog=1024"
    assert with_backlog("tcp:4573:backlog=1024", 1024) == "tcp:4573:backlog=1024"
    with pytest.raises(ValueError):
        with_backlog("tcp:4573:backlog=5", 1024)
    with pytest.raises(ValueError):
        with_backlog("stdio:", 1024)


@pytest_twisted.ensureDeferred
async def test_configured_backlog_reaches_the_kernel() -> None:
    service = make_agi_service(
        reactor,
        AgiConfig(listen="tcp:0:interface=127.0.0.1", backlog=777),
        FakeIvrGateway(),
        CallbackConfig(),
        VoiceFallbackConfig(),
    )
    service.startService()
    try:
        await deferLater(reactor, 0.05)
        port = service._waitingForPort.result  # type: ignore[attr-defined]
        assert port.getHost().port > 0
        if shutil.which("ss") is None:
            pytest.skip("ss not available to read the kernel's backlog")
        out = subprocess.run(
            ["ss", "-ltnH", f"sport = :{port.getHost().port}"], capture_output=True, text=True, check=True
        ).stdout.split()
        assert out[2] == "777"  # Send-Q of a listening socket = its backlog
    finally:
        await service.stopService()
