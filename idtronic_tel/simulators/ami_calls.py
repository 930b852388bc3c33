"""The call side of the Asterisk emulator: an Originate becomes two Local channels that ring, answer or
fail as the simulated handset decides, with the recorded Newchannel / Dial / Newstate / Hangup events and
ONE `OriginateResponse`; an answered call runs the daemon's FastAGI script through
`asterisk_agi.run_agi_channel` (injectable for tests). The manager side (sessions, who gets which event,
test controls) is `AmiEmulatorFactory`'s, which is a `CallEngine`."""

from __future__ import annotations

import itertools
import random
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import CancelledError, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from idtronic_tel import endpoints
from idtronic_tel.ivr.ami_codec import Message
from idtronic_tel.simulators.ami_channels import (
    CAUSE_TEXT,
    REASON_ANSWERED,
    REASON_BUSY,
    REASON_CONGESTION,
    REASON_HANGUP,
    REASON_NO_ANSWER,
    AgiRunner,
    Call,
    Channel,
    parse_caller_id,
    parse_variables,
)
from idtronic_tel.simulators.asterisk_agi import default_env, run_agi_channel
from idtronic_tel.simulators.handset import Answer, HandsetDirectory


class CallEngine(ABC):
    """The calls in progress and their outcomes; events go out through `broadcast`."""

    log = Logger()

    def __init__(
        self,
        *,
        reactor: Any,
        handsets: HandsetDirectory,
        agi_endpoint: str | None,
        agi_script: str,
        language: str,
        agi_runner: AgiRunner | None,
        answered_hold: float,
        loaded_technologies: tuple[str, ...],
        seed: int | None,
    ) -> None:
        self.reactor = reactor
        self.clock: IReactorTime = reactor
        self.handsets = handsets
        self.agi_endpoint = agi_endpoint
        self.agi_script = agi_script
        self.language = language
        self.agi_runner = agi_runner
        self.answered_hold = answered_hold  # without FastAGI: how long an answered call stays up
        self.loaded_technologies = {t.lower() for t in loaded_technologies}
        self.random = random.Random(seed)
        self.started_at = self.clock.seconds()
        self.calls: list[Call] = []
        self.outcomes: list[tuple[str | None, str, int]] = []  # (ActionID, Response, Reason) sent
        self.processed_calls = 0
        self._chan_seq = itertools.count(0x70)
        self._uid_seq = itertools.count(1)

    @abstractmethod
    def broadcast(self, pairs: list[tuple[str, str]], event_class: str = "call") -> None:
        """Send an event to every session that subscribed to its class."""

    @abstractmethod
    def _notify(self, what: str) -> None:
        """A counted thing happened (here: "outcome")."""

    @abstractmethod
    def _call_removed(self) -> None:
        """A call is over (a graceful restart waits for the last one)."""

    def _channel_event(self, name: str, ch: Channel, *extra: tuple[str, str]) -> None:
        self.broadcast([("Event", name), ("Privilege", "call,all"), *ch.headers(), *extra])

    def channels(self) -> list[Channel]:
        out: list[Channel] = []
        for call in self.calls:
            out.extend(c for c in (call.two, call.one) if c is not None)
        return out

    def _uniqueid(self) -> str:
        return f"{int(self.started_at)}.{next(self._uid_seq)}"

    def start_call(self, msg: Message, timeout_ms: int, sync_reply: Callable[[bool], None] | None) -> None:
        dial = msg.get("Channel") or ""
        tech, _, rest = dial.partition("/")
        number, _, callee_ctx = rest.partition("@")
        call = Call(
            action_id=msg.action_id,
            dial_string=dial,
            number=number,
            context=msg.get("Context") or "",
            exten=msg.get("Exten") or "",
            priority=msg.get("Priority") or "1",
            timeout_ms=timeout_ms,
            caller=parse_caller_id(msg.get("CallerID")),
            variables=parse_variables(msg.get_all("Variable")),
            handset=self.handsets.take(number),
            sync_reply=sync_reply,
        )
        if tech.lower() not in self.loaded_technologies or not number:
            # No channel is created at all: only the failure (ami-originate-bad-channel-tech.txt).
            self.clock.callLater(0, self._finish, call, "Failure", REASON_HANGUP)
            return
        self.calls.append(call)
        seq = next(self._chan_seq)
        base = f"{dial}-{seq:08x}"
        channel_id = msg.get("ChannelId")
        uid1 = channel_id or self._uniqueid()
        uid2 = f"{channel_id};2" if channel_id else self._uniqueid()
        now = self.clock.seconds()
        call.one = Channel(
            f"{base};1",
            uid1,
            uid1,
            callee_ctx,
            number,
            0,
            caller=call.caller,
            connected=call.caller,
            application="AppDial2",
            application_data="(Outgoing Line)",
            created=now,
        )
        call.two = Channel(
            f"{base};2",
            uid2,
            uid1,
            callee_ctx,
            number,
            4,
            caller=call.caller,
            connected=call.caller,
            application="Wait",
            created=now,
        )
        self._channel_event("Newchannel", call.one)
        self._channel_event("Newchannel", call.two)
        self._dial_event("DialBegin", call, ("DialString", rest))
        h = call.handset
        ring = max(0.0, h.ring_seconds)
        timeout = timeout_ms / 1000.0
        if h.live is not None:
            self._ringing(call)
            self._later(call, timeout, self._no_answer, call)
            h.live.ringing(lambda: self._picked_up(call), lambda: self._declined(call))
        elif h.answer is Answer.NO_ANSWER or (h.answer is Answer.ANSWER and ring >= timeout):
            self._ringing(call)
            self._later(call, timeout, self._no_answer, call)
        elif h.answer is Answer.ANSWER:
            if ring > 0:
                self._ringing(call)
            self._later(call, ring, self._answer, call)
        else:
            self._later(call, min(ring, timeout), self._reject, call, h.answer)

    def _picked_up(self, call: Call) -> None:
        if call in self.calls and not call.answered:
            _stop_timers(call)
            self._answer(call)

    def _declined(self, call: Call) -> None:
        if call in self.calls and not call.answered:
            _stop_timers(call)
            self._reject(call, Answer.REJECT)

    def _later(self, call: Call, delay: float, fn: Callable[..., None], *args: Any) -> None:
        call.timers.append(self.clock.callLater(delay, fn, *args))

    def _dial_event(self, name: str, call: Call, *extra: tuple[str, str]) -> None:
        assert call.one is not None
        self.broadcast([("Event", name), ("Privilege", "call,all"), *call.one.headers("Dest"), *extra])

    def _set_state(self, ch: Channel, state: int) -> None:
        ch.state = state
        self._channel_event("Newstate", ch)

    def _ringing(self, call: Call) -> None:
        assert call.one is not None
        self._set_state(call.one, 5)
        self._dial_event("DialState", call, ("DialStatus", "RINGING"))

    def _hangup(self, ch: Channel | None, cause: int) -> None:
        if ch is not None:
            text = CAUSE_TEXT.get(cause, "Unknown")
            self._channel_event("Hangup", ch, ("Cause", str(cause)), ("Cause-txt", text))

    def _answer(self, call: Call) -> None:
        assert call.one is not None and call.two is not None
        call.answered = True
        self._set_state(call.two, 6)
        self._set_state(call.one, 6)
        self._dial_event("DialEnd", call, ("DialStatus", "ANSWER"))
        self._outcome(call, "Success", REASON_ANSWERED)
        # ;1 now runs the caller context: Answer() then AGI() at priority 2.
        call.one.context, call.one.exten, call.one.priority = call.context, call.exten, 2
        call.one.application, call.one.application_data = "AGI", f"agi://.../{self.script_for(call)}"
        if self.agi_endpoint is None:
            self._later(call, self.answered_hold, self._end, call, 16, 16)
            return
        runner = self.agi_runner or run_agi_channel
        env = self.agi_env(call)
        call.agi = ensureDeferred(runner(self.reactor, self.agi_endpoint, env, call.handset))

        def done(status: str) -> None:
            call.agi = None
            call.agi_status = status
            self._end(call, 16, 16)

        def failed(f: Failure) -> None:
            call.agi = None
            if f.check(CancelledError):
                return  # kill(): the call vanished
            self.log.failure("emulator: FastAGI session failed", f)
            call.agi_status = "FAILURE"
            self._end(call, 16, 16)

        call.agi.addCallbacks(done, failed)

    def script_for(self, call: Call) -> str:
        """As dialplan/extensions_idtronic.conf routes it: the voice fallback runs `voice-token`."""
        if call.variables.get("IDTRONIC_KIND") == "voice_token":
            return "voice-token"
        return self.agi_script

    def agi_env(self, call: Call) -> dict[str, str]:
        """The FastAGI environment Asterisk sends (agi-*.txt), for the ;1 channel."""
        assert call.one is not None
        assert self.agi_endpoint is not None
        script = self.script_for(call)
        server = endpoints.client(self.agi_endpoint)  # the agi://host:port/ of the dialplan
        env = default_env(
            script,
            (call.variables.get("IDTRONIC_CALLBACK", ""),),
            host=server.host,
            port=server.port or 4573,
            language=self.language,
            channel=call.one.name,
            uniqueid=call.one.uniqueid,
            callerid=call.caller[0],
        )
        env.update(
            agi_calleridname=call.caller[1],
            agi_context=call.context,
            agi_extension=call.exten,
            agi_priority="2",
            agi_threadid=str(140000000000000 + self.random.randrange(1_000_000_000)),
        )
        return env

    def _no_answer(self, call: Call) -> None:
        self._hangup(call.two, 19)
        self._hangup(call.one, 19)
        self._finish(call, "Failure", REASON_NO_ANSWER)

    def _reject(self, call: Call, answer: Answer) -> None:
        if answer is Answer.BUSY:
            self._dial_event("DialEnd", call, ("DialStatus", "BUSY"))
            self._hangup(call.two, 17)
            self._outcome(call, "Failure", REASON_BUSY)
            self._hangup(call.one, 0)
        elif answer is Answer.CONGESTION:
            assert call.two is not None
            self._set_state(call.two, 7)
            self._dial_event("DialEnd", call, ("DialStatus", "CONGESTION"))
            self._hangup(call.two, 34)
            self._hangup(call.one, 0)
            self._outcome(call, "Failure", REASON_CONGESTION)
        else:  # REJECT: Hangup(21)
            self._hangup(call.two, 21)
            self._dial_event("DialEnd", call, ("DialStatus", "NOANSWER"))
            self._outcome(call, "Failure", REASON_HANGUP)
            self._hangup(call.one, 21)
        self._remove(call)

    def _finish(self, call: Call, response: str, reason: int) -> None:
        self._outcome(call, response, reason)
        self._remove(call)

    def _end(self, call: Call, cause_one: int, cause_two: int) -> None:
        """An answered call ends (AGI finished or hold time over): both halves hang up."""
        if call not in self.calls:
            return
        self._hangup(call.one, cause_one)
        self._hangup(call.two, cause_two)
        self._remove(call)

    def _outcome(self, call: Call, response: str, reason: int) -> None:
        self.outcomes.append((call.action_id, response, reason))
        if call.sync_reply is not None:
            call.sync_reply(response == "Success")  # Async: false: no OriginateResponse event
        else:
            success = response == "Success" and call.one is not None
            pairs = [("Event", "OriginateResponse"), ("Privilege", "call,all")]
            if call.action_id is not None:
                pairs.append(("ActionID", call.action_id))
            pairs += [
                ("Response", response),
                ("Channel", call.one.name if success and call.one else call.dial_string),
                ("Context", call.context),
                ("Exten", call.exten),
                ("Reason", str(reason)),
                ("Uniqueid", call.one.uniqueid if success and call.one else "<unknown>"),
                ("CallerIDNum", call.caller[0]),
                ("CallerIDName", call.caller[1]),
            ]
            self.broadcast(pairs)
        self._notify("outcome")

    def _remove(self, call: Call) -> None:
        _stop_timers(call)
        if call in self.calls:
            self.calls.remove(call)
            self.processed_calls += 1
            if call.handset.live is not None:
                call.handset.live.ended()
        self._call_removed()

    def drop_calls(self) -> None:
        """Every call vanishes at once, without any event (Asterisk killed)."""
        for call in list(self.calls):
            _stop_timers(call)
            if call.agi is not None and not call.agi.called:
                call.agi.cancel()
        self.calls.clear()


def _stop_timers(call: Call) -> None:
    for t in call.timers:
        if t.active():
            t.cancel()
    call.timers.clear()
