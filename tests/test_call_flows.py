"""The IVR state machines, one step at a time, with a fake channel and the in-memory gateway."""

from __future__ import annotations

from collections import deque
from collections.abc import Coroutine
from typing import Any

import pytest
from twisted.internet.defer import Deferred

from idtronic_tel.core.ports import CallKind
from idtronic_tel.core.states import EndReason
from idtronic_tel.ivr.agi_codec import AgiEnv
from idtronic_tel.ivr.agi_protocol import (
    AgiCommandTimeout,
    AgiSessionError,
    ChannelHungUp,
    DtmfEntry,
    PromptMissing,
)
from idtronic_tel.ivr.call_flows import PROMPTS_MISSING, Event, FlowSettings
from idtronic_tel.ivr.enroll_flow import ENROLL_TRANSITIONS, EnrollmentFlow, EnrollState
from idtronic_tel.ivr.token_flow import TOKEN_TRANSITIONS, TokenState, VoiceTokenFlow
from tests.fakes_ivr import FakeIvrGateway

E, T = EnrollState, TokenState
SETTINGS = FlowSettings(dtmf_timeout_ms=10000, token_repeats=2)


class FakeChannel:
    """Records what the flow asks; `script` gives results (or exceptions) for get_data / failures."""

    def __init__(self, args: tuple[str, ...] = ("att-1",), variables: dict[str, str] | None = None) -> None:
        self.env: AgiEnv | None = AgiEnv(values={"agi_network_script": "enroll"}, args=args)
        self.variables = variables or {}
        self.calls: list[tuple[str, ...]] = []
        self.entries: deque[str | None] = deque()  # None: timeout with nothing keyed
        self.barge_in: deque[str] = deque()  # digits that stop the next interruptible prompts ("": none)
        self.missing: set[str] = set()  # prompts Asterisk cannot play
        self.escapes: list[str] = []  # escape digits of each STREAM FILE
        self.fail: dict[str, Exception] = {}  # method -> exception to raise

    def _record(self, *call: str) -> None:
        self.calls.append(call)
        exc = self.fail.get(call[0])
        if exc is not None:
            raise exc

    async def answer(self) -> None:
        self._record("answer")

    async def stream_file(self, name: str, escape_digits: str = "") -> str:
        self._record("stream_file", name)
        self.escapes.append(escape_digits)
        if name in self.missing:
            raise PromptMissing("STREAM FILE", name)
        return self.barge_in.popleft() if escape_digits and self.barge_in else ""

    async def get_data(self, prompt: str, timeout_ms: int, max_digits: int) -> DtmfEntry:
        self._record("get_data", prompt, str(timeout_ms), str(max_digits))
        if prompt in self.missing:
            raise PromptMissing("GET DATA", prompt)
        keyed = self.entries.popleft()
        return DtmfEntry(keyed or "", timed_out=keyed is None or len(keyed) < max_digits)

    async def say_digits(self, digits: str) -> None:
        self._record("say_digits", digits)

    async def get_variable(self, name: str) -> str | None:
        self._record("get_variable", name)
        return self.variables.get(name)

    async def hangup(self) -> None:
        self._record("hangup")


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """The fakes answer synchronously: the coroutine finishes at once."""
    out: list[Any] = []
    Deferred.fromCoroutine(coro).addBoth(out.append)
    assert out, "flow blocked"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


def walk(flow: EnrollmentFlow | VoiceTokenFlow) -> list[Any]:
    states = [flow.state]
    while flow.state not in (E.DONE, T.DONE):
        states.append(run(flow.step()))
        assert len(states) < 50
    return states


def enroll(channel: FakeChannel, gateway: FakeIvrGateway) -> EnrollmentFlow:
    return EnrollmentFlow(channel, gateway, SETTINGS)


def test_tables_cover_every_live_state_for_failures() -> None:
    for table, states, ending, done in (
        (ENROLL_TRANSITIONS, EnrollState, E.ENDING, E.DONE),
        (TOKEN_TRANSITIONS, TokenState, T.ENDING, T.DONE),
    ):
        for state in states:
            if state in (ending, done):
                continue
            for event in (Event.HUNG_UP, Event.AGI_TIMEOUT, Event.AGI_ERROR, Event.CORE_ERROR):
                assert table.allows(state, event)
        assert table.next(ending, Event.ENDED) is done
        # every state can reach DONE
        reachable = {done}
        changed = True
        while changed:
            changed = False
            for (src, _), dst in table.table.items():
                if dst in reachable and src not in reachable:
                    reachable.add(src)
                    changed = True
        assert reachable == set(states)


