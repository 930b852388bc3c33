"""Delivery receipts (deliver_sm with esm_class 0x04) and the message-id form shared with submit_sm_resp.

Message ids. SMSCs disagree on how they write the id of a message: the same id appears as `00002329` in
one PDU and `2329` in another, in upper or lower case, and some put it in hex in submit_sm_resp but in
decimal in the receipt text. The **canonical form** used everywhere (mark_submitted and apply_receipt) is:
surrounding blanks and NULs removed, upper case, leading zeros removed (`0` if nothing is left). A receipt's
id is taken from the receipted_message_id TLV (0x001E) when present — SMPP 3.4 §5.3.2.12 defines it as the
id of submit_sm_resp — and otherwise from the text's `id:` field. When only the text id is there, it is all
decimal digits and it matches no message, it is tried once more converted from decimal to hex.

States. The message_state TLV (0x0427) wins over the text's `stat:` when both are present. DELIVERED ->
delivered; UNDELIVERABLE, REJECTED, DELETED -> undeliverable; EXPIRED -> expired; ENROUTE, ACCEPTED and
UNKNOWN are intermediate and ignored (a final receipt follows).

Every receipt is answered. One we cannot use (no id, an id longer than SMPP's 64 octets or with bytes
outside printable ASCII, or any surprise while reading it) is acknowledged ESME_ROK with a warning and
`idtronic_smpp_receipts_unparseable_total`: answering an error would make the SMSC deliver it again
forever. Only a failure to record a good one (database down) asks for redelivery (ESME_RX_T_APPN, by the
protocol). Nothing of a receipt's text is logged: its `text:` field quotes the message, code included.
"""

from __future__ import annotations

import re
from typing import Any, Final, NamedTuple

from prometheus_client import Counter
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from ..core.ports import SmsOutbox, SmsState
from ..logsafe import loggable
from . import codec

ESM_CLASS_RECEIPT_MASK: Final = 0x3C  # bits 5..2: message type
ESM_CLASS_DELIVERY_RECEIPT: Final = 0x04

_STAT_TEXT: Final[dict[str, SmsState | None]] = {
    "DELIVRD": SmsState.DELIVERED,
    "UNDELIV": SmsState.UNDELIVERABLE,
    "REJECTD": SmsState.UNDELIVERABLE,
    "DELETED": SmsState.UNDELIVERABLE,
    "EXPIRED": SmsState.EXPIRED,
    "ACCEPTD": None,
    "ENROUTE": None,
    "UNKNOWN": None,
}
_MESSAGE_STATE_TLV: Final[dict[int, SmsState | None]] = {
    1: None,  # ENROUTE
    2: SmsState.DELIVERED,
    3: SmsState.EXPIRED,
    4: SmsState.UNDELIVERABLE,  # DELETED
    5: SmsState.UNDELIVERABLE,
    6: None,  # ACCEPTED
    7: None,  # UNKNOWN
    8: SmsState.UNDELIVERABLE,  # REJECTED
}
# A receipt whose id matches no message is looked up again after these delays (seconds) before it is
# acknowledged as unknown: with several daemons on one SMSC account, the receipt of a message submitted by
# daemon B may reach daemon A's bind before B has committed mark_submitted (B's SubmissionTracker cannot
# hold it: it is A that received it). The deliver_sm_resp waits meanwhile.
UNKNOWN_RETRY_DELAYS: Final = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0)
_ID_FIELD: Final = re.compile(rb"(?:^|\s)id:(\S+)", re.IGNORECASE)
MAX_ID_LENGTH: Final = 64  # SMPP 3.4: a message_id is a C-Octet String of at most 65 octets with its NUL
_STAT_FIELD: Final = re.compile(rb"(?:^|\s)stat:(\w+)", re.IGNORECASE)
_PRINTABLE: Final = bytes(range(0x21, 0x7F))  # printable ASCII, blank excluded

