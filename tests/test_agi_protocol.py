"""AgiSession without sockets: StringTransport + task.Clock, the peer's bytes taken from the transcripts."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from idtronic_tel.ivr.agi_protocol import (
    AgiCommandRejected,
    AgiCommandTimeout,
    AgiConnectionLost,
    AgiSession,
    AgiSessionError,
    ChannelHungUp,
    PromptMissing,
)
from tests import transcripts


def env_block() -> bytes:
    """The environment block Asterisk sent first in a real session."""
    return transcripts.stream("agi-full-enroll-fr.txt", "in").split(b"\n\n")[0] + b"\n\n"


class Harness:
    """A session whose handler is driven step by step by the test."""

    def __init__(self, command_timeout: float = 5.0) -> None:
        self.clock = Clock()
        self.transport = StringTransport()
        self.turnarounds: list[tuple[str, float]] = []
        self.started: Deferred[AgiSession] = Deferred()
        self.release: Deferred[None] = Deferred()
        self.session = AgiSession(
            self._handler,
            self.clock,
            command_timeout,
            on_turnaround=lambda n, s: self.turnarounds.append((n, s)),
        )
        self.session.makeConnection(self.transport)

    async def _handler(self, session: AgiSession) -> None:
        self.started.callback(session)
        await self.release

    def feed(self, data: bytes) -> None:
        self.session.dataReceived(data)

    def sent(self) -> bytes:
        data = self.transport.value()
        self.transport.clear()
        return data

    def run(self, coro_fn: Callable[[], Awaitable[Any]]) -> Deferred[Any]:
        async def wrapper() -> Any:
            return await coro_fn()

        return Deferred.fromCoroutine(wrapper())


def result_of(d: Deferred[Any]) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "deferred has not fired"
    return out[0]


def started(command_timeout: float = 5.0) -> Harness:
    h = Harness(command_timeout)
    h.feed(env_block())
    assert h.started.called
    return h


def test_env_then_handler_and_close_at_end() -> None:
    h = Harness()
    h.feed(env_block()[:100])
    assert not h.started.called
    h.feed(env_block()[100:])
    assert h.session.env is not None and h.session.env.script == "enroll"
    assert h.session.env.args == ("full-enroll-fr", "")
    h.release.callback(None)
    assert h.transport.disconnecting  # the server always closes: Asterisk never does
    assert h.clock.getDelayedCalls() == []


def test_commands_match_transcript_bytes_and_replies() -> None:
    h = started()
    s = h.session

    d = h.run(s.answer)
    assert h.sent() == b"ANSWER\n"
    h.feed(b"200 result=0\n")
    assert result_of(d) is None

    d = h.run(lambda: s.stream_file("agent-pass", "0123456789#"))
    assert h.sent() == b'STREAM FILE agent-pass "0123456789#"\n'
    h.clock.advance(2.98)
    h.feed(b"200 result=0 endpos=23840\n")
    assert result_of(d) == ""

    d = h.run(lambda: s.get_data("vm-enter-num-to-call", 10000, 8))
    assert h.sent() == b"GET DATA vm-enter-num-to-call 10000 8\n"
    h.feed(b"200 result=12345678\n")
    entry = result_of(d)
    assert (entry.digits, entry.timed_out) == ("12345678", False)

    d = h.run(lambda: s.say_digits("1234"))
    assert h.sent() == b'SAY DIGITS 1234 ""\n'
    h.feed(b"200 result=0\n")
    result_of(d)

    d = h.run(lambda: s.get_variable("NO_SUCH_VARIABLE"))
    h.sent()
    h.feed(b"200 result=0\n")
    assert result_of(d) is None
    assert [n for n, _ in h.turnarounds] == [
        "ANSWER",
        "STREAM FILE",
        "GET DATA",
        "SAY DIGITS",
        "GET VARIABLE",
    ]
    assert h.turnarounds[1][1] == pytest.approx(2.98)
    assert h.clock.getDelayedCalls() == []


def test_escape_digit_and_get_data_timeout_forms() -> None:
    h = started()
    d = h.run(lambda: h.session.stream_file("demo-congrats", "#"))
    h.feed(b"200 result=35 endpos=43520\n")
    assert result_of(d) == "#"
    d = h.run(lambda: h.session.get_data("beep", 2000, 4))
    h.feed(b"200 result= (timeout)\n")
    entry = result_of(d)
    assert (entry.digits, entry.timed_out) == ("", True)
    d = h.run(lambda: h.session.get_data("beep", 3000, 8))
    h.feed(b"200 result=12 (timeout)\n")
    assert result_of(d).digits == "12"


def test_reply_split_across_segments() -> None:
    h = started()
    d = h.run(lambda: h.session.get_data("beep", 3000, 8))
    for byte in b"200 result=12 (timeout)\n":
        assert not d.called
        h.feed(bytes([byte]))
    assert result_of(d).timed_out


def test_per_command_timeout_closes_session() -> None:
    h = started(command_timeout=3.0)
    d = h.run(h.session.answer)
    h.clock.advance(2.9)
    assert not d.called
    h.clock.advance(0.2)
    assert isinstance(result_of(d).value, AgiCommandTimeout)
    assert h.transport.disconnecting
    # A late reply is not paired with anything, and later commands fail at once.
    h.feed(b"200 result=0\n")
    d2 = h.run(h.session.answer)
    assert isinstance(result_of(d2).value, AgiCommandTimeout)
    assert h.clock.getDelayedCalls() == []


def test_env_timeout() -> None:
    h = Harness(command_timeout=5.0)
    h.feed(b"agi_network: yes\n")
    h.clock.advance(5.0)
    assert h.transport.disconnecting and not h.started.called
    assert h.clock.getDelayedCalls() == []


def test_hangup_line_after_reply_then_commands_refused() -> None:
    h = started()
    d = h.run(lambda: h.session.stream_file("demo-congrats", "#"))
    h.sent()
    h.feed(b"200 result=-1 endpos=16160\n")  # agi-hangup-during-stream-file.txt
    assert not d.called and h.sent() == b"CHANNEL STATUS\n"  # a hang-up, or a prompt it could not play?
    h.feed(b"HANGUP\n")  # ~40 ms after the reply, before any later answer
    h.feed(b"511 Command Not Permitted on a dead channel or intercept routine\n")
    assert isinstance(result_of(d).value, ChannelHungUp)
    assert h.session.hung_up
    d = h.run(lambda: h.session.stream_file("beep"))
    assert isinstance(result_of(d).value, ChannelHungUp)
    assert h.sent() == b""  # the refused STREAM FILE was not written
    d = h.run(lambda: h.session.get_variable("CHANNEL"))  # still allowed on a dead channel
    assert h.sent() == b"GET VARIABLE CHANNEL\n"
    h.feed(b"200 result=1 (Local/0611223344@callee-seq-00000004;1)\n")
    assert result_of(d) == "Local/0611223344@callee-seq-00000004;1"


def test_hangup_line_while_idle() -> None:
    h = started()
    d = h.run(h.session.answer)
    h.feed(b"200 result=0\n")
    result_of(d)
    h.feed(b"HANGUP\n")
    assert h.session.hung_up and not h.transport.disconnecting
    d = h.run(h.session.answer)
    assert isinstance(result_of(d).value, ChannelHungUp)
    assert h.clock.getDelayedCalls() == []


def test_hangup_line_while_command_in_flight_waits_for_its_reply() -> None:
    h = started()
    d = h.run(h.session.answer)
    h.feed(b"HANGUP\n")  # crossed our command on the wire
    assert not d.called
    h.feed(b"511 Command Not Permitted on a dead channel or intercept routine\n")
    assert isinstance(result_of(d).value, ChannelHungUp)


def test_get_data_minus_one_after_a_hangup() -> None:
    h = started()
    d = h.run(lambda: h.session.get_data("demo-congrats", 10000, 8))
    assert h.sent() == b"GET DATA demo-congrats 10000 8\n"
    h.feed(b"200 result=-1\n")  # agi-hangup-during-get-data.txt: then HANGUP ~40 ms later
    assert h.sent() == b"CHANNEL STATUS\n"
    h.feed(b"HANGUP\n511 Command Not Permitted on a dead channel or intercept routine\n")
    failure = result_of(d)
    assert isinstance(failure.value, ChannelHungUp)
    assert "-1" in str(failure.value) and "demo-congrats" not in str(failure.value)


@pytest.mark.parametrize(
    ("command", "reply", "prompt"),
    [
        (lambda s: s.stream_file("no-such-sound-file"), b"200 result=-1 endpos=0\n", "no-such-sound-file"),
        (lambda s: s.get_data("no-such-sound-file", 10000, 8), b"200 result=-1\n", "no-such-sound-file"),
        (lambda s: s.say_digits("483920"), b"200 result=-1\n", "digits/<0-9>"),
    ],
)
def test_missing_prompt_is_not_a_hangup(command: Any, reply: bytes, prompt: str) -> None:
    # agi-invalid-commands.txt: `200 result=-1 endpos=0` at once, and the channel answers on.
    h = started()
    d = h.run(lambda: command(h.session))
    h.sent()
    h.feed(reply)
    assert h.sent() == b"CHANNEL STATUS\n"
    h.feed(b"200 result=6\n")  # AST_STATE_UP
    failure = result_of(d)
    assert isinstance(failure.value, PromptMissing) and failure.value.prompt == prompt
    assert prompt in str(failure.value) and "483920" not in str(failure.value)
    assert not h.session.hung_up


def test_get_data_without_prompt() -> None:
    h = started()
    d = h.run(lambda: h.session.get_data("", 10000, 7))
    assert h.sent() == b'GET DATA "" 10000 7\n'  # app.c plays nothing for an empty prompt
    h.feed(b"200 result=-1\n")
    assert isinstance(result_of(d).value, ChannelHungUp)  # without a prompt, -1 can only be a hang-up
    assert h.sent() == b""


def test_511_marks_channel_dead() -> None:
    h = started()
    d = h.run(h.session.answer)
    h.feed(b"511 Command Not Permitted on a dead channel or intercept routine\n")
    assert isinstance(result_of(d).value, ChannelHungUp)
    assert h.session.hung_up


def test_520_block_split_and_containing_a_fake_reply() -> None:
    h = started()
    d = h.run(lambda: h.session.command("GET FULL VARIABLE", "${A}", "${B}", "${C}"))
    h.feed(b"520-Invalid command syntax.  Proper usage follows:\n")
    h.clock.advance(0.04)
    h.feed(b"Evaluates the given <replaceable>expression</replaceable>\n")
    h.feed(b"Example return code: 200 result=1 (The time is 1578493800)\n")
    assert not d.called
    h.feed(b"520 End of proper usage.\n")
    failure = result_of(d)
    assert isinstance(failure.value, AgiCommandRejected) and failure.value.code == 520
    # The session is still usable: the next reply pairs with the next command.
    d = h.run(h.session.answer)
    h.feed(b"200 result=0\n")
    assert result_of(d) is None


def test_510_and_100_provisional() -> None:
    h = started()
    d = h.run(lambda: h.session.command("NOOP"))
    h.feed(b"100 result=0 Trying...\n")
    assert not d.called
    h.feed(b"200 result=0\n")
    assert result_of(d).result == "0"
    d = h.run(lambda: h.session.command("FOO BAR"))
    h.feed(b"510 Invalid or unknown command\n")
    assert result_of(d).value.code == 510


def test_one_command_in_flight() -> None:
    h = started()
    h.run(h.session.answer)
    d = h.run(h.session.answer)
    assert isinstance(result_of(d).value, RuntimeError)
    assert h.sent() == b"ANSWER\n"


def test_garbage_and_unsolicited_lines_close_without_crashing() -> None:
    h = started()
    d = h.run(lambda: h.session.get_data("beep", 3000, 8))
    h.feed(b"200 result=1234 \x00garbage\n")
    failure = result_of(d)
    assert isinstance(failure.value, AgiSessionError)
    assert "1234" not in str(failure.value)
    assert h.transport.disconnecting

    h = started()
    h.feed(b"200 result=0\n")  # a reply to nothing: the pairing is lost
    assert h.transport.disconnecting

    h = Harness()
    h.feed(b"GET / HTTP/1.1\n")  # not Asterisk at all
    assert h.transport.disconnecting and not h.started.called
    assert h.clock.getDelayedCalls() == []


def test_overlong_line_closes() -> None:
    h = started()
    d = h.run(h.session.answer)
    h.feed(b"2" * 10000)
    assert isinstance(result_of(d).value, AgiSessionError)
    assert h.transport.disconnecting


def test_connection_lost_fails_the_command_and_fires_finished() -> None:
    h = started()
    d = h.run(lambda: h.session.get_data("beep", 3000, 8))
    h.session.connectionLost()
    assert isinstance(result_of(d).value, AgiConnectionLost)
    assert h.session.finished.called
    assert h.clock.getDelayedCalls() == []


def test_handler_exception_still_closes() -> None:
    clock, transport = Clock(), StringTransport()

    async def handler(session: AgiSession) -> None:
        raise ValueError("bug")

    session = AgiSession(handler, clock, 5.0)
    session.makeConnection(transport)
    session.dataReceived(env_block())
    assert transport.disconnecting
