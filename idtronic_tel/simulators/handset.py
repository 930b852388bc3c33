"""Simulated handsets: how an emulated callee answers a call and what it keys.

The script syntax is the one of the `callee-seq` context used to record the real Asterisk transcripts
(docs/protocols/BENCH-DIALPLAN.md): `|`-separated steps, `w<seconds>` waits, `d<digits>` keys DTMF
(250 ms between digits), `h` hangs up. Example: ``w1|d12345678#|w6|h``.

A handset can also be held by a person (`LiveCall`, the demo's phone page): the call rings until they
answer or decline, they read the prompts as they play and key digits on the channel's `Keypad`.
"""

from __future__ import annotations

import enum
import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol


class Answer(enum.StrEnum):
    """What the callee does when the call rings (see docs/protocols/ORIGINATE-OUTCOMES.md)."""

    ANSWER = "answer"  # OriginateResponse Success, Reason 4, then the call runs the FastAGI session
    BUSY = "busy"  # Failure, Reason 5
    NO_ANSWER = "noanswer"  # Failure, Reason 3, after the Originate Timeout
    CONGESTION = "congestion"  # Failure, Reason 8
    REJECT = "reject"  # Hangup(21): Failure, Reason 0


@dataclass(frozen=True)
class Wait:
    seconds: float


@dataclass(frozen=True)
class Keys:
    digits: str  # 0-9, *, #, A-D


@dataclass(frozen=True)
class HangUp:
    pass


Step = Wait | Keys | HangUp

_STEP = re.compile(r"^(?:w(?P<wait>\d+(?:\.\d+)?)|d(?P<digits>[0-9*#A-D]+)|(?P<hangup>h))$")

DIGIT_GAP_SECONDS = 0.25  # SendDTMF(digits,250,120) in the recording dialplan


def parse_script(script: str) -> tuple[Step, ...]:
    """Parse a callee-seq script; raise ValueError naming the bad step."""
    steps: list[Step] = []
    if not script:
        return ()
    for raw in script.split("|"):
        match = _STEP.match(raw)
        if match is None:
            raise ValueError(f"bad handset step {raw!r}: expected w<seconds>, d<digits> or h")
        if match["wait"] is not None:
            steps.append(Wait(float(match["wait"])))
        elif match["digits"] is not None:
            steps.append(Keys(match["digits"]))
        else:
            steps.append(HangUp())
    return tuple(steps)


class Keypad(Protocol):
    """What a person holding an answered call can do: key digits, hang up; and whether digits are
    heard right now (Asterisk drops a digit keyed while no command waits for one)."""

    @property
    def listening(self) -> bool: ...

    def press(self, digit: str) -> None: ...

    def hang_up(self) -> None: ...


class LiveCall(ABC):
    """One call to a phone held by a person. The emulator tells it what happens; it answers through the
    callbacks it is given (`ringing`) and the channel's keypad (`connected`)."""

    @abstractmethod
    def ringing(self, answer: Callable[[], None], decline: Callable[[], None]) -> None:
        """The phone rings: `answer()` picks up, `decline()` rejects; neither before the Originate
        timeout is no answer."""

    @abstractmethod
    def connected(self, keypad: Keypad) -> None:
        """The FastAGI session started: the call is live."""

    @abstractmethod
    def heard(self, what: str) -> None:
        """A prompt (its sound name) or spoken digits (`digits:...`) started playing."""

    @abstractmethod
    def ended(self) -> None:
        """The call is over, whoever hung up (or it was never answered)."""


@dataclass(frozen=True)
class Handset:
    answer: Answer = Answer.ANSWER
    script: tuple[Step, ...] = ()
    ring_seconds: float = 0.0  # time before answering (or before the failure for busy/congestion)
    live: LiveCall | None = None  # held by a person: `script` and `ring_seconds` are not used

    @classmethod
    def scripted(cls, script: str, answer: Answer = Answer.ANSWER, ring_seconds: float = 0.0) -> Handset:
        return cls(answer=answer, script=parse_script(script), ring_seconds=ring_seconds)


@dataclass
class HandsetDirectory:
    """Which handset answers which number. Numbers are matched on their last 9 digits so that
    `0611223344`, `33611223344` and `+33611223344` name the same phone."""

    default: Handset = field(default_factory=Handset)
    _by_number: dict[str, list[Handset]] = field(default_factory=dict)

    @staticmethod
    def _key(number: str) -> str:
        return re.sub(r"\D", "", number)[-9:]

    def add(self, number: str, *handsets: Handset) -> None:
        """Queue handsets for a number: each call takes the next one; the last one stays."""
        self._by_number.setdefault(self._key(number), []).extend(handsets)

    def take(self, number: str) -> Handset:
        queue = self._by_number.get(self._key(number))
        if not queue:
            return self.default
        return queue.pop(0) if len(queue) > 1 else queue[0]
