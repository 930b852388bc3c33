"""AmiProtocol with StringTransport + task.Clock, replaying the recorded Asterisk bytes."""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, globalLogPublisher
from twisted.python.failure import Failure

from idtronic_tel.ivr.ami_actions import (
    AmiActionTimeout,
    AmiConnectionLost,
    AmiLoginRefused,
    AmiNotLoggedIn,
    ListResult,
    is_success,
)
from idtronic_tel.ivr.ami_codec import Message, encode_message
from idtronic_tel.ivr.ami_protocol import AmiProtocol, md5_key
from idtronic_tel.ivr.ami_states import SessionState
from tests import transcripts


def exchanges(name: str, conn: int = 1) -> list[tuple[str, bytes]]:
    """Consecutive runs of bytes in one direction: [("in", banner), ("out", challenge), ...]."""
    out: list[tuple[str, bytes]] = []
    for ln in transcripts.load(name):
        if ln.conn != conn:
            continue
        if out and out[-1][0] == ln.direction:
            out[-1] = (ln.direction, out[-1][1] + ln.data)
        else:
            out.append((ln.direction, ln.data))
    return out


def result_of(d: Deferred) -> object:
    """The current result of a fired Deferred (a Failure is consumed)."""
    assert d.called, "Deferred has not fired"
    box: list[object] = []

    def grab(r: object) -> object:
        box.append(r)
        return None if isinstance(r, Failure) else r

    d.addBoth(grab)
    return box[0]


def failure_of(d: Deferred, *types: type[BaseException]) -> Failure:
    r = result_of(d)
    assert isinstance(r, Failure), r
    assert r.check(*types), r
    return r


def no_result(d: Deferred) -> None:
    assert not d.called


def make(action_ids: list[str] | None = None, ping: float = 20.0, timeout: float = 10.0):
    clock = Clock()
    events: list[Message] = []
    proto = AmiProtocol(
        clock,
        action_timeout=timeout,
        ping_interval=ping,
        action_ids=iter(action_ids) if action_ids is not None else None,
        on_event=events.append,
    )
    transport = StringTransport()
    proto.makeConnection(transport)
    return clock, proto, transport, events


def login_plain(proto: AmiProtocol, transport: StringTransport, events: str | None = "off") -> None:
    proto.dataReceived(b"Asterisk Call Manager/11.0.0\r\n")
    d = proto.login("tester", "testsecret", auth="plain", events=events, action_ids=("x", "login-1"))
    proto.dataReceived(b"Response: Success\r\nActionID: login-1\r\nMessage: Authentication accepted\r\n\r\n")
    assert is_success(result_of(d))  # type: ignore[arg-type]
    transport.clear()


def test_md5_key_matches_recording() -> None:
    assert md5_key("267601972", "testsecret") == "4a100799ce7224c3420723f65d372f44"


def test_login_md5_byte_exact() -> None:
    ex = exchanges("ami-login-md5-ok.txt")
    assert [d for d, _ in ex] == ["in", "out", "in", "out", "in", "out", "in"]
    clock, proto, transport, events = make(action_ids=["logoff-1"])
    d = proto.login("tester", "testsecret", auth="md5", events="on", action_ids=("ch-1", "login-md5"))
    assert transport.value() == b""  # nothing before the banner
    proto.dataReceived(ex[0][1])
    assert transport.value() == ex[1][1]
    proto.dataReceived(ex[2][1])
    assert transport.value() == ex[1][1] + ex[3][1]
    no_result(d)
    proto.dataReceived(ex[4][1])
    response = result_of(d)
    assert isinstance(response, Message) and response.get("Message") == "Authentication accepted"
    assert proto.state is SessionState.LOGGED_IN
    assert [e.event for e in events] == ["FullyBooted", "SuccessfulAuth"]
    closed = proto.logoff()
    assert transport.value() == ex[1][1] + ex[3][1] + ex[5][1]
    proto.dataReceived(ex[6][1])
    assert transport.disconnected  # we drop at the Goodbye; Asterisk closes too
    proto.connectionLost(Failure(ConnectionLost()))
    assert result_of(closed) is None
    assert clock.getDelayedCalls() == []