RECEIPTS = Counter("idtronic_smpp_receipts_total", "Delivery receipts received", ["bind", "state"])
UNPARSEABLE_RECEIPTS = Counter(
    "idtronic_smpp_receipts_unparseable_total",
    "Delivery receipts acknowledged without being used: no usable message id, or malformed",
    ["bind"],
)
UNKNOWN_RECEIPTS = Counter(
    "idtronic_smpp_receipts_unknown_total", "Delivery receipts whose message id matches no message", ["bind"]
)
MOBILE_ORIGINATED = Counter(
    "idtronic_smpp_mobile_originated_total",
    "deliver_sm that are not receipts (acknowledged, dropped)",
    ["bind"],
)


def normalise_id(raw: str | bytes) -> str:
    text = raw.decode("latin-1") if isinstance(raw, bytes) else raw
    text = text.strip(" \t\r\n\x00").upper()
    return text.lstrip("0") or "0"


class UnusableId(ValueError):
    """A receipt's message id that no submit_sm_resp could have given (see the module's docstring)."""


def receipt_id(raw: bytes) -> str:
    """The canonical form of a receipt's id; UnusableId unless it is 1 to 64 printable ASCII octets."""
    text = raw.strip(b" \t\r\n\x00")
    if not 0 < len(text) <= MAX_ID_LENGTH:
        raise UnusableId(f"message id of {len(text)} octets")
    if text.translate(None, _PRINTABLE):  # what is left once the printable octets are deleted
        raise UnusableId("message id with octets outside printable ASCII")
    return normalise_id(text)


class Receipt(NamedTuple):  # immutable, and cheaper to build than a frozen dataclass (one per receipt)
    message_id: str  # canonical form
    state: SmsState | None  # None: intermediate (ACCEPTD, ENROUTE, ...): nothing to record
    stat: str  # what the SMSC said, for logs
    decimal_text_id: bool  # id came from the text only and is all digits (see the module's docstring)


def is_receipt(pdu: codec.Pdu) -> bool:
    esm_class = pdu.body.esm_class or 0
    return bool(esm_class & ESM_CLASS_RECEIPT_MASK == ESM_CLASS_DELIVERY_RECEIPT)


def parse_receipt(pdu: codec.Pdu) -> Receipt:
    """The receipt in a deliver_sm; UnusableId when it carries no usable message id."""
    body = pdu.body
    text: bytes = body.short_message or body.message_payload or b""
    tlv_id = body.receipted_message_id
    if tlv_id:
        message_id, from_text = receipt_id(tlv_id), False
    elif (text_id := _ID_FIELD.search(text)) is not None:
        message_id, from_text = receipt_id(text_id.group(1)), True
    else:
        raise UnusableId("no message id")
    stat_match = _STAT_FIELD.search(text)
    stat = stat_match.group(1).decode("ascii", "replace").upper() if stat_match else ""
    if body.message_state is not None:
        state = _MESSAGE_STATE_TLV.get(body.message_state)
        stat = stat or f"message_state={body.message_state}"
    else:
        state = _STAT_TEXT.get(stat)
    return Receipt(message_id, state, stat, from_text and message_id.isdigit())


class SubmissionTracker:
    """Ids the SMSC accepted whose message is not recorded yet (mark_submitted still pending).

    A receipt can overtake the record of its own submit: the SMSC may deliver the receipt of part 1 of a
    long message before part 2 is answered, or before the database has written mark_submitted. Such a
    receipt waits here for the record (its deliver_sm_resp waits too, so the SMSC holds it meanwhile)
    instead of being dropped as unknown.
    """

    def __init__(self) -> None:
        self._waiting: dict[str, list[Deferred[None]]] = {}

    def accepted(self, message_id: str) -> None:
        self._waiting.setdefault(message_id, [])

    def recorded(self, message_ids: list[str]) -> None:
        for message_id in message_ids:
            for waiter in self._waiting.pop(message_id, []):
                waiter.callback(None)

    def is_waiting(self, message_id: str) -> bool:
        return message_id in self._waiting

    def when_recorded(self, message_id: str) -> Deferred[None]:
        waiters = self._waiting.get(message_id)
        if waiters is None:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        waiters.append(waiter)
        return waiter


