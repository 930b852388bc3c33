"""The emulated Asterisk's channels and calls: what an Originate creates, and the values its events carry
(docs/protocols/ORIGINATE-OUTCOMES.md)."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall

from idtronic_tel.simulators.handset import Handset

AgiRunner = Callable[[Any, str, dict[str, str], Handset], Coroutine[Any, Any, str]]

# OriginateResponse Reason values (Asterisk's AST_CONTROL_* codes), see docs/protocols/ORIGINATE-OUTCOMES.md.
REASON_HANGUP, REASON_NO_ANSWER, REASON_ANSWERED, REASON_BUSY, REASON_CONGESTION = 0, 3, 4, 5, 8
CAUSE_TEXT = {
    0: "Unknown",
    16: "Normal Clearing",
    17: "User busy",
    19: "User alerting, no answer",
    21: "Call Rejected",
    34: "Circuit/channel congestion",
}
STATE_DESC = {0: "Down", 4: "Ring", 5: "Ringing", 6: "Up", 7: "Busy"}


def parse_caller_id(value: str | None) -> tuple[str, str]:
    """`"Enroll" <0600000000>` -> ("0600000000", "Enroll"); missing parts are `<unknown>`."""
    if not value:
        return "<unknown>", "<unknown>"
    value = value.strip()
    if "<" in value and value.endswith(">"):
        name, _, num = value[:-1].partition("<")
        name = name.strip().strip('"') or "<unknown>"
        return num.strip() or "<unknown>", name
    return value, "<unknown>"


def parse_variables(values: list[str]) -> dict[str, str]:
    """`Variable:` headers; one header may carry several comma-separated assignments."""
    out: dict[str, str] = {}
    for header in values:
        for assignment in header.split(","):
            name, sep, val = assignment.partition("=")
            if sep:
                out[name.strip().lstrip("_")] = val
    return out


@dataclass
class Channel:
    name: str
    uniqueid: str
    linkedid: str
    context: str
    exten: str
    state: int
    priority: int = 1
    caller: tuple[str, str] = ("<unknown>", "<unknown>")
    connected: tuple[str, str] = ("<unknown>", "<unknown>")
    application: str = ""
    application_data: str = ""
    created: float = 0.0

    def headers(self, prefix: str = "") -> list[tuple[str, str]]:
        p = prefix
        return [
            (f"{p}Channel", self.name),
            (f"{p}ChannelState", str(self.state)),
            (f"{p}ChannelStateDesc", STATE_DESC.get(self.state, "Unknown")),
            (f"{p}CallerIDNum", self.caller[0]),
            (f"{p}CallerIDName", self.caller[1]),
            (f"{p}ConnectedLineNum", self.connected[0]),
            (f"{p}ConnectedLineName", self.connected[1]),
            (f"{p}Language", "en"),
            (f"{p}AccountCode", ""),
            (f"{p}Context", self.context),
            (f"{p}Exten", self.exten),
            (f"{p}Priority", str(self.priority)),
            (f"{p}Uniqueid", self.uniqueid),
            (f"{p}Linkedid", self.linkedid),
        ]


@dataclass(eq=False)
class Call:
    action_id: str | None
    dial_string: str
    number: str
    context: str  # where ;1 goes after the answer
    exten: str
    priority: str
    timeout_ms: int
    caller: tuple[str, str]
    variables: dict[str, str]
    handset: Handset
    one: Channel | None = None
    two: Channel | None = None
    sync_reply: Callable[[bool], None] | None = None  # Async: false
    timers: list[IDelayedCall] = field(default_factory=list)
    agi: Deferred[str] | None = None
    answered: bool = False
    agi_status: str | None = None