def test_login_md5_bad_key_refused() -> None:
    ex = exchanges("ami-login-md5-bad-key.txt")
    clock, proto, transport, _ = make()
    d = proto.login("tester", "wrongsecret", auth="md5", events=None, action_ids=("ch-1", "login-md5-bad"))
    proto.dataReceived(ex[0][1])
    proto.dataReceived(ex[2][1])
    assert transport.value() == ex[1][1] + ex[3][1]  # the recorded (wrong) key, byte for byte
    clock.advance(0.999)
    no_result(d)
    proto.dataReceived(ex[4][1])  # 1.0 s later in the recording
    f = failure_of(d, AmiLoginRefused)
    assert f.value.message == "Authentication failed"  # type: ignore[union-attr]
    assert proto.state is SessionState.CLOSING and transport.disconnected
    proto.connectionLost(Failure(ConnectionLost()))
    assert proto.state is SessionState.CLOSED
    assert clock.getDelayedCalls() == []


def test_login_plain_byte_exact_and_replies() -> None:
    name = "ami-ping-corestatus-unknown-logoff.txt"
    ex = exchanges(name)
    clock, proto, transport, _ = make()
    d = proto.login("tester", "testsecret", auth="plain", events="off", action_ids=("unused", "login-1"))
    proto.dataReceived(ex[0][1])
    assert transport.value() == ex[1][1]
    proto.dataReceived(ex[2][1])
    assert proto.logged_in and is_success(result_of(d))  # type: ignore[arg-type]
    transport.clear()
    ping = proto.send_action("Ping", action_id="ping-1")
    assert transport.value() == ex[3][1][: len(transport.value())]
    proto.dataReceived(ex[4][1])
    pong = result_of(ping)
    assert isinstance(pong, Message) and pong.get("Ping") == "Pong" and pong.get("Timestamp")
    transport.clear()
    foo = proto.send_action("Foo", action_id="foo-1")
    proto.dataReceived(
        b"Response: Error\r\nActionID: foo-1\r\nMessage: Invalid/unknown command: Foo. "
        b"Use Action: ListCommands to show available commands.\r\n\r\n"
    )
    reply = result_of(foo)
    assert isinstance(reply, Message) and not is_success(reply)  # an Error reply is a reply, not a failure
    proto.connectionLost(Failure(ConnectionLost()))
    assert clock.getDelayedCalls() == []


def test_action_before_login_is_not_sent() -> None:
    clock, proto, transport, _ = make()
    proto.dataReceived(b"Asterisk Call Manager/11.0.0\r\n")
    for action in ("Ping", "CoreStatus", "Originate", "Foo"):
        failure_of(proto.send_action(action), AmiNotLoggedIn)
    assert transport.value() == b""
    assert clock.getDelayedCalls() == []


def test_permission_denied_reply_is_delivered() -> None:
    # Asterisk answers pre-login actions with "Permission denied" (ami-action-before-login.txt); a session
    # logged in that gets it anyway (e.g. write permission missing) sees an Error reply, not a hang.
    ex = exchanges("ami-action-before-login.txt")
    denied = next(m for m in ex[2][1].split(b"\r\n\r\n") if m) + b"\r\n\r\n"
    _clock, proto, transport, _ = make()
    login_plain(proto, transport)
    d = proto.send_action("Ping", action_id="pre-ping")
    proto.dataReceived(denied)
    reply = result_of(d)
    assert isinstance(reply, Message) and reply.get("Message") == "Permission denied"


def test_ping_keepalive_and_missed_pong_drops() -> None:
    clock, proto, transport, _ = make(action_ids=["p1", "p2"], ping=20.0, timeout=5.0)
    login_plain(proto, transport)
    clock.advance(19.9)
    assert transport.value() == b""
    clock.advance(0.1)
    assert transport.value() == b"Action: Ping\r\nActionID: p1\r\n\r\n"
    proto.dataReceived(b"Response: Success\r\nActionID: p1\r\nPing: Pong\r\nTimestamp: 1.0\r\n\r\n")
    transport.clear()
    clock.advance(20.0)
    assert transport.value() == b"Action: Ping\r\nActionID: p2\r\n\r\n"
    clock.advance(4.9)
    assert not transport.disconnected
    clock.advance(0.1)  # no Pong within the action timeout
    assert transport.disconnected and proto.state is SessionState.CLOSING
    proto.connectionLost(Failure(ConnectionLost()))
    assert clock.getDelayedCalls() == []