class ReceiptHandler:
    """The `on_deliver` of the binds: records receipts through SmsOutbox.apply_receipt.

    Fires with the deliver_sm_resp status: ROK once the receipt is handled (also for unknown ids and
    for mobile-originated messages, which we acknowledge and drop), so the SMSC does not redeliver them.
    """

    log = Logger()

    def __init__(
        self,
        outbox: SmsOutbox,
        bind: str,
        tracker: SubmissionTracker | None = None,
        clock: IReactorTime | None = None,
        unknown_retry_delays: tuple[float, ...] = UNKNOWN_RETRY_DELAYS,
    ) -> None:
        self.outbox = outbox
        self.bind = bind
        self.tracker = tracker or SubmissionTracker()
        self.clock = clock  # None: an unknown id is not looked up again
        self.unknown_retry_delays = unknown_retry_delays if clock is not None else ()
        self._counters: dict[str, Any] = {}  # state -> RECEIPTS child (labels() costs a few µs each time)

    def _count(self, state: str) -> None:
        counter = self._counters.get(state)
        if counter is None:
            counter = self._counters[state] = RECEIPTS.labels(self.bind, state)
        counter.inc()

    def __call__(self, pdu: codec.Pdu) -> Deferred[int]:
        if not is_receipt(pdu):
            MOBILE_ORIGINATED.labels(self.bind).inc()
            # Never the text: it is a cardholder's message.
            self.log.info(
                "SMPP {bind}: mobile-originated message from {source} ignored ({length} octets)",
                bind=self.bind,
                source=loggable(codec.as_text(pdu.body.source_addr), 24),
                length=len(pdu.body.short_message or b""),
            )
            return succeed(codec.ESME_ROK)
        try:
            receipt = parse_receipt(pdu)
        except Exception as exc:
            UNPARSEABLE_RECEIPTS.labels(self.bind).inc()
            why = str(exc) if isinstance(exc, UnusableId) else type(exc).__name__
            self.log.warn("SMPP {bind}: receipt acknowledged unused: {why}", bind=self.bind, why=why)
            return succeed(codec.ESME_ROK)
        self._count(receipt.state.value if receipt.state else "intermediate")
        if receipt.state is None:
            self.log.debug(
                "SMPP {bind}: intermediate receipt {stat} for {message_id}",
                bind=self.bind,
                stat=receipt.stat,
                message_id=receipt.message_id,
            )
            return succeed(codec.ESME_ROK)
        state = receipt.state

        def apply(message_id: str, attempt: int, as_hex: bool) -> Deferred[int]:
            applied = self.outbox.apply_receipt(message_id, state.value)
            return applied.addCallback(settle, attempt, as_hex)

        def settle(known: bool, attempt: int, as_hex: bool) -> int | Deferred[int]:
            """One callback per lookup: the common case (known at once) costs no other."""
            if known:
                return codec.ESME_ROK
            if receipt.decimal_text_id and not as_hex:
                return apply(normalise_id(format(int(receipt.message_id), "X")), attempt, True)
            if attempt < len(self.unknown_retry_delays):
                assert self.clock is not None
                later: Deferred[None] = deferLater(self.clock, self.unknown_retry_delays[attempt])
                return later.addCallback(lambda _: apply(receipt.message_id, attempt + 1, False))
            UNKNOWN_RECEIPTS.labels(self.bind).inc()
            self.log.warn(
                "SMPP {bind}: receipt {stat} for unknown message id {message_id}",
                bind=self.bind,
                stat=receipt.stat,
                message_id=receipt.message_id,
            )
            return codec.ESME_ROK

        if self.tracker.is_waiting(receipt.message_id):
            waited = self.tracker.when_recorded(receipt.message_id)
            return waited.addCallback(lambda _: apply(receipt.message_id, 0, False))
        return apply(receipt.message_id, 0, False)
