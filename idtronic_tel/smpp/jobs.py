"""What the outbox worker (worker.py) holds: its phases, one claimed message being sent (a Job), the queue
of messages with parts still to write, and the counters of what leaves it."""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from prometheus_client import Counter

from ..config_schema import SmppBindConfig
from ..core.ports import OutgoingSms
from ..core.states import Transitions
from .binds import SmppBind
from .messages import EncodedPart, destination_address, encode_text

OUTCOMES = Counter(
    "idtronic_smpp_messages",
    "SMS leaving the outbox worker, by outcome (submitted, in_doubt, ...)",
    ["outcome"],
)
RESENDS = Counter(
    "idtronic_smpp_resends",
    "SMS sent again because an earlier copy may have reached the SMSC unanswered, by cause: crash (left "
    "in flight by this daemon's previous run), stale_claim (by another daemon that is gone), interrupted "
    "(timeout or link lost while running)",
    ["cause"],
)

# A failed record (database unreachable) is tried again after these delays, doubling up to the maximum.
RECORD_RETRY_FIRST: Final = 0.5
RECORD_RETRY_MAX: Final = 10.0

_OUTCOME_COUNTERS: dict[str, Any] = {}


def outcome_counter(outcome: str) -> Any:
    """OUTCOMES.labels(outcome), looked up once per outcome (labels() costs a few µs per call)."""
    counter = _OUTCOME_COUNTERS.get(outcome)
    if counter is None:
        counter = _OUTCOME_COUNTERS[outcome] = OUTCOMES.labels(outcome)
    return counter


class Outcome(enum.IntEnum):
    """How a message ends when it does not end submitted; the highest rank wins when parts disagree."""

    RETRY = 0
    EXPIRED = 1
    IN_DOUBT = 2
    UNDELIVERABLE = 3


class Phase(enum.Enum):
    STOPPED = "stopped"
    RECOVERING = "recovering"  # queueing again what an earlier run left in SENDING (tried until it works)
    READY = "ready"  # claims whenever the windows have room
    CLAIMING = "claiming"  # one claim in flight


class PhaseEvent(enum.Enum):
    START = "start"
    RECOVERED = "recovered"
    CLAIM = "claim"
    CLAIMED = "claimed"  # the claim answered (or failed)
    STOP = "stop"


_P, _W = Phase, PhaseEvent
PHASES = Transitions(
    "SMPP outbox worker",
    Phase,
    PhaseEvent,
    {
        (_P.STOPPED, _W.START): _P.RECOVERING,
        (_P.RECOVERING, _W.RECOVERED): _P.READY,
        (_P.READY, _W.CLAIM): _P.CLAIMING,
        (_P.CLAIMING, _W.CLAIMED): _P.READY,
        **{(phase, _W.STOP): _P.STOPPED for phase in Phase},
    },
    initial=(_P.STOPPED,),
)


@dataclass(eq=False)
class Job:
    order: int
    sms: OutgoingSms
    lease_base: float  # when the last claim or renewal that covered it started (clock seconds)
    parts: list[EncodedPart] = field(default_factory=list)
    ids: list[str | None] = field(default_factory=list)
    todo: deque[int] = field(default_factory=deque)  # part indexes still to write
    arrived: list[bool] = field(default_factory=list)  # per part: a copy may have reached the SMSC
    accepted_ids: list[str] = field(default_factory=list)  # every id accepted, for the tracker
    expires: float = 0.0  # sms.expires_at as a POSIX timestamp
    address: str = ""  # destination_addr
    bind: SmppBind | None = None
    outstanding: int = 0  # parts written, response awaited
    resends: int = 0
    failure: tuple[Outcome, str] | None = None
    resolved: bool = False
    queued: bool = True  # in the worker's send queue

    def fail(self, outcome: Outcome, reason: str) -> None:
        if self.failure is None or outcome > self.failure[0]:
            self.failure = (outcome, reason)
        self.todo.clear()

    def encode(self) -> None:
        """Its destination address and parts; ValueError if it cannot be sent."""
        self.address = destination_address(self.sms.destination)
        self.parts = encode_text(self.sms.text, reference=self.sms.sms_id)
        self.ids = [None] * len(self.parts)
        self.arrived = [False] * len(self.parts)
        self.todo.extend(range(len(self.parts)))

    def restart(self) -> None:
        """The bind of a long message went down between its parts: send it whole again on any bind
        (same text and UDH reference: the phone reassembles it as one message)."""
        self.bind = None
        self.ids = [None] * len(self.parts)
        self.todo = deque(range(len(self.parts)))

    def submit_fields(
        self, index: int, config: SmppBindConfig, validity: str, registered: bool
    ) -> dict[str, Any]:
        part = self.parts[index]
        return {
            "service_type": "",
            "source_addr_ton": config.source_ton,
            "source_addr_npi": config.source_npi,
            "source_addr": config.source_addr,
            "dest_addr_ton": config.dest_ton,
            "dest_addr_npi": config.dest_npi,
            "destination_addr": self.address,
            "esm_class": part.esm_class,
            "protocol_id": 0,
            "priority_flag": 0,
            "schedule_delivery_time": "",
            "validity_period": validity,
            "registered_delivery": 1 if registered else 0,
            "replace_if_present_flag": 0,
            "data_coding": part.data_coding,
            "sm_default_msg_id": 0,
            "short_message": part.short_message,
        }


class SendQueue:
    """The claimed messages with parts still to write, in claim order; `job.queued` says who is in it."""

    def __init__(self) -> None:
        self._jobs: deque[Job] = deque()

    def __bool__(self) -> bool:
        return bool(self._jobs)

    def __iter__(self) -> Iterator[Job]:
        return iter(self._jobs)

    def head(self) -> Job:
        return self._jobs[0]

    def append(self, job: Job) -> None:
        self._jobs.append(job)

    def pop_head(self) -> None:
        self._jobs.popleft().queued = False

    def remove(self, job: Job) -> None:
        if job.queued:
            self._jobs.remove(job)
            job.queued = False

    def take_all(self) -> list[Job]:
        jobs, self._jobs = list(self._jobs), deque()
        for job in jobs:
            job.queued = False
        return jobs

    def put_back(self, job: Job) -> None:
        """Queue a message again, ahead of those claimed after it."""
        if job.queued:
            return
        job.queued = True
        position = 0
        for position, queued in enumerate(self._jobs):  # noqa: B007
            if queued.order > job.order:
                break
        else:
            position = len(self._jobs)
        self._jobs.insert(position, job)