def test_action_timeout_and_late_response_ignored() -> None:
    clock, proto, transport, _ = make(ping=0)
    login_plain(proto, transport)
    d = proto.send_action("CoreStatus", action_id="cs-1", timeout=3.0)
    clock.advance(3.0)
    failure_of(d, AmiActionTimeout)
    proto.dataReceived(b"Response: Success\r\nActionID: cs-1\r\n\r\n")  # late: dropped
    assert proto.logged_in and not transport.disconnected
    assert clock.getDelayedCalls() == []


def test_pending_actions_fail_when_connection_lost_and_timers_cleared() -> None:
    clock, proto, transport, _ = make()
    login_plain(proto, transport)
    a = proto.send_action("Originate", [("Channel", "Local/1@x")], action_id="o1")
    b = proto.send_list_action("CoreShowChannels", action_id="l1")
    assert len(clock.getDelayedCalls()) == 3  # two action timeouts + the keepalive
    proto.connectionLost(Failure(ConnectionLost()))
    failure_of(a, AmiConnectionLost)
    failure_of(b, AmiConnectionLost)
    assert clock.getDelayedCalls() == []
    failure_of(proto.send_action("Ping"), AmiNotLoggedIn)


def test_events_between_action_and_response_and_shutdown() -> None:
    # ami-drop-core-restart-gracefully.txt: FullyBooted arrives between the Originate and its Response;
    # later Ping and Originate get "Asterisk is shutting down"; then Event: Shutdown and EOF.
    name = "ami-drop-core-restart-gracefully.txt"
    ex = exchanges(name)
    _clock, proto, transport, events = make()
    d = proto.login("tester", "testsecret", auth="plain", events="call,system", action_ids=("u", "login-1"))
    proto.dataReceived(ex[0][1])
    assert transport.value() == ex[1][1]
    proto.dataReceived(ex[2][1])
    result_of(d)
    transport.clear()
    originate = proto.send_action(
        "Originate",
        [
            ("Channel", "Local/0611223344@callee-delayed"),
            ("Context", "after-answer"),
            ("Exten", "s"),
            ("Priority", "1"),
            ("Timeout", "30000"),
            ("CallerID", '"Enroll" <0600000000>'),
            ("Async", "true"),
            ("ChannelId", "orig-restart-chan"),
            ("Variable", "__ANSWER_DELAY=4"),
            ("Variable", "__CALLEE_HOLD=6"),
            ("Variable", "AFTER_HOLD=6"),
        ],
        action_id="orig-restart",
    )
    assert transport.value() == ex[3][1]
    proto.dataReceived(ex[4][1])
    reply = result_of(originate)
    assert isinstance(reply, Message) and reply.get("Message") == "Originate successfully queued"
    assert events[0].event == "FullyBooted"
    ping = proto.send_action("Ping", action_id="ping-during-graceful")
    proto.dataReceived(ex[6][1][: ex[6][1].index(b"\r\n\r\n") + 4])
    assert result_of(ping).get("Message") == "Asterisk is shutting down"  # type: ignore[union-attr]
    assert proto.state is SessionState.SHUTTING_DOWN
    # the rest of the Asterisk side: the call's events, then the Shutdown event
    rest = b"".join(data for direction, data in ex[7:] if direction == "in")
    proto.dataReceived(rest)
    names = [e.event for e in events]
    assert "OriginateResponse" in names and names[-1] == "Shutdown"
    assert next(e for e in events if e.event == "OriginateResponse").action_id == "orig-restart"