def test_success_step_by_step() -> None:
    gateway, channel = FakeIvrGateway(), FakeChannel()
    gateway.add("att-1", last8="12345678")
    channel.entries.append("12345678")
    flow = enroll(channel, gateway)
    assert run(flow.step()) is E.LOOKUP
    assert channel.calls == []  # agi_arg_1 gave the id: no GET VARIABLE
    assert run(flow.step()) is E.GREET
    assert run(flow.step()) is E.ASK
    assert channel.calls == [("answer",), ("stream_file", "idtronic-welcome")]
    assert run(flow.step()) is E.CHECK
    assert channel.calls[-1] == ("get_data", "idtronic-enter-last8", "10000", "8")
    assert run(flow.step()) is E.SUCCESS
    assert run(flow.step()) is E.HANG_UP
    assert channel.calls[-1] == ("stream_file", "idtronic-success")
    assert run(flow.step()) is E.ENDING
    assert gateway.attempts["att-1"].end_reasons == []
    assert run(flow.step()) is E.DONE
    assert gateway.attempts["att-1"].end_reasons == ["completed"]
    assert channel.calls[-1] == ("hangup",)


def test_mobile_change_success_prompt() -> None:
    gateway, channel = FakeIvrGateway(), FakeChannel()
    gateway.add("att-1", kind=CallKind.MOBILE_CHANGE)
    channel.entries.append("12345678")
    walk(enroll(channel, gateway))
    assert ("stream_file", "idtronic-mobile-success") in channel.calls


def test_wrong_three_times_then_failed() -> None:
    gateway, channel = FakeIvrGateway(), FakeChannel()
    gateway.add("att-1", entries_left=3)
    channel.entries.extend(["11111111", "22222222", "33333333"])
    states = walk(enroll(channel, gateway))
    assert states == [
        E.IDENTIFY,
        E.LOOKUP,
        E.GREET,
        E.ASK,
        E.CHECK,
        E.WRONG,
        E.ASK,
        E.CHECK,
        E.WRONG,
        E.ASK,
        E.CHECK,
        E.FAILED,
        E.HANG_UP,
        E.ENDING,
        E.DONE,
    ]
    prompts = [c[1] for c in channel.calls if c[0] == "stream_file"]
    assert prompts == ["idtronic-welcome", "idtronic-wrong-retry", "idtronic-wrong-retry", "idtronic-failed"]
    assert gateway.attempts["att-1"].end_reasons == ["completed"]


def test_locked_verdict() -> None:
    gateway, channel = FakeIvrGateway(), FakeChannel()
    gateway.add("att-1", budget=1)
    channel.entries.append("00000000")
    states = walk(enroll(channel, gateway))
    assert E.LOCKED in states and ("stream_file", "idtronic-locked") in channel.calls


def test_timeout_with_nothing_keyed_counts_as_an_entry() -> None:
    gateway, channel = FakeIvrGateway(), FakeChannel()
    gateway.add("att-1", entries_left=2)
    channel.entries.extend([None, "1234"])  # nothing, then a partial entry
    walk(enroll(channel, gateway))
    assert gateway.attempts["att-1"].entries == ["", "1234"]  # the empty entry reached the core
    prompts = [c[1] for c in channel.calls if c[0] == "stream_file"]
    assert prompts == ["idtronic-welcome", "idtronic-no-entry", "idtronic-failed"]


def test_the_core_alone_counts_entries() -> None:
    gateway, channel = FakeIvrGateway(), FakeChannel()
    gateway.add("att-1", entries_left=5)
    channel.entries.extend(["1", "2", "3", "4", "5"])
    walk(enroll(channel, gateway))
    assert gateway.attempts["att-1"].entries == ["1", "2", "3", "4", "5"]  # asked while the core said RETRY
    assert gateway.attempts["att-1"].verdicts[-1] == "failed"


def test_attempt_id_from_channel_variable() -> None:
    gateway = FakeIvrGateway()
    gateway.add("abc123")
    channel = FakeChannel(args=("", ""), variables={"IDTRONIC_CALLBACK": "abc123"})
    channel.entries.append("12345678")
    flow = enroll(channel, gateway)
    walk(flow)
    assert channel.calls[0] == ("get_variable", "IDTRONIC_CALLBACK")
    assert flow.attempt_id == "abc123" and gateway.attempts["abc123"].end_reasons == ["completed"]


def test_no_attempt_id_refused_without_core() -> None:
    gateway, channel = FakeIvrGateway(), FakeChannel(args=())
    states = walk(enroll(channel, gateway))
    assert states == [E.IDENTIFY, E.REFUSE, E.HANG_UP, E.ENDING, E.DONE]
    assert gateway.log == []
    assert channel.calls[-2:] == [("stream_file", "idtronic-unknown-call"), ("hangup",)]


def test_unknown_attempt_refused_and_not_ended() -> None:
    gateway, channel = FakeIvrGateway(), FakeChannel(args=("nope",))
    states = walk(enroll(channel, gateway))
    assert states == [E.IDENTIFY, E.LOOKUP, E.REFUSE, E.HANG_UP, E.ENDING, E.DONE]
    assert gateway.log == [("start_call", "nope")]  # no end_call for a call the core does not know
    assert ("stream_file", "idtronic-unknown-call") in channel.calls


