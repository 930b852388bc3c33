"""AmiClient against the emulator on real loopback sockets (pytest-twisted; no sleeps: bounded waits)."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import LogEvent, globalLogPublisher

from idtronic_tel.core.ports import CallOutcome
from idtronic_tel.ivr.ami_actions import AmiNotLoggedIn, is_success
from idtronic_tel.ivr.ami_client import originate_outcome
from idtronic_tel.ivr.ami_codec import Message
from idtronic_tel.ivr.ami_states import SessionState
from idtronic_tel.simulators.handset import Answer, Handset, HandsetDirectory
from tests.fakes_ami import Harness, turn, within


@pytest.mark.parametrize(
    ("response", "reason", "outcome"),
    [
        ("Success", "4", CallOutcome.ANSWERED),
        ("Failure", "5", CallOutcome.BUSY),
        ("Failure", "3", CallOutcome.NO_ANSWER),
        ("Failure", "8", CallOutcome.CONGESTION),
        ("Failure", "0", CallOutcome.FAILED),
        ("Failure", "1", CallOutcome.FAILED),
        ("Failure", "", CallOutcome.FAILED),
    ],
)
def test_outcome_mapping(response: str, reason: str, outcome: CallOutcome) -> None:
    event = Message.of(("Event", "OriginateResponse"), ("Response", response), ("Reason", reason))
    assert originate_outcome(event) is outcome


@pytest.mark.parametrize("auth", ["md5", "plain"])
@pytest_twisted.ensureDeferred
async def test_login_and_ping(auth: str) -> None:
    h = Harness.start()
    try:
        client = h.client(h.config(auth=auth))
        proto = await within(client.when_ready())
        assert client.ready and proto.state is SessionState.LOGGED_IN
        pong = await within(client.send_action("Ping"))
        assert pong.get("Ping") == "Pong"
        status = await within(client.send_list_action("CoreShowChannels"))
        assert status.complete is not None and status.complete.get("ListItems") == "0"
        assert h.factory.logins == 1
    finally:
        await h.close()


@pytest_twisted.ensureDeferred
async def test_subscriptions_survive_reconnect() -> None:
    h = Harness.start()
    try:
        client = h.client()
        seen: list[Message] = []
        client.subscribe(seen.append)
        await within(client.when_ready())
        h.factory.broadcast([("Event", "UserEvent"), ("Privilege", "user,all"), ("N", "1")], "call")
        assert h.factory.kick_all() == 1
        await within(h.factory.when("login", 2))
        await within(client.when_ready())
        h.factory.broadcast([("Event", "UserEvent"), ("Privilege", "user,all"), ("N", "2")], "call")
        await within(client.send_action("Ping"))  # the event is before the Pong on the same socket
        assert [m.get("N") for m in seen if m.event == "UserEvent"] == ["1", "2"]
        assert client.logins == 2
    finally:
        await h.close()


@pytest_twisted.ensureDeferred
async def test_originate_response_correlated_on_a_new_session() -> None:
    # ami-drop-kicked-session.txt: the session that sent the Originate is kicked; the OriginateResponse
    # (same ActionID) arrives on the next session.
    h = Harness.start(handsets=HandsetDirectory(default=Handset(Answer.ANSWER, ring_seconds=0.5)))
    try:
        client = h.client()
        await within(client.when_ready())
        outcome = client.expect_originate_response("orig-kick")
        reply = await within(
            client.originate(
                "orig-kick",
                [
                    ("Channel", "Local/0611223344@callee-delayed"),
                    ("Context", "after-answer"),
                    ("Exten", "s"),
                    ("Priority", "1"),
                    ("Timeout", "30000"),
                    ("Async", "true"),
                    ("ChannelId", "orig-kick-chan"),
                ],
            )
        )
        assert reply.get("Message") == "Originate successfully queued"
        h.factory.kick_all()
        event = await within(outcome)
        assert event.action_id == "orig-kick" and event.get("Uniqueid") == "orig-kick-chan"
        assert h.factory.logins == 2  # it came on the second session
        assert originate_outcome(event) is CallOutcome.ANSWERED
        assert len(h.factory.originates) == 1
    finally:
        await h.close()


@pytest_twisted.ensureDeferred
async def test_login_refused_backs_off_and_logs_once_per_attempt() -> None:
    h = Harness.start()
    clock = Clock()  # drives the backoff (and the protocol timers) by hand
    refused: list[LogEvent] = []
    waiters: list[Deferred[None]] = []

    def observe(event: LogEvent) -> None:
        if "AMI login refused" in str(event.get("log_format", "")):
            refused.append(event)
            while waiters:
                waiters.pop().callback(None)

    def next_refusal() -> Deferred[None]:
        d: Deferred[None] = Deferred()
        waiters.append(d)
        return d

    globalLogPublisher.addObserver(observe)
    try:
        delays: list[float] = []

        def policy(attempt: int) -> float:
            delays.append(min(1.0 * 1.5 ** (attempt - 1), 60.0))
            return delays[-1]

        client = h.client(h.config(secret="wrong"), clock=clock, retry_policy=policy)
        await within(next_refusal())
        await turn(5)
        assert h.factory.login_failures == 1 and len(refused) == 1
        assert delays == [1.0]
        assert not client.ready
        failure = client.send_action("Ping")
        with pytest.raises(AmiNotLoggedIn):
            await failure
        clock.advance(0.99)
        await turn(5)
        assert h.factory.login_failures == 1  # no hammering before the backoff delay
        d = next_refusal()
        clock.advance(0.01)
        await within(d)
        await turn(2)  # the refusal is logged just before ClientService schedules the next attempt
        d = next_refusal()
        clock.advance(1.5)
        await within(d)
        await turn(5)
        assert h.factory.login_failures == 3 and len(refused) == 3
        assert delays == [1.0, 1.5, 2.25]
        assert all("wrong" not in repr(e) for e in refused)  # the secret is never logged
        assert h.factory.logins == 0
    finally:
        globalLogPublisher.removeObserver(observe)
        await h.close()


@pytest_twisted.ensureDeferred
async def test_graceful_restart_marks_not_ready_then_reconnects() -> None:
    h = Harness.start(
        handsets=HandsetDirectory(default=Handset(Answer.ANSWER, ring_seconds=0.3)), answered_hold=0.2
    )
    try:
        client = h.client()
        shutdowns: list[Message] = []
        client.subscribe(lambda m: shutdowns.append(m) if m.event == "Shutdown" else None)
        await within(client.when_ready())
        outcome = client.expect_originate_response("o1")
        await within(
            client.originate(
                "o1", [("Channel", "Local/0611223344@x"), ("Context", "c"), ("Exten", "s"), ("Async", "true")]
            )
        )
        restarted = h.factory.restart_gracefully()
        ping = await within(client.send_action("Ping"))
        assert ping.get("Message") == "Asterisk is shutting down"
        assert not client.ready  # no new calls while Asterisk drains
        refused = await within(
            client.originate("o2", [("Channel", "Local/1@x"), ("Exten", "s")]).addErrback(lambda f: f.value)
        )
        assert isinstance(refused, AmiNotLoggedIn)
        event = await within(outcome)  # the call in flight still reports
        assert is_success(event)
        await within(restarted)
        await within(h.factory.when("login", 2))
        await within(client.when_ready())
        assert [m.get("Restart") for m in shutdowns] == ["True"]
    finally:
        await h.close()


@pytest_twisted.ensureDeferred
async def test_garbage_from_asterisk_is_survived() -> None:
    h = Harness.start()
    try:
        client = h.client()
        seen: list[Any] = []
        client.subscribe(seen.append)
        await within(client.when_ready())
        h.factory.inject(b"\x00\xffgarbage line\r\nno colon here either\r\nEvent: Foo\r\n\r\n")
        await within(client.send_action("Ping"))
        assert [m.event for m in seen] == ["FullyBooted", "Foo"]
        assert client.ready and h.factory.logins == 1
    finally:
        await h.close()
