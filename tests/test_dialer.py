"""CallbackDialer + AmiClient + the Asterisk emulator on real loopback sockets, with the fake queue."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet.protocol import Factory

from idtronic_tel.config_schema import AmiConfig
from idtronic_tel.core.phones import dial_forms
from idtronic_tel.core.ports import CallKind, CallOutcome
from idtronic_tel.ivr.dialer import CallbackDialer, originate_headers
from idtronic_tel.simulators.handset import Answer, Handset, HandsetDirectory
from tests.daemonharness import until
from tests.fakes_ami import FakeCallbackQueue, Harness, make_job, turn, within


def start(h: Harness, queue: FakeCallbackQueue, config: AmiConfig | None = None, **kw: Any) -> CallbackDialer:
    cfg = config or h.config()
    client = h.client(cfg)
    dialer = CallbackDialer(queue, client, cfg, worker="w1", poll_interval=kw.pop("poll_interval", 0.1), **kw)
    h.run(dialer)
    return dialer


def handsets(handset: Handset) -> HandsetDirectory:
    return HandsetDirectory(default=handset)


def test_number_forms_and_headers() -> None:
    assert dial_forms("+33611223344") == {
        "e164": "+33611223344",
        "digits": "33611223344",
        "national": "0611223344",
    }
    job = make_job("a1", kind=CallKind.MOBILE_CHANGE)
    cfg = AmiConfig(
        callback_channel="PJSIP/{national}@trunk",
        originate_timeout=40.0,
        caller_id='"id-tronic" <0100000000>',
    )
    assert originate_headers(job, cfg, channel_id="cb-a1") == [
        ("Channel", "PJSIP/0611223344@trunk"),
        ("Context", "idtronic-callback"),
        ("Exten", "s"),
        ("Priority", "1"),
        ("Timeout", "40000"),
        ("CallerID", '"id-tronic" <0100000000>'),
        ("Async", "true"),
        ("ChannelId", "cb-a1"),
        ("Variable", "IDTRONIC_CALLBACK=a1"),
        ("Variable", "IDTRONIC_KIND=mobile_change"),
    ]
    with pytest.raises(ValueError):
        originate_headers(make_job("a,b=c"), cfg)  # would inject a channel variable


@pytest_twisted.ensureDeferred
async def test_success_originate_and_answered() -> None:
    seen_env: list[dict[str, str]] = []

    async def agi(reactor: object, endpoint: str, env: dict[str, str], handset: Handset) -> str:
        seen_env.append(env)
        return "SUCCESS"

    h = Harness.start(agi_runner=agi, agi_endpoint="tcp:127.0.0.1:4573")
    try:
        queue = FakeCallbackQueue()
        start(h, queue)
        queue.add(make_job("a1"))
        await within(queue.when_outcomes(1))
        assert queue.outcomes[0][:2] == ("a1", CallOutcome.ANSWERED)
        assert queue.originated == {"a1": ("w1", "cb-a1")}
        (orig,) = h.factory.originates
        assert orig.headers == (
            ("Action", "Originate"),
            ("ActionID", "cb-a1"),
            ("Channel", "Local/0611223344@callee"),
            ("Context", "idtronic-callback"),
            ("Exten", "s"),
            ("Priority", "1"),
            ("Timeout", "30000"),
            ("CallerID", '"id-tronic" <0000000000>'),
            ("Async", "true"),
            ("ChannelId", "cb-a1"),
            ("Variable", "IDTRONIC_CALLBACK=a1"),
            ("Variable", "IDTRONIC_KIND=enroll"),
        )
        await within(h.factory.when("outcome", 1))
        await turn(3)
        assert len(seen_env) == 1 and seen_env[0]["agi_arg_1"] == "a1"
    finally:
        await h.close()


@pytest.mark.parametrize(
    ("answer", "outcome"),
    [
        (Answer.BUSY, CallOutcome.BUSY),
        (Answer.NO_ANSWER, CallOutcome.NO_ANSWER),
        (Answer.CONGESTION, CallOutcome.CONGESTION),
        (Answer.REJECT, CallOutcome.FAILED),
    ],
)
@pytest_twisted.ensureDeferred
async def test_failure_outcomes_mapped(answer: Answer, outcome: CallOutcome) -> None:
    h = Harness.start(handsets=handsets(Handset(answer)))
    try:
        queue = FakeCallbackQueue()
        start(h, queue, h.config(originate_timeout=0.2))  # no answer: after the Originate Timeout
        queue.add(make_job("a1"))
        await within(queue.when_outcomes(1))
        assert queue.outcome_of("a1") == [outcome]
        assert len(h.factory.originates) == 1
    finally:
        await h.close()


@pytest_twisted.ensureDeferred
async def test_bad_channel_technology_is_failed() -> None:
    h = Harness.start()
    try:
        queue = FakeCallbackQueue()
        start(h, queue, h.config(callback_channel="SIP/{national}"))
        queue.add(make_job("a1"))
        await within(queue.when_outcomes(1))
        assert queue.outcome_of("a1") == [CallOutcome.FAILED]
    finally:
        await h.close()


@pytest_twisted.ensureDeferred
async def test_kicked_session_no_second_originate_outcome_from_new_session() -> None:
    h = Harness.start(handsets=handsets(Handset(Answer.ANSWER, ring_seconds=0.5)))
    try:
        queue = FakeCallbackQueue()
        dialer = start(h, queue)
        queue.add(make_job("a1"))
        await within(h.factory.when("originate", 1))
        await turn(1)
        assert h.factory.kick_all() == 1  # plain EOF while the call rings
        await within(queue.when_outcomes(1))
        assert queue.outcome_of("a1") == [CallOutcome.ANSWERED]
        assert h.factory.logins == 2  # the OriginateResponse came on the new session
        await turn(5)
        assert len(h.factory.originates) == 1 and dialer.in_flight == 0
    finally:
        await h.close()


@pytest_twisted.ensureDeferred
async def test_kicked_before_the_immediate_response_is_still_never_resent() -> None:
    h = Harness.start(handsets=handsets(Handset(Answer.ANSWER, ring_seconds=0.3)))
    try:
        queue = FakeCallbackQueue()
        start(h, queue)
        kicked = h.factory.when("originate", 1)
        kicked.addCallback(lambda _: h.factory.kick_all())  # in the same tick as the Originate arrives
        queue.add(make_job("a1"))
        await within(queue.when_outcomes(1))
        assert queue.outcome_of("a1") == [CallOutcome.ANSWERED]
        assert len(h.factory.originates) == 1
    finally:
        await h.close()


@pytest_twisted.ensureDeferred
async def test_asterisk_killed_left_to_the_core_at_deadline_never_redialed() -> None:
    h = Harness.start(handsets=handsets(Handset(Answer.ANSWER, ring_seconds=5.0)))
    try:
        queue = FakeCallbackQueue()
        dialer = start(h, queue)
        queue.add(make_job("a1", deadline_in=1.0))
        await within(h.factory.when("originate", 1))
        await turn(1)
        h.factory.kill()  # EOF, and no OriginateResponse ever
        await within(h.factory.when("login", 2))
        await until(lambda: dialer.in_flight == 0, 10, "the dialer to stop listening at the deadline")
        await turn(5)
        # The core owns deadlines: its housekeeping resolves the attempt, the dialer decides nothing.
        assert queue.outcomes == []
        assert len(h.factory.originates) == 1 and dialer.in_flight == 0
        assert h.factory.outcomes == []  # the emulator never reported the call
    finally:
        await h.close()


@pytest_twisted.ensureDeferred
async def test_login_refused_jobs_stay_queued() -> None:
    h = Harness.start()
    try:
        queue = FakeCallbackQueue()
        queue.add(make_job("a1"))
        start(h, queue, h.config(secret="wrong"))
        await within(h.factory.when("login_failure", 2))
        await turn(3)
        assert queue.claims == [] and [j.attempt_id for j in queue.queued] == ["a1"]
        assert h.factory.originates == []
    finally:
        await h.close()


@pytest_twisted.ensureDeferred
async def test_garbage_lines_during_a_call() -> None:
    h = Harness.start(handsets=handsets(Handset(Answer.ANSWER, ring_seconds=0.2)))
    try:
        queue = FakeCallbackQueue()
        start(h, queue)
        queue.add(make_job("a1"))
        await within(h.factory.when("originate", 1))
        h.factory.inject(b"garbage\r\n\x00\x01\x02\r\n: no key\r\n\r\n")
        await within(queue.when_outcomes(1))
        assert queue.outcome_of("a1") == [CallOutcome.ANSWERED]
        assert h.factory.logins == 1
    finally:
        await h.close()


@pytest_twisted.ensureDeferred
async def test_refused_while_shutting_down_is_sent_again_after_restart() -> None:
    # "Asterisk is shutting down" proves the Originate was NOT queued: the one case where it is re-sent.
    h = Harness.start()
    try:
        queue = FakeCallbackQueue()
        client_ready = start(h, queue).ami.when_ready()
        await within(client_ready)
        h.factory.shutting_down = True  # `core restart gracefully` the client has not noticed yet
        queue.add(make_job("a1"))
        await within(h.factory.when("login", 1))
        await turn(5)
        assert queue.originated == {"a1": ("w1", "cb-a1")} and queue.outcomes == []
        h.factory._complete_shutdown()  # no calls: Shutdown event, EOF, restart
        await within(queue.when_outcomes(1))
        assert queue.outcome_of("a1") == [CallOutcome.ANSWERED]
        assert len(h.factory.originates) == 1  # the refused one never reached the Originate handler
        assert [m.action for m in h.factory.actions].count("Originate") == 2
    finally:
        await h.close()


@pytest_twisted.ensureDeferred
async def test_unresolved_at_start_up_are_watched_not_redialed() -> None:
    h = Harness.start(handsets=handsets(Handset(Answer.ANSWER, ring_seconds=0.5)))
    try:
        # A previous run originated "old1" (still ringing) and "old2" (lost with its Asterisk).
        previous = h.client()
        await within(previous.when_ready())
        await within(
            previous.originate(
                "cb-old1",
                [("Channel", "Local/0611223344@callee"), ("Context", "c"), ("Exten", "s"), ("Async", "true")],
            )
        )
        await previous.stopService()
        queue = FakeCallbackQueue()
        queue.preload_originated(make_job("old1"), "w1")
        queue.preload_originated(make_job("old2", deadline_in=0.5), "w1")
        dialer = start(h, queue)
        await within(queue.when_outcomes(1))
        assert queue.outcome_of("old1") == [CallOutcome.ANSWERED]
        await until(lambda: dialer.in_flight == 0, 10, "old2 to pass its deadline")
        assert queue.outcome_of("old2") == []  # left to the core's housekeeping
        assert len(h.factory.originates) == 1  # only the previous run's
    finally:
        await h.close()


@pytest_twisted.ensureDeferred
async def test_hundred_simultaneous_callbacks() -> None:
    h = Harness.start(handsets=handsets(Handset(Answer.ANSWER, ring_seconds=0.05)))
    try:
        queue = FakeCallbackQueue()
        start(h, queue, batch=20)
        queue.add(*[make_job(f"m{i:03d}", mobile=f"+336{i:08d}") for i in range(100)])
        await within(queue.when_outcomes(100), 30.0)
        assert sorted(a for a, _, _ in queue.outcomes) == [f"m{i:03d}" for i in range(100)]
        assert {o for _, o, _ in queue.outcomes} == {CallOutcome.ANSWERED}
        ids = [m.action_id for m in h.factory.originates]
        assert len(ids) == 100 and len(set(ids)) == 100
        channels = {m.get("Channel") for m in h.factory.originates}
        assert len(channels) == 100
    finally:
        await h.close()


@pytest_twisted.ensureDeferred
async def test_real_agi_emulator_is_called_when_answered() -> None:
    """Default runner: idtronic_tel.simulators.asterisk_agi.run_agi_channel (nothing listens: FAILURE)."""
    from twisted.internet import reactor

    closed = reactor.listenTCP(0, Factory(), interface="127.0.0.1")  # type: ignore[attr-defined]
    port = closed.getHost().port
    await closed.stopListening()
    h = Harness.start(agi_endpoint=f"tcp:127.0.0.1:{port}", handsets=handsets(Handset.scripted("w0.1|d1#")))
    try:
        queue = FakeCallbackQueue()
        start(h, queue)
        queue.add(make_job("a1"))
        await within(queue.when_outcomes(1))
        assert queue.outcome_of("a1") == [CallOutcome.ANSWERED]
        for _ in range(100):  # the AGI attempt fails, then the call hangs up
            if not h.factory.calls:
                break
            await turn(1)
        assert h.factory.calls == [] and h.factory.processed_calls == 1
    finally:
        await h.close()
