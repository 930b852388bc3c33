"""The demo's phones: every mobile number the daemon calls or texts, as a person would see it on the
handset simulator page (`/demo/phone`). A number with a scripted handset (the demo cardholder's) answers
on its own; any other number rings until someone answers or declines it on the page (or the Originate
timeout ends the ringing: no answer). Its SMS are the ones the built-in SMSC received for it.

The board only keeps what a phone shows: the prompts heard and how many digits were keyed, never the
digits themselves."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from twisted.internet.interfaces import IDelayedCall

from idtronic_tel.simulators.agi_channel import DTMF_TONE_SECONDS
from idtronic_tel.simulators.handset import DIGIT_GAP_SECONDS, Handset, HandsetDirectory, Keypad, LiveCall
from idtronic_tel.simulators.smsc import ReceivedMessage, SmscSimulator

KEYS = frozenset("0123456789*#")
MAX_CALLS_KEPT = 20  # per board: older ended calls are forgotten


def prompt_texts() -> dict[str, str]:
    """What each prompt says (sounds/prompts-fr.txt, the script scripts/make-prompts speaks), when run
    from a checkout; else {} and the page shows the prompt's name."""
    path = Path(__file__).resolve().parents[2] / "sounds" / "prompts-fr.txt"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return {}
    return dict(line.split("|", 1) for line in lines if "|" in line)


def number_key(number: str) -> str:
    """`0611223344`, `33611223344` and `+33611223344` name the same phone (as HandsetDirectory)."""
    return re.sub(r"\D", "", number)[-9:]


def number_label(key: str) -> str:
    """A French national number, grouped: `06 11 22 33 44`."""
    national = "0" + key if len(key) == 9 else key
    return " ".join(national[i : i + 2] for i in range(0, len(national), 2))


@dataclass(eq=False)
class PhoneCall(LiveCall):
    """One call to a phone held by the page's user."""

    board: PhoneBoard
    id: str
    key: str
    started: float
    state: str = "ringing"  # ringing, connected, ended
    prompts: list[str] = field(default_factory=list)  # what was heard: prompt names, newest last
    keyed: int = 0  # how many digits were keyed (not which)
    answered: bool = False
    _answer: Callable[[], None] | None = None
    _decline: Callable[[], None] | None = None
    _keypad: Keypad | None = None
    _pending: list[str] = field(default_factory=list)
    _timer: IDelayedCall | None = None

    # -- LiveCall: what the emulator tells -------------------------------------------------------------
    def ringing(self, answer: Callable[[], None], decline: Callable[[], None]) -> None:
        self._answer, self._decline = answer, decline
        self.board.changed()

    def connected(self, keypad: Keypad) -> None:
        self._keypad = keypad
        self.state = "connected"
        self.board.changed()

    def heard(self, what: str) -> None:
        self.prompts.append(what)
        self.board.changed()

    def ended(self) -> None:
        self.state = "ended"
        self._keypad = None
        self._pending.clear()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self.board.changed()

    # -- what the person does --------------------------------------------------------------------------
    def answer(self) -> bool:
        if self.state != "ringing" or self._answer is None:
            return False
        self.answered = True
        self._answer()
        return True

    def decline(self) -> bool:
        if self.state != "ringing" or self._decline is None:
            return False
        self._decline()
        return True

    def hang_up(self) -> bool:
        if self._keypad is None:
            return False
        self._keypad.hang_up()
        return True

    def press(self, keys: str) -> bool:
        """Queue keys; they reach the channel one by one with a phone's DTMF timing, in order."""
        if self._keypad is None or not keys or not set(keys) <= KEYS:
            return False
        self._pending.extend(keys)
        if self._timer is None or not self._timer.active():
            self._timer = self.board.clock.callLater(DTMF_TONE_SECONDS, self._next_key)
        return True

    def _next_key(self) -> None:
        self._timer = None
        if self._keypad is None or not self._pending:
            return
        self._keypad.press(self._pending.pop(0))
        self.keyed += 1
        self.board.changed()
        if self._pending:
            self._timer = self.board.clock.callLater(DIGIT_GAP_SECONDS + DTMF_TONE_SECONDS, self._next_key)

    @property
    def listening(self) -> bool:
        return self._keypad is not None and self._keypad.listening


class PhoneBoard(HandsetDirectory):
    """The HandsetDirectory of the demo's Asterisk emulator: scripted numbers (`add`) answer on their own,
    every other number gets a `PhoneCall` the page's user answers."""

    def __init__(self, clock: Any, smsc: SmscSimulator | None = None) -> None:
        super().__init__()
        self.clock = clock
        self.smsc = smsc
        self.calls: list[PhoneCall] = []
        self.version = 0
        self._ids = itertools.count(1)
        self._last_seen: dict[str, float] = {}  # number -> when it last rang or was watched

    def take(self, number: str) -> Handset:
        key = self._key(number)
        if key in self._by_number:
            self._last_seen[key] = self.clock.seconds()
            self.changed()
            return super().take(number)
        call = PhoneCall(self, f"c{next(self._ids)}", key, self.clock.seconds())
        self.calls.append(call)
        del self.calls[:-MAX_CALLS_KEPT]
        self._last_seen[key] = call.started
        self.changed()
        return Handset(live=call)

    def changed(self) -> None:
        self.version += 1

    def state_version(self) -> int:
        """Changes whenever a page showing a phone should change (a call's progress, a new SMS)."""
        return self.version + (len(self.smsc.messages) if self.smsc is not None else 0)

    def scripted(self, key: str) -> bool:
        """Whether the number's handset answers on its own (its calls are not shown)."""
        return key in self._by_number

    def find(self, call_id: str) -> PhoneCall | None:
        return next((c for c in self.calls if c.id == call_id), None)

    def current_call(self, key: str) -> PhoneCall | None:
        """The number's call in progress, else its last call."""
        mine = [c for c in self.calls if c.key == key]
        live = [c for c in mine if c.state != "ended"]
        found = live or mine
        return found[-1] if found else None

    def messages(self, key: str) -> list[ReceivedMessage]:
        """The SMS the number received, newest first."""
        if self.smsc is None:
            return []
        return [m for m in reversed(self.smsc.messages) if number_key(m.destination) == key]

    def numbers(self) -> list[str]:
        """Every number that was called or texted, the most recently active first."""
        seen = dict(self._last_seen)
        if self.smsc is not None:
            for message in self.smsc.messages:
                key = number_key(message.destination)
                at = datetime.fromisoformat(message.received_at).timestamp()
                seen[key] = max(seen.get(key, 0.0), at)
        return sorted(seen, key=lambda k: seen[k], reverse=True)
