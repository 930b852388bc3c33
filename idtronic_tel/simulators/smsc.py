"""A built-in SMSC for demos and operators' dry runs, speaking through idtronic_tel.smpp.codec.

It accepts binds (checking system_id and password: ESME_RINVPASWD otherwise), answers enquire_link and
unbind, gives each submit_sm a message id of 8 upper-case hex digits as node-smpp does, sends a delivery
receipt after `receipt_delay` seconds with `receipt_status` (unless receipts are off), answers
ESME_RTHROTTLED to the submits beyond `max_tps` in a second, and prints each message on stdout (the one
place in the package that shows an SMS text: it is a simulator) and/or appends it to a JSON-lines file.
Run it with `idtronic-tel smsc-sim` (`smsc_command`; docs/operator.md).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import IO, Any, Final

from twisted.application.service import IService
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

from ..smpp import codec
from .listening import ListeningService

MESSAGE_STATES: Final = {
    "DELIVRD": 2,
    "EXPIRED": 3,
    "DELETED": 4,
    "UNDELIV": 5,
    "ACCEPTD": 6,
    "UNKNOWN": 7,
    "REJECTD": 8,
    "ENROUTE": 1,
}
_BINDS: Final = {"bind_transceiver", "bind_transmitter", "bind_receiver"}


@dataclass(frozen=True)
class ReceivedMessage:
    message_id: str
    source: str
    destination: str
    data_coding: int
    esm_class: int
    text: str  # this part's text (UDH removed); the simulator is the one place that shows it
    validity_period: str
    received_at: str


def _decode_text(short_message: bytes, data_coding: int, esm_class: int) -> str:
    if esm_class & 0x40 and short_message:
        short_message = short_message[short_message[0] + 1 :]
    if data_coding == 0x08:
        return short_message.decode("utf-16-be", "replace")
    from smpplib import gsm

    table = gsm.GSM_CHARACTER_TABLE
    out: list[str] = []
    escape = False
    for octet in short_message:
        if octet == 0x1B:
            escape = True
            continue
        index = octet + 0x80 if escape else octet
        escape = False
        out.append(table[index] if index < len(table) else "?")
    return "".join(out)


class SmscSimulator:
    """State shared by all connections: id counter, receivers, records."""

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        system_id: str,
        password: str,
        receipt_delay: float = 0.0,
        receipt_status: str = "DELIVRD",
        record_path: str | None = None,
        echo: IO[str] | None = None,
        receipts: bool = True,
        max_tps: int = 0,
    ) -> None:
        if receipt_status not in MESSAGE_STATES:
            raise ValueError(f"unknown receipt status {receipt_status!r}")
        self.clock = clock
        self.system_id = system_id
        self.password = password
        self.receipt_delay = receipt_delay
        self.receipt_status = receipt_status
        self.record_path = record_path
        self.echo = echo
        self.receipts = receipts  # off: no receipt even when the ESME asks for one
        self.max_tps = max_tps  # submits accepted per second (0: no limit); the others are throttled
        self._second, self._submits_this_second = -1, 0
        self.messages: list[ReceivedMessage] = []
        self.next_id = 1
        self.receivers: list[SmscProtocol] = []
        self.connections: set[SmscProtocol] = set()
        self.timers: set[IDelayedCall] = set()

    def admit_submit(self) -> bool:
        """False when this second's quota of submits is used up (the ESME gets ESME_RTHROTTLED)."""
        if not self.max_tps:
            return True
        second = int(self.clock.seconds())
        if second != self._second:
            self._second, self._submits_this_second = second, 0
        if self._submits_this_second >= self.max_tps:
            return False
        self._submits_this_second += 1
        return True

    def new_message_id(self) -> str:
        message_id = f"{self.next_id:08X}"
        self.next_id += 1
        return message_id

    def record(self, message: ReceivedMessage) -> None:
        self.messages.append(message)
        if self.echo is not None:
            self.echo.write(f"SMS {message.message_id} to +{message.destination}: {message.text}\n")
            self.echo.flush()
        if self.record_path:
            with open(self.record_path, "a", encoding="utf-8") as file:
                file.write(json.dumps(asdict(message), ensure_ascii=False) + "\n")

    def schedule_receipt(self, message: ReceivedMessage, submit: codec.Pdu) -> None:
        def send() -> None:
            self.timers.discard(call)
            for receiver in self.receivers:
                receiver.send_receipt(
                    message, submit, self.receipt_status, MESSAGE_STATES[self.receipt_status]
                )
                return

        call = self.clock.callLater(self.receipt_delay, send)
        self.timers.add(call)

    def stop(self) -> None:
        """Cancel the receipts not sent yet and close every connection."""
        for call in list(self.timers):
            if call.active():
                call.cancel()
        self.timers.clear()
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.loseConnection()