def test_list_action_collects_events_and_passes_others() -> None:
    name = "ami-drop-kicked-session.txt"
    ex = exchanges(name, conn=2)
    _clock, proto, transport, events = make()
    d = proto.login("tester", "testsecret", auth="plain", events="call", action_ids=("u", "login-2"))
    proto.dataReceived(ex[0][1])
    proto.dataReceived(ex[2][1])
    result_of(d)
    transport.clear()
    csc = proto.send_list_action("CoreShowChannels", action_id="csc-after-reconnect")
    assert transport.value() == ex[3][1]
    proto.dataReceived(ex[4][1])
    res = result_of(csc)
    assert isinstance(res, ListResult)
    assert [e.event for e in res.events] == ["CoreShowChannel", "CoreShowChannel"]
    assert res.complete is not None and res.complete.get("ListItems") == "2"
    status = proto.send_list_action("Status", action_id="status-after-reconnect")
    proto.dataReceived(ex[6][1])
    res = result_of(status)
    assert isinstance(res, ListResult) and len(res.events) == 2
    assert res.events[0].headers[-1] == ("ActionID", "status-after-reconnect")
    # the OriginateResponse of the Originate sent on the kicked session arrives here, with its ActionID
    proto.dataReceived(ex[7][1])
    orig = [e for e in events if e.event == "OriginateResponse"]
    assert len(orig) == 1 and orig[0].action_id == "orig-kick" and orig[0].get("Reason") == "4"


def test_garbage_line_logged_and_session_survives() -> None:
    logged: list[LogEvent] = []
    globalLogPublisher.addObserver(logged.append)
    try:
        _clock, proto, transport, events = make()
        login_plain(proto, transport)
        proto.dataReceived(b"\x00garbage without colon\r\nEvent: Foo\r\n\r\n")
    finally:
        globalLogPublisher.removeObserver(logged.append)
    assert [e.event for e in events] == ["Foo"]
    assert any("without ':'" in str(e.get("log_format", "")) for e in logged)
    assert proto.logged_in


def test_peer_values_are_escaped_and_cut_in_log_lines() -> None:
    from twisted.logger import formatEvent

    logged: list[LogEvent] = []
    globalLogPublisher.addObserver(logged.append)
    try:
        _clock, proto, transport, _events = make()
        login_plain(proto, transport)
        proto.dataReceived(b"\x1b[2J\x1b[31mforged\rERROR " + b"x" * 5000 + b"\r\nEvent: Foo\r\n\r\n")
    finally:
        globalLogPublisher.removeObserver(logged.append)
    (line,) = [formatEvent(e) or "" for e in logged if "without ':'" in str(e.get("log_format", ""))]
    assert "\x1b" not in line and "\r" not in line and len(line) < 200
    assert "\\x1b[2J" in line and "forged\\rERROR" in line and "more of 5022 chars" in line


def test_oversized_line_drops_connection() -> None:
    _clock, proto, transport, _events = make()
    login_plain(proto, transport)
    proto.dataReceived(b"Event: " + b"x" * 20000)
    assert transport.disconnected


def test_header_injection_not_written() -> None:
    clock, proto, transport, _ = make()
    login_plain(proto, transport)
    with pytest.raises(ValueError):
        proto.send_action("Originate", [("Channel", "Local/1@x\r\nAction: Hangup")])
    assert transport.value() == b""
    assert len(clock.getDelayedCalls()) == 1  # only the keepalive: no pending action left behind


def test_shutdown_refused_login() -> None:
    _clock, proto, _transport, _ = make()
    proto.dataReceived(b"Asterisk Call Manager/11.0.0\r\n")
    d = proto.login("tester", "testsecret", auth="plain", events="off", action_ids=("u", "l"))
    proto.dataReceived(
        encode_message([("Response", "Error"), ("ActionID", "l"), ("Message", "Asterisk is shutting down")])
    )
    f = failure_of(d, AmiLoginRefused)
    assert f.value.shutting_down  # type: ignore[union-attr]


def test_transition_table_is_total_for_peer_inputs() -> None:
    from idtronic_tel.ivr.ami_states import TRANSITIONS, SessionInput

    for state in SessionState:
        for peer_input in (SessionInput.SHUTDOWN_NOTICE, SessionInput.LOST):
            if state is not SessionState.CLOSED or peer_input is SessionInput.LOST:
                assert TRANSITIONS.allows(state, peer_input), (state, peer_input)
