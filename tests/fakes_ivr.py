"""An in-memory IvrGateway for the FastAGI tests (the core's real one sits on the database)."""

from __future__ import annotations

from dataclasses import dataclass, field

from twisted.internet.defer import Deferred, fail, succeed

from idtronic_tel.core.ports import CallKind, DigitsVerdict, IvrCall
from idtronic_tel.core.states import EndReason


class CoreDown(Exception):
    pass


@dataclass
class FakeAttempt:
    kind: CallKind = CallKind.ENROLL
    last8: str = "12345678"  # the entry the fake accepts
    entries_left: int = 3  # the core counts the entries of a call
    token: str | None = None
    budget: int = 5  # wrong entries before LOCKED
    started: bool = False
    finished: bool = False
    end_reasons: list[EndReason] = field(default_factory=list)
    entries: list[str] = field(default_factory=list)  # what was keyed (the test's business only)
    verdicts: list[DigitsVerdict] = field(default_factory=list)


class FakeIvrGateway:
    def __init__(self) -> None:
        self.attempts: dict[str, FakeAttempt] = {}
        self.log: list[tuple[str, str]] = []  # (method, attempt_id): never the digits
        self.failing: set[str] = set()  # method names that raise CoreDown
        self.hold: dict[str, Deferred[None]] = {}  # method name -> gate the call waits on

    def add(self, attempt_id: str, **kw: object) -> FakeAttempt:
        attempt = FakeAttempt(**kw)  # type: ignore[arg-type]
        self.attempts[attempt_id] = attempt
        return attempt

    def _gate(self, method: str, value: object) -> Deferred:  # type: ignore[type-arg]
        if method in self.failing:
            return fail(CoreDown(method))
        gate = self.hold.get(method)
        if gate is not None:
            d: Deferred[object] = Deferred()
            gate.addCallback(lambda _: d.callback(value))
            return d
        return succeed(value)

    def start_call(self, attempt_id: str) -> Deferred[IvrCall | None]:
        self.log.append(("start_call", attempt_id))
        attempt = self.attempts.get(attempt_id)
        if attempt is None or attempt.finished:
            return self._gate("start_call", None)
        attempt.started = True
        call = IvrCall(attempt_id, attempt.kind, attempt.token)
        return self._gate("start_call", call)

    def check_card_digits(self, attempt_id: str, last8: str) -> Deferred[DigitsVerdict]:
        self.log.append(("check_card_digits", attempt_id))
        if "check_card_digits" in self.failing:
            return fail(CoreDown("check_card_digits"))
        attempt = self.attempts[attempt_id]
        attempt.entries.append(last8)
        attempt.entries_left -= 1
        complete = len(last8) == 8 and last8.isdigit()
        if last8 == attempt.last8:
            verdict = DigitsVerdict.ACCEPTED
            attempt.finished = True
        else:
            attempt.budget -= complete  # an incomplete entry is asked again, never counted
            if attempt.budget <= 0:
                verdict = DigitsVerdict.LOCKED
            elif attempt.entries_left <= 0:
                verdict = DigitsVerdict.FAILED
            else:
                verdict = DigitsVerdict.RETRY
            if verdict is not DigitsVerdict.RETRY:
                attempt.finished = True
        attempt.verdicts.append(verdict)
        return self._gate("check_card_digits", verdict)

    def end_call(self, attempt_id: str, reason: EndReason) -> Deferred[None]:
        self.log.append(("end_call", attempt_id))
        attempt = self.attempts.get(attempt_id)
        if attempt is not None:
            attempt.end_reasons.append(reason)
            attempt.finished = True
        return self._gate("end_call", None)
