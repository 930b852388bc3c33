"""The enrollment and mobile-change callback (docs/rules.md §1.6, §3.2): ask for the last 8 card digits,
let the core decide on each entry, say the outcome. The driver is `call_flows.CallFlow`.

The keyed digits live only in a local variable between GET DATA and check_card_digits: they are never
logged, stored on the flow, put in a channel variable, a VERBOSE, or an exception message.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Mapping

from idtronic_tel.core.ports import CallKind, DigitsVerdict, IvrGateway
from idtronic_tel.ivr.agi_protocol import DtmfEntry
from idtronic_tel.ivr.call_flows import AgiChannel, CallFlow, Event, FlowSettings, flow_table, log
from idtronic_tel.ivr.prompts import Prompt
from idtronic_tel.logsafe import loggable

LAST_DIGITS = 8
BARGE_IN_DIGITS = "0123456789"  # escape digits of the interruptible prompts

_VERDICT_EVENT = {
    DigitsVerdict.ACCEPTED: Event.ACCEPTED,
    DigitsVerdict.RETRY: Event.RETRY,
    DigitsVerdict.FAILED: Event.FAILED,
    DigitsVerdict.LOCKED: Event.LOCKED,
}


class EnrollState(enum.Enum):
    IDENTIFY = enum.auto()  # attempt id from agi_arg_1, else GET VARIABLE IDTRONIC_CALLBACK
    LOOKUP = enum.auto()  # IvrGateway.start_call
    REFUSE = enum.auto()  # unknown attempt: refusal prompt
    GREET = enum.auto()  # ANSWER, welcome prompt (interruptible)
    ASK = enum.auto()  # GET DATA for the last 8 digits
    CONTINUE = enum.auto()  # a digit stopped a prompt: GET DATA without prompt for the other 7
    CHECK = enum.auto()  # IvrGateway.check_card_digits
    WRONG = enum.auto()  # wrong-entry (or no-entry) prompt (interruptible), then ASK again
    SUCCESS = enum.auto()
    FAILED = enum.auto()
    LOCKED = enum.auto()
    HANG_UP = enum.auto()
    ENDING = enum.auto()  # IvrGateway.end_call
    DONE = enum.auto()


E = EnrollState
ENROLL_TRANSITIONS = flow_table(
    "enrollment call",
    EnrollState,
    {
        (E.GREET, Event.NEXT): E.ASK,
        (E.GREET, Event.KEYED): E.CONTINUE,
        (E.ASK, Event.ENTERED): E.CHECK,
        (E.CONTINUE, Event.ENTERED): E.CHECK,
        (E.CHECK, Event.ACCEPTED): E.SUCCESS,
        (E.CHECK, Event.RETRY): E.WRONG,
        (E.CHECK, Event.FAILED): E.FAILED,
        (E.CHECK, Event.LOCKED): E.LOCKED,
        (E.WRONG, Event.NEXT): E.ASK,
        (E.WRONG, Event.KEYED): E.CONTINUE,
        (E.SUCCESS, Event.NEXT): E.HANG_UP,
        (E.FAILED, Event.NEXT): E.HANG_UP,
        (E.LOCKED, Event.NEXT): E.HANG_UP,
    },
)


class EnrollmentFlow(CallFlow[EnrollState]):
    states = EnrollState
    transitions = ENROLL_TRANSITIONS
    expected_kinds = frozenset({CallKind.ENROLL, CallKind.MOBILE_CHANGE})

    def __init__(self, channel: AgiChannel, gateway: IvrGateway, settings: FlowSettings) -> None:
        super().__init__(channel, gateway, settings)
        self.last_entry_empty = False  # only whether it was empty: the digits themselves are not kept
        self._entry: DtmfEntry | None = None  # the first digit (barge-in) or the entry, until CHECK

    def own_actions(self) -> Mapping[EnrollState, Callable[[], Awaitable[Event]]]:
        return {
            E.GREET: self._greet,
            E.ASK: self._ask,
            E.CONTINUE: self._continue,
            E.CHECK: self._check,
            E.WRONG: self._wrong,
            E.SUCCESS: self._success,
            E.FAILED: self._failed,
            E.LOCKED: self._locked,
        }

    async def _greet(self) -> Event:
        await self.channel.answer()
        return await self._interruptible(Prompt.WELCOME)

    async def _interruptible(self, prompt: Prompt) -> Event:
        """Barge-in: the digit that stops the prompt begins the entry (Asterisk drops digits keyed between
        two commands, so the rest is asked for at once, in CONTINUE)."""
        digit = await self.channel.stream_file(prompt.value, BARGE_IN_DIGITS)
        if not digit:
            return Event.NEXT
        self._entry = DtmfEntry(digit)
        return Event.KEYED

    async def _ask(self) -> Event:
        self._entry = await self.channel.get_data(
            Prompt.ENTER_LAST8.value, self.settings.dtmf_timeout_ms, LAST_DIGITS
        )
        return Event.ENTERED

    async def _continue(self) -> Event:
        assert self._entry is not None
        rest = await self.channel.get_data("", self.settings.dtmf_timeout_ms, LAST_DIGITS - 1)
        self._entry = DtmfEntry(self._entry.digits + rest.digits, rest.timed_out)
        return Event.ENTERED

    async def _check(self) -> Event:
        assert self.attempt_id is not None and self._entry is not None
        entry, self._entry = self._entry, None
        self.last_entry_empty = entry.digits == ""
        verdict = await self.gateway.check_card_digits(self.attempt_id, entry.digits)
        log.info(
            "IVR call {attempt}: entry {verdict}", attempt=loggable(self.attempt_id), verdict=verdict.value
        )
        event = _VERDICT_EVENT[verdict]
        self.decided = event is not Event.RETRY
        return event

    async def _wrong(self) -> Event:
        return await self._interruptible(Prompt.NO_ENTRY if self.last_entry_empty else Prompt.WRONG_RETRY)

    async def _success(self) -> Event:
        assert self.call is not None
        mobile = self.call.kind is CallKind.MOBILE_CHANGE
        await self._play(Prompt.MOBILE_SUCCESS if mobile else Prompt.SUCCESS)
        return Event.NEXT

    async def _failed(self) -> Event:
        await self._play(Prompt.FAILED)
        return Event.NEXT

    async def _locked(self) -> Event:
        await self._play(Prompt.LOCKED)
        return Event.NEXT
