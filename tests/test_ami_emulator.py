"""The AMI emulator replays the client side of the recordings and must answer like Asterisk did.

No sockets: the server protocol runs on a StringTransport and a task.Clock, and the client bytes are fed at
their recorded times. Values that cannot match (timestamps, uptime, session ids, addresses, call counters)
are masked; everything else is compared exactly, header order included.
"""

from __future__ import annotations

import re

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from idtronic_tel.ivr.ami_codec import AmiDecoder, Banner, Message
from idtronic_tel.simulators.ami_session import AmiServerProtocol
from idtronic_tel.simulators.asterisk_ami import AmiEmulatorFactory
from idtronic_tel.simulators.handset import Answer, Handset, HandsetDirectory
from tests import transcripts

VOLATILE = {
    "timestamp",
    "uptime",
    "lastreload",
    "eventtv",
    "sessiontv",
    "sessionid",
    "localaddress",
    "remoteaddress",
    "corestartupdate",
    "corestartuptime",
    "corereloaddate",
    "corereloadtime",
    "corecurrentcalls",
    "coreprocessedcalls",
}
_SEQ = re.compile(r"-[0-9a-f]{8};")


def mask(m: Message) -> tuple[tuple[str, str], ...]:
    return tuple((k, "*" if k.lower() in VOLATILE else _SEQ.sub("-SEQ;", v)) for k, v in m.headers)


def parse(data: bytes) -> list[Message]:
    items = AmiDecoder(expect_banner=True).receive_data(data)
    assert isinstance(items[0], Banner) and items[0].text == "Asterisk Call Manager/11.0.0"
    return [i for i in items if isinstance(i, Message)]


Replay = tuple[list[Message], list[Message], StringTransport]


def replay(
    name: str,
    handset: Handset | None = None,
    *,
    challenge: str | None = None,
    answered_hold: float = 2.0,
    tail: float = 30.0,
) -> Replay:
    """Feed the recorded client bytes of connection 1 at their recorded times; return (ours, recorded)."""
    clock = Clock()
    clock.advance(1795710601.0)
    handsets = HandsetDirectory(default=handset or Handset())
    factory = AmiEmulatorFactory(
        username="tester",
        secret="testsecret",
        handsets=handsets,
        reactor=clock,
        answered_hold=answered_hold,
        challenge=(lambda: challenge) if challenge else None,
    )
    proto = factory.buildProtocol(None)
    assert isinstance(proto, AmiServerProtocol)
    transport = StringTransport()
    proto.makeConnection(transport)
    start = clock.seconds()
    for ln in transcripts.load(name):
        if ln.conn != 1 or ln.direction != "out":
            continue
        if transport.disconnecting:
            break
        clock.advance(max(0.0, start + ln.t - clock.seconds()))
        proto.dataReceived(ln.data)
    for _ in range(int(tail * 10)):
        clock.advance(0.1)
    return parse(transport.value()), parse(transcripts.stream(name, "in")), transport


def challenge_of(name: str) -> str:
    return next(m.get("Challenge") for m in parse(transcripts.stream(name, "in")) if m.get("Challenge"))  # type: ignore[return-value]


@pytest.mark.parametrize(
    "name",
    [
        "ami-login-md5-ok.txt",
        "ami-login-md5-bad-key.txt",
        "ami-login-bad-secret.txt",
        "ami-login-unknown-user.txt",
        "ami-action-before-login.txt",
        "ami-ping-corestatus-unknown-logoff.txt",
    ],
)
def test_session_transcripts_exact(name: str) -> None:
    challenge = challenge_of(name) if "md5" in name else None
    ours, recorded, transport = replay(name, challenge=challenge)
    assert [mask(m) for m in ours] == [mask(m) for m in recorded]
    assert transport.disconnecting  # Asterisk closed after Goodbye / Authentication failed


def test_login_refusal_comes_after_one_second() -> None:
    clock = Clock()
    factory = AmiEmulatorFactory(username="tester", secret="testsecret", reactor=clock)
    proto = factory.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    transport.clear()
    proto.dataReceived(b"Action: Login\r\nActionID: l\r\nUsername: tester\r\nSecret: nope\r\n\r\n")
    proto.dataReceived(b"Action: Ping\r\n\r\n")  # ignored while the refusal is pending
    clock.advance(0.99)
    assert transport.value() == b""
    clock.advance(0.01)
    assert transport.value() == b"Response: Error\r\nActionID: l\r\nMessage: Authentication failed\r\n\r\n"
    assert transport.disconnecting and factory.login_failures == 1