def test_wrong_kind_refused_and_ended_as_error() -> None:
    gateway, channel = FakeIvrGateway(), FakeChannel()
    gateway.add("att-1", kind=CallKind.VOICE_TOKEN, token="123456")
    walk(enroll(channel, gateway))
    assert ("stream_file", "idtronic-unknown-call") in channel.calls
    assert gateway.attempts["att-1"].end_reasons == ["error"]


@pytest.mark.parametrize(
    ("method", "exc", "reason"),
    [
        ("get_data", ChannelHungUp("GET DATA: -1"), "hangup"),
        ("stream_file", ChannelHungUp("STREAM FILE: -1"), "hangup"),
        ("answer", AgiCommandTimeout("ANSWER"), "timeout"),
        ("get_data", AgiSessionError("GET DATA: malformed reply"), "error"),
    ],
)
def test_channel_failures_end_the_call_once(method: str, exc: Exception, reason: str) -> None:
    gateway, channel = FakeIvrGateway(), FakeChannel()
    gateway.add("att-1")
    channel.entries.append("12345678")
    channel.fail[method] = exc
    flow = enroll(channel, gateway)
    states = walk(flow)
    assert states[-2:] == [E.ENDING, E.DONE]
    assert ("hangup",) not in channel.calls  # the session is gone or dead: no more commands
    assert gateway.attempts["att-1"].end_reasons == [reason]


def test_hangup_after_the_verdict_is_still_finished() -> None:
    gateway, channel = FakeIvrGateway(), FakeChannel()
    gateway.add("att-1")
    channel.entries.append("12345678")
    flow = enroll(channel, gateway)
    while flow.state is not E.SUCCESS:
        run(flow.step())
    channel.fail["stream_file"] = ChannelHungUp("STREAM FILE: -1")  # the caller leaves during the prompt
    assert walk(flow)[1:] == [E.ENDING, E.DONE]
    assert gateway.attempts["att-1"].end_reasons == ["completed"]


@pytest.mark.parametrize("prompt", ["idtronic-welcome", "idtronic-enter-last8", "idtronic-wrong-retry"])
def test_missing_prompt_ends_the_call_as_an_error(prompt: str) -> None:
    gateway, channel = FakeIvrGateway(), FakeChannel()
    gateway.add("att-1", last8="12345678")
    channel.entries.extend(["11111111", "12345678"])
    channel.missing.add(prompt)
    before = PROMPTS_MISSING.labels(prompt)._value.get()
    states = walk(enroll(channel, gateway))
    assert states[-3:] == [E.HANG_UP, E.ENDING, E.DONE]
    assert channel.calls[-1] == ("hangup",)  # the channel lives: hang up politely
    assert gateway.attempts["att-1"].end_reasons == ["prompt_missing"]
    assert PROMPTS_MISSING.labels(prompt)._value.get() == before + 1


def test_missing_prompt_after_the_verdict_keeps_it() -> None:
    gateway, channel = FakeIvrGateway(), FakeChannel()
    gateway.add("att-1")
    channel.entries.append("12345678")
    channel.missing.add("idtronic-success")
    walk(enroll(channel, gateway))
    assert gateway.attempts["att-1"].verdicts == ["accepted"]
    assert gateway.attempts["att-1"].end_reasons == ["completed"]


def test_digit_keyed_during_the_welcome_begins_the_entry() -> None:
    gateway, channel = FakeIvrGateway(), FakeChannel()
    gateway.add("att-1", last8="49927398")
    channel.barge_in.append("4")
    channel.entries.append("9927398")
    flow = enroll(channel, gateway)
    states = walk(flow)
    assert states[:6] == [E.IDENTIFY, E.LOOKUP, E.GREET, E.CONTINUE, E.CHECK, E.SUCCESS]
    assert channel.escapes[0] == "0123456789"  # the welcome is interruptible
    assert ("get_data", "", "10000", "7") in channel.calls  # the other 7 digits, no prompt
    assert gateway.attempts["att-1"].entries == ["49927398"]
    assert gateway.attempts["att-1"].verdicts == ["accepted"]
    assert flow._entry is None  # the digits are not kept on the flow


def test_typed_ahead_partial_entry_is_asked_again_without_counting() -> None:
    gateway, channel = FakeIvrGateway(), FakeChannel()
    gateway.add("att-1", last8="49927398", budget=5)
    channel.barge_in.extend(["8", "4"])  # the welcome, then the wrong-entry prompt, are interrupted
    channel.entries.extend(["57", "9927398"])  # "857#": a partial entry, then the right one
    walk(enroll(channel, gateway))
    attempt = gateway.attempts["att-1"]
    assert attempt.entries == ["857", "49927398"]
    assert attempt.verdicts == ["retry", "accepted"] and attempt.budget == 5
    prompts = [c[1] for c in channel.calls if c[0] == "stream_file"]
    assert prompts == ["idtronic-welcome", "idtronic-wrong-retry", "idtronic-success"]


