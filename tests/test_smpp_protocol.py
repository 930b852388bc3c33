"""The ESME session on a StringTransport with a task.Clock: bind, requests, timeouts, keep-alive, unbind."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from twisted.internet import task
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from idtronic_tel.core.states import IllegalTransition
from idtronic_tel.smpp import codec
from idtronic_tel.smpp.errors import BindRefused, NoResponse, NotBound, RequestFailed
from idtronic_tel.smpp.protocol import SessionSettings, SmppClientProtocol
from idtronic_tel.smpp.session import Session, SessionEvent, SessionState

SETTINGS = SessionSettings(
    system_id="test", password="secret", enquire_link_interval=30, link_dead_timeout=90, response_timeout=10
)


class NoDelayTransport(StringTransport):
    no_delay = False

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.no_delay = enabled


class Harness:
    def __init__(self) -> None:
        self.clock = task.Clock()
        self.delivered: list[codec.Pdu] = []
        self.deliver_result: Deferred[int] | None = None
        self.protocol = SmppClientProtocol(SETTINGS, self.clock, self._deliver, "test")
        self.transport = NoDelayTransport()
        self.protocol.makeConnection(self.transport)
        self.framer = codec.SmppCodec()

    def _deliver(self, pdu: codec.Pdu) -> Deferred[int]:
        self.delivered.append(pdu)
        return self.deliver_result if self.deliver_result is not None else succeed(codec.ESME_ROK)

    def written(self) -> list[codec.Pdu]:
        data = self.transport.value()
        self.transport.clear()
        events = self.framer.receive_data(data)
        assert all(isinstance(e, codec.Pdu) for e in events)
        return [e for e in events if isinstance(e, codec.Pdu)]

    def feed(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def bind(self) -> None:
        bound = self.protocol.bind("transceiver")
        (request,) = self.written()
        self.feed(codec.encode("bind_transceiver_resp", request.sequence, system_id="NODESMSC"))
        assert bound.result == "NODESMSC"

    def close(self) -> None:
        self.protocol.connectionLost(Failure(ConnectionDone()))


@pytest.fixture
def h() -> Iterator[Harness]:
    harness = Harness()
    yield harness
    if harness.protocol.state is not SessionState.CLOSED:
        harness.close()
    assert harness.clock.getDelayedCalls() == []


SUBMIT = {"source_addr": "IDTRONIC", "destination_addr": "33611223344", "short_message": b"hello"}


def test_state_table() -> None:
    session = Session()
    assert session.handle(SessionEvent.BIND_ACCEPTED) is SessionState.BOUND
    assert session.handle(SessionEvent.UNBIND) is SessionState.UNBINDING
    with pytest.raises(IllegalTransition):
        session.handle(SessionEvent.BIND_ACCEPTED)
    assert session.handle(SessionEvent.CONNECTION_LOST) is SessionState.CLOSED


def test_tcp_nodelay(h: Harness) -> None:
    assert h.transport.no_delay


def test_bind_transceiver(h: Harness) -> None:
    bound = h.protocol.bind("transceiver")
    (request,) = h.written()
    assert request.command == "bind_transceiver"
    assert request.body.system_id == b"test" and request.body.password == b"secret"
    assert request.body.interface_version == 0x34
    h.feed(bytes.fromhex("000000198000000900000000000000014e4f4445534d534300"))
    assert bound.result == "NODESMSC"
    assert h.protocol.state is SessionState.BOUND


def test_bind_refused(h: Harness) -> None:
    bound = h.protocol.bind("transmitter")
    (request,) = h.written()
    assert request.command == "bind_transmitter"
    h.feed(codec.encode_header_only(0x80000002, request.sequence, codec.ESME_RINVPASWD))
    failure = bound.result
    assert isinstance(failure, Failure) and isinstance(failure.value, BindRefused)
    assert failure.value.status == 0x0E
    assert h.transport.disconnecting
    bound.addErrback(lambda _: None)


def test_bind_timeout_closes(h: Harness) -> None:
    bound = h.protocol.bind("receiver")
    h.clock.advance(10)
    assert isinstance(bound.result.value, NoResponse)
    assert h.transport.disconnecting
    bound.addErrback(lambda _: None)


def test_submit_before_bind_writes_nothing(h: Harness) -> None:
    with pytest.raises(NotBound):
        h.protocol.submit_sm(SUBMIT)
    assert h.transport.value() == b""


def test_submit_response_matched_by_sequence(h: Harness) -> None:
    h.bind()
    first = h.protocol.submit_sm(SUBMIT)
    second = h.protocol.submit_sm(SUBMIT)
    a, b = h.written()
    h.feed(codec.encode("submit_sm_resp", b.sequence, message_id="0000232A"))
    h.feed(codec.encode("submit_sm_resp", a.sequence, message_id="00002329"))
    assert first.result.body.message_id == b"00002329"
    assert second.result.body.message_id == b"0000232A"


def test_submit_error_status_and_generic_nack(h: Harness) -> None:
    h.bind()
    first = h.protocol.submit_sm(SUBMIT)
    second = h.protocol.submit_sm(SUBMIT)
    a, b = h.written()
    h.feed(codec.encode_header_only(0x80000004, a.sequence, codec.ESME_RTHROTTLED))
    h.feed(codec.generic_nack(b.sequence, codec.ESME_RINVCMDLEN))
    assert isinstance(first.result.value, RequestFailed) and first.result.value.status == 0x58
    assert isinstance(second.result.value, RequestFailed) and second.result.value.status == 0x02
    first.addErrback(lambda _: None)
    second.addErrback(lambda _: None)


def test_submit_timeout_then_late_response_ignored(h: Harness) -> None:
    h.bind()
    first = h.protocol.submit_sm(SUBMIT)
    h.clock.advance(5)
    second = h.protocol.submit_sm(SUBMIT)
    a, _ = h.written()
    h.clock.advance(5)
    assert isinstance(first.result.value, NoResponse) and first.result.value.why == "timeout"
    assert not second.called
    h.clock.advance(5)
    assert isinstance(second.result.value, NoResponse)
    h.feed(codec.encode("submit_sm_resp", a.sequence, message_id="1"))  # late: logged, ignored
    first.addErrback(lambda _: None)
    second.addErrback(lambda _: None)


def test_connection_lost_fails_outstanding(h: Harness) -> None:
    h.bind()
    pending = h.protocol.submit_sm(SUBMIT)
    h.close()
    assert isinstance(pending.result.value, NoResponse) and pending.result.value.why == "connection lost"
    pending.addErrback(lambda _: None)


def test_answers_enquire_link_even_before_bind(h: Harness) -> None:
    h.feed(bytes.fromhex("00000010000000150000000000000003"))
    assert h.transport.value() == bytes.fromhex("00000010800000150000000000000003")


def test_sends_enquire_link_every_interval(h: Harness) -> None:
    h.bind()
    for _ in range(3):
        h.clock.advance(30)
        (request,) = h.written()
        assert request.command == "enquire_link"
        h.feed(codec.encode_header_only(0x80000015, request.sequence))
    assert h.protocol.state is SessionState.BOUND


def test_unanswered_enquire_link_drops(h: Harness) -> None:
    h.bind()
    h.clock.advance(30)
    assert [p.command for p in h.written()] == ["enquire_link"]
    h.clock.advance(10)
    assert h.transport.disconnecting


def test_silence_drops_the_link() -> None:
    clock = task.Clock()
    settings = SessionSettings("test", "secret", enquire_link_interval=1000, link_dead_timeout=90)
    protocol = SmppClientProtocol(settings, clock, None, "test")
    transport = StringTransport()
    protocol.makeConnection(transport)
    clock.advance(60)
    protocol.dataReceived(bytes.fromhex("00000010000000150000000000000003"))  # heard at t=60
    clock.advance(89.9)
    assert not transport.disconnecting
    clock.advance(0.2)
    assert transport.disconnecting
    protocol.connectionLost(Failure(ConnectionDone()))
    assert clock.getDelayedCalls() == []


def test_deliver_sm_answered_after_handler(h: Harness) -> None:
    h.bind()
    h.deliver_result = Deferred()
    h.feed(
        codec.encode(
            "deliver_sm",
            77,
            source_addr="33611223344",
            destination_addr="IDTRONIC",
            esm_class=4,
            short_message=b"id:1 stat:DELIVRD",
        )
    )
    assert len(h.delivered) == 1 and h.transport.value() == b""
    h.deliver_result.callback(codec.ESME_ROK)
    assert h.transport.value() == bytes.fromhex("0000001180000005000000000000004d00")


def test_deliver_sm_handler_failure_asks_for_redelivery(h: Harness) -> None:
    h.bind()
    h.deliver_result = Deferred()
    h.feed(codec.encode("deliver_sm", 78, esm_class=4, short_message=b"id:1 stat:DELIVRD"))
    h.deliver_result.errback(RuntimeError("database down"))
    (resp,) = h.written()
    assert (resp.command, resp.status, resp.sequence) == ("deliver_sm_resp", codec.ESME_RX_T_APPN, 78)


def test_unknown_command_gets_generic_nack(h: Harness) -> None:
    h.feed(bytes.fromhex("00000010000000770000000000000009"))
    assert h.transport.value() == codec.generic_nack(9, codec.ESME_RINVCMDID)
    assert not h.transport.disconnecting


def test_garbage_drops_without_nack(h: Harness) -> None:
    h.feed(b"\x00\x00\x00\x08garbage!")
    assert h.transport.value() == b""
    assert h.transport.disconnecting


def test_graceful_unbind(h: Harness) -> None:
    h.bind()
    closed = h.protocol.unbind()
    (request,) = h.written()
    assert request.command == "unbind"
    assert h.protocol.state is SessionState.UNBINDING
    with pytest.raises(NotBound):
        h.protocol.submit_sm(SUBMIT)
    h.feed(codec.encode_header_only(0x80000006, request.sequence))
    assert h.transport.disconnecting and not closed.called
    h.close()
    assert closed.called


def test_unbind_times_out(h: Harness) -> None:
    h.bind()
    closed = h.protocol.unbind()
    h.clock.advance(10)
    assert h.transport.disconnecting
    h.close()
    assert closed.called


def test_smsc_unbind(h: Harness) -> None:
    h.bind()
    h.feed(codec.encode_header_only(0x00000006, 12))
    assert h.transport.value() == codec.encode_header_only(0x80000006, 12)
    assert h.protocol.state is SessionState.UNBINDING
    assert h.transport.disconnecting


def test_a_request_written_from_a_timeout_errback_leaves_one_timer(h: Harness) -> None:
    """The worker sends a message again from the errback of its timed-out copy: one timer must cover
    both, or the second is never cancelled (and the connection's teardown leaves it behind)."""
    h.bind()
    again: list[Deferred[codec.Pdu]] = []

    def resend(failure: Failure) -> None:
        failure.trap(NoResponse)
        again.append(h.protocol.submit_sm(SUBMIT))

    h.protocol.submit_sm(SUBMIT).addErrback(resend)
    h.written()
    h.clock.advance(10)
    assert len(again) == 1 and len(h.written()) == 1
    timers = [c for c in h.clock.getDelayedCalls() if "_expire_requests" in repr(c)]
    assert len(timers) == 1
    again[0].addErrback(lambda f: f.trap(NoResponse))
