"""The voice fallback (docs/rules.md): read a payment token whose SMS did not arrive, as many times as
configured. The driver is `call_flows.CallFlow`."""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Mapping

from idtronic_tel.core.ports import CallKind, IvrGateway
from idtronic_tel.ivr.call_flows import AgiChannel, CallFlow, Event, FlowSettings, flow_table, log
from idtronic_tel.ivr.prompts import Prompt
from idtronic_tel.logsafe import loggable


class TokenState(enum.Enum):
    IDENTIFY = enum.auto()
    LOOKUP = enum.auto()
    REFUSE = enum.auto()
    GREET = enum.auto()  # ANSWER, intro prompt
    SAY = enum.auto()  # SAY DIGITS <token> ""
    REPEAT = enum.auto()  # "once more" prompt, then SAY again
    GOODBYE = enum.auto()
    HANG_UP = enum.auto()
    ENDING = enum.auto()
    DONE = enum.auto()


T = TokenState
TOKEN_TRANSITIONS = flow_table(
    "voice token call",
    TokenState,
    {
        (T.GREET, Event.NEXT): T.SAY,
        (T.SAY, Event.AGAIN): T.REPEAT,
        (T.SAY, Event.NEXT): T.GOODBYE,
        (T.REPEAT, Event.NEXT): T.SAY,
        (T.GOODBYE, Event.NEXT): T.HANG_UP,
    },
)


class VoiceTokenFlow(CallFlow[TokenState]):
    states = TokenState
    transitions = TOKEN_TRANSITIONS
    expected_kinds = frozenset({CallKind.VOICE_TOKEN})

    def __init__(self, channel: AgiChannel, gateway: IvrGateway, settings: FlowSettings) -> None:
        super().__init__(channel, gateway, settings)
        self.readings = 0

    def own_actions(self) -> Mapping[TokenState, Callable[[], Awaitable[Event]]]:
        return {
            T.GREET: self._greet,
            T.SAY: self._say,
            T.REPEAT: self._repeat,
            T.GOODBYE: self._goodbye,
        }

    async def _greet(self) -> Event:
        assert self.call is not None
        if not self.call.token or not self.call.token.isdigit():
            log.error(
                "IVR call {attempt}: voice token call without a token", attempt=loggable(self.attempt_id)
            )
            raise ValueError("no token")  # -> CORE_ERROR: hang up, end the call as an error
        await self.channel.answer()
        await self._play(Prompt.TOKEN_INTRO)
        return Event.NEXT

    async def _say(self) -> Event:
        assert self.call is not None and self.call.token is not None
        await self.channel.say_digits(self.call.token)
        self.readings += 1
        self.decided = self.readings >= self.settings.token_repeats
        return Event.AGAIN if self.readings < self.settings.token_repeats else Event.NEXT

    async def _repeat(self) -> Event:
        await self._play(Prompt.TOKEN_REPEAT)
        return Event.NEXT

    async def _goodbye(self) -> Event:
        await self._play(Prompt.GOODBYE)
        return Event.NEXT