def test_core_error_during_check_hangs_up_politely() -> None:
    gateway, channel = FakeIvrGateway(), FakeChannel()
    gateway.add("att-1")
    gateway.failing.add("check_card_digits")
    channel.entries.append("12345678")
    states = walk(enroll(channel, gateway))
    assert states[-4:] == [E.CHECK, E.HANG_UP, E.ENDING, E.DONE]
    assert gateway.attempts["att-1"].end_reasons == ["error"]


def test_core_error_at_start_still_ends_the_attempt() -> None:
    gateway, channel = FakeIvrGateway(), FakeChannel()
    gateway.add("att-1")
    gateway.failing.add("start_call")
    walk(enroll(channel, gateway))
    assert gateway.log[-1] == ("end_call", "att-1")
    assert channel.calls == [("hangup",)]


def test_end_call_failure_is_contained() -> None:
    gateway, channel = FakeIvrGateway(), FakeChannel()
    gateway.add("att-1")
    gateway.failing.add("end_call")
    channel.entries.append("12345678")
    assert run(enroll(channel, gateway).run()) is EndReason.COMPLETED


def test_cancelled_core_call_ends_the_call() -> None:
    gateway, channel = FakeIvrGateway(), FakeChannel()
    gateway.add("att-1")
    gateway.hold["check_card_digits"] = Deferred()
    channel.entries.append("12345678")
    d = Deferred.fromCoroutine(enroll(channel, gateway).run())
    assert not d.called
    d.cancel()  # e.g. the core's Deferred was cancelled: treated as a core error
    out: list[Any] = []
    d.addBoth(out.append)
    assert out == [EndReason.ERROR]
    assert channel.calls[-1] == ("hangup",)
    assert gateway.attempts["att-1"].end_reasons == ["error"]


# -- voice token -------------------------------------------------------------------------------------


def test_voice_token_step_by_step() -> None:
    gateway, channel = FakeIvrGateway(), FakeChannel()
    gateway.add("att-1", kind=CallKind.VOICE_TOKEN, token="483920")
    flow = VoiceTokenFlow(channel, gateway, SETTINGS)
    states = walk(flow)
    assert states == [
        T.IDENTIFY,
        T.LOOKUP,
        T.GREET,
        T.SAY,
        T.REPEAT,
        T.SAY,
        T.GOODBYE,
        T.HANG_UP,
        T.ENDING,
        T.DONE,
    ]
    assert channel.calls == [
        ("answer",),
        ("stream_file", "idtronic-token-intro"),
        ("say_digits", "483920"),
        ("stream_file", "idtronic-token-repeat"),
        ("say_digits", "483920"),
        ("stream_file", "idtronic-goodbye"),
        ("hangup",),
    ]
    assert gateway.attempts["att-1"].end_reasons == ["completed"]


def test_voice_token_repeats_setting() -> None:
    gateway, channel = FakeIvrGateway(), FakeChannel()
    gateway.add("att-1", kind=CallKind.VOICE_TOKEN, token="483920")
    walk(VoiceTokenFlow(channel, gateway, FlowSettings(token_repeats=3)))
    assert [c for c in channel.calls if c[0] == "say_digits"] == [("say_digits", "483920")] * 3


def test_voice_token_without_token_is_an_error() -> None:
    gateway, channel = FakeIvrGateway(), FakeChannel()
    gateway.add("att-1", kind=CallKind.VOICE_TOKEN, token=None)
    walk(VoiceTokenFlow(channel, gateway, SETTINGS))
    assert not [c for c in channel.calls if c[0] == "say_digits"]
    assert gateway.attempts["att-1"].end_reasons == ["error"]


def test_voice_token_refuses_enrollment_calls() -> None:
    gateway, channel = FakeIvrGateway(), FakeChannel()
    gateway.add("att-1", kind=CallKind.ENROLL)
    walk(VoiceTokenFlow(channel, gateway, SETTINGS))
    assert ("stream_file", "idtronic-unknown-call") in channel.calls


def test_voice_token_hangup_mid_reading() -> None:
    gateway, channel = FakeIvrGateway(), FakeChannel()
    gateway.add("att-1", kind=CallKind.VOICE_TOKEN, token="483920")
    channel.fail["say_digits"] = ChannelHungUp("SAY DIGITS: -1")
    walk(VoiceTokenFlow(channel, gateway, SETTINGS))
    assert gateway.attempts["att-1"].end_reasons == ["hangup"]