def _outcome_view(messages: list[Message]) -> tuple[list[tuple[tuple[str, str], ...]], list[tuple[str, ...]]]:
    responses = [mask(m) for m in messages if m.response is not None and m.event is None]
    orig = [mask(m) for m in messages if m.event == "OriginateResponse"]
    hangups = sorted(
        (m.get("Channel", "")[-2:], m.get("Cause", ""), m.get("Cause-txt", ""))  # type: ignore[index]
        for m in messages
        if m.event == "Hangup"
    )
    return responses + orig, hangups  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("name", "handset"),
    [
        ("ami-originate-success.txt", Handset(Answer.ANSWER)),
        ("ami-originate-busy.txt", Handset(Answer.BUSY)),
        ("ami-originate-congestion.txt", Handset(Answer.CONGESTION)),
        ("ami-originate-noanswer.txt", Handset(Answer.NO_ANSWER)),
        ("ami-originate-hangup21.txt", Handset(Answer.REJECT)),
        ("ami-originate-bad-channel-tech.txt", Handset(Answer.ANSWER)),
    ],
)
def test_originate_outcomes_match_recordings(name: str, handset: Handset) -> None:
    ours, recorded, _ = replay(name, handset)
    assert _outcome_view(ours) == _outcome_view(recorded)
    # one OriginateResponse, after the immediate response
    kinds = [m.event or m.response for m in ours]
    assert kinds.count("OriginateResponse") == 1
    assert kinds.index("OriginateResponse") > kinds.index("Success")


def test_noanswer_takes_the_originate_timeout() -> None:
    clock = Clock()
    factory = AmiEmulatorFactory(
        username="tester",
        secret="testsecret",
        reactor=clock,
        handsets=HandsetDirectory(default=Handset(Answer.NO_ANSWER)),
    )
    proto = factory.buildProtocol(None)
    proto.makeConnection(StringTransport())
    proto.dataReceived(
        b"Action: Login\r\nUsername: tester\r\nSecret: testsecret\r\n\r\n"
        b"Action: Originate\r\nActionID: o\r\nChannel: Local/0611223344@x\r\nContext: c\r\n"
        b"Exten: s\r\nTimeout: 5000\r\nAsync: true\r\n\r\n"
    )
    clock.advance(4.99)
    assert factory.outcomes == []
    clock.advance(0.01)
    assert factory.outcomes == [("o", "Failure", 3)]


def test_agi_env_and_runner_called() -> None:
    clock = Clock()
    seen: list[tuple[str, dict[str, str], Handset]] = []

    async def runner(reactor: object, endpoint: str, env: dict[str, str], handset: Handset) -> str:
        seen.append((endpoint, env, handset))
        return "SUCCESS"

    handset = Handset.scripted("w1|d12345678#")
    factory = AmiEmulatorFactory(
        username="tester",
        secret="testsecret",
        reactor=clock,
        agi_runner=runner,
        agi_endpoint="tcp:127.0.0.1:4573",
        handsets=HandsetDirectory(default=handset),
    )
    proto = factory.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    proto.dataReceived(
        b"Action: Login\r\nUsername: tester\r\nSecret: testsecret\r\nEvents: call\r\n\r\n"
        b"Action: Originate\r\nActionID: cb-a1\r\nChannel: Local/0611223344@callee\r\n"
        b"Context: idtronic-callback\r\nExten: s\r\nPriority: 1\r\n"
        b'CallerID: "id-tronic" <0100000000>\r\nAsync: true\r\nChannelId: cb-a1\r\n'
        b"Variable: IDTRONIC_CALLBACK=a1\r\nVariable: IDTRONIC_KIND=enroll\r\n\r\n"
    )
    clock.advance(0)
    assert len(seen) == 1
    endpoint, env, got = seen[0]
    assert endpoint == "tcp:127.0.0.1:4573" and got == handset
    assert env["agi_arg_1"] == "a1"
    assert env["agi_network_script"] == "enroll"
    assert env["agi_request"] == "agi://127.0.0.1:4573/enroll"
    assert env["agi_channel"] == "Local/0611223344@callee-00000070;1"
    assert env["agi_uniqueid"] == "cb-a1"
    assert env["agi_callerid"] == "0100000000" and env["agi_calleridname"] == "id-tronic"
    assert env["agi_context"] == "idtronic-callback" and env["agi_language"] == "fr"
    recorded_keys = [
        ln.data.decode().split(":")[0]
        for ln in transcripts.load("agi-success.txt")
        if ln.direction == "in" and ln.data.startswith(b"agi_")
    ]
    assert list(env) == recorded_keys  # same variables, same order as Asterisk
    messages = parse(transport.value())
    assert [m.get("Cause") for m in messages if m.event == "Hangup"] == ["16", "16"]  # AGI done: hang up