class SmscProtocol(Protocol):
    log = Logger()

    def __init__(self, simulator: SmscSimulator) -> None:
        self.simulator = simulator
        self.codec = codec.SmppCodec()
        self.bound_as: str | None = None
        self.sequence = 0

    def connectionMade(self) -> None:
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)
        self.simulator.connections.add(self)

    def connectionLost(self, reason: object = None) -> None:
        self.simulator.connections.discard(self)
        if self in self.simulator.receivers:
            self.simulator.receivers.remove(self)

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def dataReceived(self, data: bytes) -> None:
        for event in self.codec.receive_data(data):
            if isinstance(event, codec.Fatal):
                assert self.transport is not None
                self.transport.loseConnection()
                return
            if isinstance(event, codec.Undecodable):
                self.write(codec.generic_nack(event.sequence, event.status))
                continue
            self.handle(event)

    def handle(self, pdu: codec.Pdu) -> None:
        response_id = pdu.command_id | codec.RESPONSE_BIT
        if pdu.command in _BINDS:
            ok = (
                codec.as_text(pdu.body.system_id) == self.simulator.system_id
                and codec.as_text(pdu.body.password) == self.simulator.password
            )
            if not ok:
                self.log.info("SMSC simulator: bind refused (wrong system_id or password)")
                self.write(codec.encode_header_only(response_id, pdu.sequence, codec.ESME_RINVPASWD))
                return
            self.bound_as = pdu.command
            if pdu.command != "bind_transmitter":
                self.simulator.receivers.append(self)
            self.write(codec.encode(pdu.command + "_resp", pdu.sequence, system_id="IDTRONICSIM"))
        elif pdu.command == "enquire_link":
            self.write(codec.encode_header_only(response_id, pdu.sequence))
        elif pdu.command == "unbind":
            self.write(codec.encode_header_only(response_id, pdu.sequence))
            assert self.transport is not None
            self.transport.loseConnection()
        elif pdu.command == "submit_sm":
            self.submit(pdu)
        elif pdu.is_response:
            pass  # deliver_sm_resp, enquire_link_resp
        else:
            self.write(codec.generic_nack(pdu.sequence, codec.ESME_RINVCMDID))

    def submit(self, pdu: codec.Pdu) -> None:
        if self.bound_as not in ("bind_transceiver", "bind_transmitter"):
            self.write(codec.encode_header_only(0x80000004, pdu.sequence, codec.ESME_RINVBNDSTS))
            return
        if not self.simulator.admit_submit():
            self.write(codec.encode_header_only(0x80000004, pdu.sequence, codec.ESME_RTHROTTLED))
            return
        body = pdu.body
        message = ReceivedMessage(
            message_id=self.simulator.new_message_id(),
            source=codec.as_text(body.source_addr),
            destination=codec.as_text(body.destination_addr),
            data_coding=body.data_coding or 0,
            esm_class=body.esm_class or 0,
            text=_decode_text(body.short_message or b"", body.data_coding or 0, body.esm_class or 0),
            validity_period=codec.as_text(body.validity_period),
            received_at=datetime.now(UTC).isoformat(),
        )
        self.write(codec.encode("submit_sm_resp", pdu.sequence, message_id=message.message_id))
        self.simulator.record(message)
        if self.simulator.receipts and (body.registered_delivery or 0) & 0x01:
            self.simulator.schedule_receipt(message, pdu)

    def send_receipt(self, message: ReceivedMessage, submit: codec.Pdu, stat: str, state: int) -> None:
        self.sequence += 1
        now = datetime.now(UTC).strftime("%y%m%d%H%M")
        delivered = "001" if stat == "DELIVRD" else "000"
        text = (
            f"id:{message.message_id} sub:001 dlvrd:{delivered} submit date:{now} done date:{now} "
            f"stat:{stat} err:000 text:"
        )
        body = submit.body
        self.write(
            codec.encode(
                "deliver_sm",
                self.sequence,
                service_type="",
                source_addr_ton=body.dest_addr_ton or 0,
                source_addr_npi=body.dest_addr_npi or 0,
                source_addr=message.destination,
                dest_addr_ton=body.source_addr_ton or 0,
                dest_addr_npi=body.source_addr_npi or 0,
                destination_addr=message.source,
                esm_class=0x04,
                data_coding=1,
                short_message=text.encode("ascii"),
                receipted_message_id=message.message_id,
                message_state=state,
            )
        )


class SmscFactory(Factory):
    def __init__(self, simulator: SmscSimulator) -> None:
        self.simulator = simulator

    def buildProtocol(self, addr: object) -> SmscProtocol:
        protocol = SmscProtocol(self.simulator)
        protocol.factory = self
        return protocol


class SmscService(ListeningService):
    """The simulator listening on an endpoint string; `when_listening()` gives the port (with `tcp:0`)."""

    def __init__(self, reactor: Any, listen: str, simulator: SmscSimulator) -> None:
        super().__init__(reactor, listen, SmscFactory(simulator), simulator.stop, "smsc-sim")
        self.simulator = simulator


def makeService(
    listen: str,
    system_id: str,
    password: str,
    receipt_delay: float = 0.0,
    receipt_status: str = "DELIVRD",
    record_path: str | None = None,
    reactor: Any = None,
    echo: IO[str] | None = None,
    receipts: bool = True,
    max_tps: int = 0,
) -> IService:
    """The simulator as a service (for `run --demo` and `smsc-sim`). `echo`: where to print each message."""
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    simulator = SmscSimulator(
        reactor, system_id, password, receipt_delay, receipt_status, record_path, echo, receipts, max_tps
    )
    return SmscService(reactor, listen, simulator)
