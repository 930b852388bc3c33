"""The ESME side of one SMPP connection: a thin Twisted protocol around SmppCodec and Session.

It binds, sends requests and matches their responses by sequence_number (each with a timeout), answers
the SMSC's enquire_link / deliver_sm / unbind, sends its own enquire_link every interval, drops a link that
stayed silent for `link_dead_timeout`, and unbinds gracefully. What to do with a deliver_sm is the
`on_deliver` callback's business (receipts.py); which message to submit is the worker's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from . import codec
from .errors import BindRefused, NoResponse, NotBound, RequestFailed
from .session import MAY_ENQUIRE, MAY_RECEIVE_DELIVER, MAY_SUBMIT, Session, SessionEvent, SessionState
from .status import status_name

BIND_COMMANDS: Final = {
    "transceiver": "bind_transceiver",
    "transmitter": "bind_transmitter",
    "receiver": "bind_receiver",
}
_MAX_SEQUENCE: Final = 0x7FFFFFFF
_ENQUIRE_LINK_RESP: Final = 0x80000015
_UNBIND: Final = 0x00000006
_UNBIND_RESP: Final = 0x80000006
_ENQUIRE_LINK: Final = 0x00000015
_DELIVER_SM_RESP: Final = 0x80000005


DeliverHandler = Callable[[codec.Pdu], "Deferred[int]"]


@dataclass(frozen=True)
class SessionSettings:
    system_id: str
    password: str
    system_type: str = ""
    enquire_link_interval: float = 30.0
    link_dead_timeout: float = 90.0
    response_timeout: float = 10.0
    max_pdu_length: int = codec.DEFAULT_MAX_LENGTH


@dataclass(slots=True)
class _Pending:
    command: str
    deadline: float
    deferred: Deferred[codec.Pdu]


class SmppClientProtocol(Protocol):
    log = Logger()

    def __init__(
        self,
        settings: SessionSettings,
        clock: IReactorTime,
        on_deliver: DeliverHandler | None = None,
        label: str = "smpp",
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.on_deliver = on_deliver
        self.label = label
        self.session = Session()
        self.codec = codec.SmppCodec(max_length=settings.max_pdu_length)
        self._sequence = 0
        # Insertion-ordered: the first entry is the oldest request, so one timer covers every timeout.
        self._pending: dict[int, _Pending] = {}
        self._timeout_call: IDelayedCall | None = None
        self._enquire_call: IDelayedCall | None = None
        self._silence_call: IDelayedCall | None = None
        self._last_heard = 0.0
        self._close_waiters: list[Deferred[None]] = []
        self.smsc_system_id = ""
        # While dataReceived runs, what it writes (responses, the submits its callbacks make) is held here
        # and written once at its end: one transport write per batch of PDUs rather than two per message.
        self._held: list[bytes] | None = None

    # -- connection ---------------------------------------------------------------------------------------

    @property
    def state(self) -> SessionState:
        return self.session.state

    @property
    def outstanding(self) -> int:
        return len(self._pending)

    def connectionMade(self) -> None:
        # Small PDUs must not wait for the peer's delayed ACK (docs/protocols/SMPP.md, "TCP_NODELAY lesson").
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)
        self._last_heard = self.clock.seconds()
        self._silence_call = self.clock.callLater(self.settings.link_dead_timeout, self._check_silence)
        self._enquire_call = self.clock.callLater(self.settings.enquire_link_interval, self._enquire)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        if self.session.state is not SessionState.CLOSED:
            self.session.handle(SessionEvent.CONNECTION_LOST)
        for call in (self._timeout_call, self._enquire_call, self._silence_call):
            if call is not None and call.active():
                call.cancel()
        self._timeout_call = self._enquire_call = self._silence_call = None
        pending, self._pending = self._pending, {}
        for request in pending.values():
            request.deferred.errback(NoResponse(request.command, "connection lost"))
        waiters, self._close_waiters = self._close_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def when_closed(self) -> Deferred[None]:
        if self.session.state is SessionState.CLOSED:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._close_waiters.append(waiter)
        return waiter

    def _drop(self, why: str) -> None:
        self.log.warn("SMPP {label}: dropping the connection: {why}", label=self.label, why=why)
        self._close()

    def _send(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            held.append(data)
        elif self.transport is not None:
            self.transport.write(data)

    def _flush(self) -> None:
        held = self._held
        if held:
            data = b"".join(held)
            held.clear()
            if self.transport is not None:
                self.transport.write(data)

    def _close(self) -> None:
        """Close the connection once what was written so far is sent."""
        self._flush()
        if self.transport is not None:
            self.transport.loseConnection()

    # -- requests -----------------------------------------------------------------------------------------

    def _next_sequence(self) -> int:
        self._sequence = 1 if self._sequence >= _MAX_SEQUENCE else self._sequence + 1
        return self._sequence

    def _request(self, command: str, data: bytes, sequence: int) -> Deferred[codec.Pdu]:
        deadline = self.clock.seconds() + self.settings.response_timeout
        result: Deferred[codec.Pdu] = Deferred()
        self._pending[sequence] = _Pending(command, deadline, result)
        if self._timeout_call is None:
            self._timeout_call = self.clock.callLater(self.settings.response_timeout, self._expire_requests)
        assert self.transport is not None
        self._send(data)
        return result

    def _expire_requests(self) -> None:
        self._timeout_call = None
        now = self.clock.seconds()
        expired: list[tuple[int, _Pending]] = []
        while self._pending:
            sequence, oldest = next(iter(self._pending.items()))
            if oldest.deadline > now:
                self._timeout_call = self.clock.callLater(oldest.deadline - now, self._expire_requests)
                break
            del self._pending[sequence]
            expired.append((sequence, oldest))
        # Only now: an errback may write a new request (the worker sends the message again), which must
        # find the timer set, or set the only one.
        for sequence, request in expired:
            self.log.warn(
                "SMPP {label}: no response to {command} seq={sequence} within {timeout}s",
                label=self.label,
                command=request.command,
                sequence=sequence,
                timeout=self.settings.response_timeout,
            )
            request.deferred.errback(NoResponse(request.command, "timeout"))

    def bind(self, mode: str) -> Deferred[str]:
        """Bind as `mode` (transceiver, transmitter, receiver). Fires with the SMSC's system_id; fails
        with BindRefused (and closes the connection, so the connection service retries)."""
        command = BIND_COMMANDS[mode]
        sequence = self._next_sequence()
        data = codec.encode(
            command,
            sequence,
            system_id=self.settings.system_id,
            password=self.settings.password,
            system_type=self.settings.system_type,
            addr_ton=0,
            addr_npi=0,
            address_range="",
        )
        answer = self._request(command, data, sequence)

        def accepted(pdu: codec.Pdu) -> str:
            if self.session.state is not SessionState.OPEN:  # unbind() was called while binding
                raise NotBound(f"session is {self.session.state.value}")
            self.session.handle(SessionEvent.BIND_ACCEPTED)
            self.smsc_system_id = codec.as_text(pdu.body.system_id)
            return self.smsc_system_id

        def refused(failure: Failure) -> Failure:
            if self.session.state is not SessionState.CLOSED:
                self._close()
            if isinstance(failure.value, RequestFailed):
                return Failure(BindRefused(failure.value.status))
            return failure

        return answer.addCallbacks(accepted, refused)

    def submit_sm(self, fields: dict[str, Any]) -> Deferred[codec.Pdu]:
        """Write one submit_sm. Fails at once with NotBound (nothing written) unless BOUND; later with
        RequestFailed (SMSC's error status) or NoResponse (written, outcome unknown)."""
        if self.session.state not in MAY_SUBMIT:
            raise NotBound(f"session is {self.session.state.value}")
        sequence = self._next_sequence()
        return self._request("submit_sm", codec.encode_submit_sm(sequence, fields), sequence)

    def unbind(self) -> Deferred[None]:
        """Send unbind, wait for unbind_resp (or the response timeout), then close. Fires once closed."""
        closed = self.when_closed()
        state = self.session.state
        if state is SessionState.BOUND:
            self.session.handle(SessionEvent.UNBIND)
            sequence = self._next_sequence()
            answer = self._request("unbind", codec.encode_header_only(_UNBIND, sequence), sequence)
            answer.addBoth(lambda _: self._close())
        elif state is SessionState.OPEN:
            self.session.handle(SessionEvent.UNBIND)
            self._close()
        return closed

    # -- the SMSC's PDUs ----------------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        self._last_heard = self.clock.seconds()
        self._held = []
        try:
            self._events_received(data)
        finally:
            self._flush()
            self._held = None

    def _events_received(self, data: bytes) -> None:
        for event in self.codec.receive_data(data):
            if isinstance(event, codec.Pdu):
                self._pdu_received(event)
            elif isinstance(event, codec.Undecodable):
                answer = codec.error_response(event)
                self.log.warn(
                    "SMPP {label}: undecodable PDU ({reason}), answered {status}",
                    label=self.label,
                    reason=event.reason,
                    status=status_name(event.status) if answer else "nothing",
                )
                if answer is not None:
                    self._write(answer)
            else:
                self._drop(event.reason)
                return

    def _write(self, data: bytes) -> None:
        if self.session.state is not SessionState.CLOSED:
            self._send(data)

    def _pdu_received(self, pdu: codec.Pdu) -> None:
        if pdu.command_id & codec.RESPONSE_BIT:
            self._response_received(pdu)
        elif pdu.command == "deliver_sm":
            self._deliver_received(pdu)
        elif pdu.command == "enquire_link":
            self._write(codec.encode_header_only(_ENQUIRE_LINK_RESP, pdu.sequence))
        elif pdu.command == "unbind":
            self.log.info("SMPP {label}: the SMSC unbinds", label=self.label)
            if self.session.can(SessionEvent.UNBIND):
                self.session.handle(SessionEvent.UNBIND)
            self._write(codec.encode_header_only(_UNBIND_RESP, pdu.sequence))
            self._close()
        elif pdu.command in codec.NO_RESPONSE_COMMANDS:
            self.log.debug("SMPP {label}: ignoring {command}", label=self.label, command=pdu.command)
        else:
            self._write(codec.generic_nack(pdu.sequence, codec.ESME_RINVCMDID))

    def _response_received(self, pdu: codec.Pdu) -> None:
        request = self._pending.pop(pdu.sequence, None)
        if request is None:
            self.log.warn(
                "SMPP {label}: {command} seq={sequence} answers no outstanding request (late or unknown)",
                label=self.label,
                command=pdu.command,
                sequence=pdu.sequence,
            )
            return
        if pdu.status != codec.ESME_ROK or pdu.command == "generic_nack":
            status = pdu.status if pdu.status != codec.ESME_ROK else codec.ESME_RINVCMDID
            request.deferred.errback(RequestFailed(request.command, status))
        elif pdu.command != request.command + "_resp":
            self.log.warn(
                "SMPP {label}: {command} answers a {request}",
                label=self.label,
                command=pdu.command,
                request=request.command,
            )
            request.deferred.errback(RequestFailed(request.command, codec.ESME_RINVCMDID))
        else:
            request.deferred.callback(pdu)

    def _deliver_received(self, pdu: codec.Pdu) -> None:
        if self.session.state not in MAY_RECEIVE_DELIVER or self.on_deliver is None:
            self._write(codec.encode_header_only(_DELIVER_SM_RESP, pdu.sequence, codec.ESME_RINVBNDSTS))
            return
        # Answer only once the receipt is recorded: if we die before, the SMSC delivers it again.
        handled: Deferred[int] = maybeDeferred(self.on_deliver, pdu)
        sequence = (pdu.sequence,)
        handled.addCallbacks(
            self._answer_deliver, self._deliver_failed, callbackArgs=sequence, errbackArgs=sequence
        )

    def _answer_deliver(self, status: int, sequence: int) -> None:
        if status == codec.ESME_ROK:
            # The body is an empty message_id: a constant, not worth smpplib's generic encoder.
            self._write(codec.encode_header_only(_DELIVER_SM_RESP, sequence, length=17) + b"\x00")
        else:
            self._write(codec.encode_header_only(_DELIVER_SM_RESP, sequence, status))

    def _deliver_failed(self, failure: Failure, sequence: int) -> None:
        self.log.failure("SMPP {label}: handling a deliver_sm failed", failure, label=self.label)
        self._answer_deliver(codec.ESME_RX_T_APPN, sequence)

    # -- keep-alive ---------------------------------------------------------------------------------------

    def _enquire(self) -> None:
        self._enquire_call = self.clock.callLater(self.settings.enquire_link_interval, self._enquire)
        if self.session.state not in MAY_ENQUIRE:
            return
        sequence = self._next_sequence()
        answer = self._request("enquire_link", codec.encode_header_only(_ENQUIRE_LINK, sequence), sequence)

        def unanswered(failure: Failure) -> None:
            if isinstance(failure.value, NoResponse) and failure.value.why == "timeout":
                self._drop("enquire_link unanswered")
            elif failure.check(RequestFailed):
                self.log.warn("SMPP {label}: enquire_link refused: {e}", label=self.label, e=failure.value)

        answer.addErrback(unanswered)

    def _check_silence(self) -> None:
        silent_for = self.clock.seconds() - self._last_heard
        if silent_for >= self.settings.link_dead_timeout:
            self._silence_call = None
            self._drop(f"nothing heard for {silent_for:.0f}s")
            return
        self._silence_call = self.clock.callLater(
            self.settings.link_dead_timeout - silent_for, self._check_silence
        )


class SmppClientFactory(Factory):
    """Builds one SmppClientProtocol per connection (ClientService reconnects with a new one)."""

    def __init__(
        self,
        settings: SessionSettings,
        clock: IReactorTime,
        on_deliver: DeliverHandler | None,
        label: str,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.on_deliver = on_deliver
        self.label = label

    def buildProtocol(self, addr: object) -> SmppClientProtocol:
        protocol = SmppClientProtocol(self.settings, self.clock, self.on_deliver, self.label)
        protocol.factory = self
        return protocol
