"""Binds, router and outbox worker with an in-process SMSC on StringTransports and a task.Clock."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from twisted.internet import task
from twisted.logger import LogLevel, globalLogPublisher

from idtronic_tel.config_schema import SmppBindConfig, SmppConfig
from idtronic_tel.core.ports import SmsState
from idtronic_tel.smpp import codec
from idtronic_tel.smpp.service import SmppService, makeSmppService
from tests.fakes_smpp import FakeConnection, FakeEndpoint, FakeOutbox


class World:
    def __init__(self, binds: list[SmppBindConfig] | None = None, **smpp: Any) -> None:
        self.clock = task.Clock()
        self.clock.advance(1_800_000_000)
        self.outbox = FakeOutbox(now=lambda: datetime.fromtimestamp(self.clock.seconds(), UTC))
        self.endpoints: dict[str, FakeEndpoint] = {}
        settings = {"poll_interval": 0.5, "response_timeout": 10.0, "bind_refused_retry": 300.0}
        settings.update(smpp)
        self.config = SmppConfig(
            binds=tuple(binds or [SmppBindConfig(name="smsc1", endpoint="tcp:a:1", max_tps=1000)]),
            **settings,
        )
        self.service: SmppService = makeSmppService(
            self.config,
            self.outbox,
            "w1",
            reactor=self.clock,
            endpoint_for=self._endpoint,
            jitter=lambda: 0.0,
        )

    def _endpoint(self, description: str) -> FakeEndpoint:
        return self.endpoints.setdefault(description, FakeEndpoint())

    def conn(self, endpoint: str = "tcp:a:1") -> FakeConnection:
        return self.endpoints[endpoint].last

    def start(self, answer_binds: bool = True) -> None:
        self.service.startService()
        if answer_binds:
            for endpoint in self.endpoints.values():
                for connection in endpoint.connections:
                    connection.answer(connection.read())

    def serve(self, connection: FakeConnection, status: Callable[[Any], int] | None = None) -> list[str]:
        """Answer everything the client wrote, until it writes nothing more."""
        ids: list[str] = []
        while True:
            pdus = connection.read()
            if not pdus:
                return ids
            ids += connection.answer(pdus, status)

    def stop(self, connections: list[FakeConnection]) -> None:
        stopped = self.service.stopService()
        for connection in connections:
            for pdu in connection.read():
                if pdu.command == "unbind":
                    connection.answer([pdu])
            if connection.transport.disconnecting:
                connection.drop()
        assert stopped.called
        assert self.clock.getDelayedCalls() == []


@pytest.fixture
def world() -> Iterator[World]:
    w = World()
    yield w


def submits(pdus: list[codec.Pdu]) -> list[codec.Pdu]:
    return [p for p in pdus if p.command == "submit_sm"]


def test_submit_and_mark_submitted_after_resp(world: World) -> None:
    sms = world.outbox.queue()
    world.start()
    conn = world.conn()
    (pdu,) = submits(conn.read())
    assert world.outbox.records[sms.sms_id].state is SmsState.SENDING  # not before the response
    body = pdu.body
    assert (body.source_addr, body.source_addr_ton, body.source_addr_npi) == (b"IDTRONIC", 5, 0)
    assert (body.destination_addr, body.dest_addr_ton, body.dest_addr_npi) == (b"33611223344", 1, 1)
    assert body.registered_delivery == 1 and body.data_coding == 0 and body.esm_class == 0
    assert body.validity_period == b"000000000500000R"
    conn.answer([pdu])
    record = world.outbox.records[sms.sms_id]
    assert (record.state, record.message_ids, record.bind) == (SmsState.SUBMITTED, ["2329"], "smsc1")
    assert world.outbox.calls[0] == ("recover", "w1")
    world.stop([conn])


def test_claims_sized_to_window_and_window_respected(world: World) -> None:
    world.outbox.queue_many(25)
    world.start()
    conn = world.conn()
    claims = [c for c in world.outbox.calls if c[0] == "claim"]
    assert claims[0] == ("claim", ("w1", 10))
    written = submits(conn.read())
    assert len(written) == 10  # window 10
    conn.answer(written)
    for _ in range(5):  # 1000/s: the bucket's burst is 20, then one per ms
        world.serve(conn)
        world.clock.advance(0.01)
    assert world.outbox.states() == {SmsState.SUBMITTED: 25}
    assert all(c[1][1] <= 10 for c in world.outbox.calls if c[0] == "claim")
    world.stop([conn])


def test_wake_up_without_waiting_for_the_poll(world: World) -> None:
    world.start()
    conn = world.conn()
    world.outbox.queue()
    written = submits(conn.read())
    assert len(written) == 1
    conn.answer(written)
    world.stop([conn])


def test_suspended_outbox_then_resume() -> None:
    w = World()
    w.outbox.suspended = True
    w.outbox.queue()
    w.start()
    conn = w.conn()
    w.clock.advance(5)
    assert not submits(conn.read())
    for request in conn.received:
        conn.answer([request])
    w.outbox.resume()
    written = submits(conn.read())
    assert len(written) == 1
    conn.answer(written)
    w.stop([conn])


def test_long_message_parts_in_order(world: World) -> None:
    sms = world.outbox.queue(text="x" * 300)
    world.start()
    conn = world.conn()
    parts = submits(conn.read())
    assert [p.body.esm_class for p in parts] == [0x40, 0x40]
    assert [p.body.short_message[:6] for p in parts] == [bytes([5, 0, 3, sms.sms_id, 2, i]) for i in (1, 2)]
    conn.answer(parts)
    assert world.outbox.records[sms.sms_id].message_ids == ["2329", "232A"]
    world.stop([conn])


def test_throttled_message_is_retried_first_and_bind_slows_down() -> None:
    w = World(binds=[SmppBindConfig(name="smsc1", endpoint="tcp:a:1", max_tps=100, window=1)])
    first = w.outbox.queue(text="first 111111")
    second = w.outbox.queue(text="second 222222")
    w.start()
    conn = w.conn()
    (pdu,) = submits(conn.read())
    bind = w.service.binds[0]
    conn.answer([pdu], lambda _: codec.ESME_RTHROTTLED)
    assert bind.bucket.rate == 50
    w.clock.advance(0.05)
    (again,) = submits(conn.read())
    assert again.body.short_message == pdu.body.short_message == first.text.encode()
    conn.answer([again])
    w.clock.advance(0.05)
    w.serve(conn)
    assert w.outbox.records[first.sms_id].message_ids == ["2329"]
    assert w.outbox.records[second.sms_id].message_ids == ["232A"]
    w.stop([conn])


def test_permanent_error_is_undeliverable(world: World) -> None:
    sms = world.outbox.queue()
    world.start()
    conn = world.conn()
    conn.answer(conn.read(), lambda _: 0x0B)  # ESME_RINVDSTADR
    record = world.outbox.records[sms.sms_id]
    assert record.state is SmsState.UNDELIVERABLE and "0x0000000B" in record.reasons[0]
    world.stop([conn])


def test_timeout_is_in_doubt_never_resent(world: World) -> None:
    sms = world.outbox.queue()
    world.start()
    conn = world.conn()
    assert len(submits(conn.read())) == 1
    world.clock.advance(10)
    record = world.outbox.records[sms.sms_id]
    assert record.state is SmsState.SUBMITTED and record.in_doubt
    world.clock.advance(10)
    assert not submits(conn.read())
    world.stop([conn])


def test_connection_lost_mid_window() -> None:
    w = World(binds=[SmppBindConfig(name="smsc1", endpoint="tcp:a:1", max_tps=1000, window=10)])
    w.outbox.queue_many(10)
    w.start()
    conn = w.conn()
    written = submits(conn.read())
    conn.answer(written[:4])
    conn.drop()
    states = [(r.state, r.in_doubt) for r in w.outbox.records.values()]
    assert states == [(SmsState.SUBMITTED, False)] * 4 + [(SmsState.SUBMITTED, True)] * 6
    assert all(r.claims == 1 for r in w.outbox.records.values())
    w.clock.advance(1.5)  # reconnect: backoff 1 s x 1.5, no jitter
    w.conn().answer(w.conn().read())
    w.stop([w.conn()])


def test_no_bind_gives_unwritten_messages_back() -> None:
    w = World(binds=[SmppBindConfig(name="smsc1", endpoint="tcp:a:1", max_tps=1, window=5)])
    w.outbox.queue_many(3)
    w.start()
    conn = w.conn()
    assert len(submits(conn.read())) == 2  # 1/s, burst 2: the third waits for a token
    conn.answer(conn.received[-1:])  # the second is accepted, the first stays unanswered
    conn.drop()
    states = sorted((r.state.value, r.in_doubt) for r in w.outbox.records.values())
    assert states == [("queued", False), ("submitted", False), ("submitted", True)]
    assert [c[0] for c in w.outbox.calls].count("mark_retry") == 1
    w.stop([])


def test_expired_right_before_writing_is_never_sent() -> None:
    w = World(binds=[SmppBindConfig(name="smsc1", endpoint="tcp:a:1", max_tps=1, window=5)])
    w.outbox.queue_many(2, lifetime=60)
    late = w.outbox.queue(lifetime=1.5)
    w.start()
    conn = w.conn()
    written = submits(conn.read())
    assert len(written) == 2  # the burst
    conn.answer(written)
    w.clock.advance(1)  # a token again, but 0.5 s left for the third message
    assert not submits(conn.read())
    assert w.outbox.records[late.sms_id].state is SmsState.EXPIRED
    w.serve(conn)
    w.stop([conn])


def test_rate_cap_on_the_clock() -> None:
    w = World(binds=[SmppBindConfig(name="smsc1", endpoint="tcp:a:1", max_tps=20, window=100)])
    w.outbox.queue_many(100)
    w.start()
    conn = w.conn()
    sent = 0
    for _ in range(50):  # 5 simulated seconds in 0.1 s steps
        sent += len(w.serve(conn))
        w.clock.advance(0.1)
    sent += len(w.serve(conn))
    assert 99 <= sent <= 100  # 20/s over 5 s, plus the 2 tokens the bucket starts with
    w.stop([conn])


def test_round_robin_and_failover() -> None:
    w = World(
        binds=[
            SmppBindConfig(name="a", endpoint="tcp:a:1", max_tps=1000),
            SmppBindConfig(name="b", endpoint="tcp:b:1", max_tps=1000),
        ]
    )
    w.start()
    a, b = w.conn("tcp:a:1"), w.conn("tcp:b:1")
    w.outbox.queue_many(6)
    assert len(submits(a.read())) == 3 and len(submits(b.read())) == 3
    a.answer(a.received)
    b.answer(b.received)
    a.drop()
    w.outbox.queue_many(4)
    written = submits(b.read())
    assert len(written) == 4
    b.answer(written)
    assert {r.bind for r in w.outbox.records.values()} == {"a", "b"}
    assert w.outbox.states() == {SmsState.SUBMITTED: 10}
    w.clock.advance(1.5)
    w.conn("tcp:a:1").answer(w.conn("tcp:a:1").read())
    w.stop([w.conn("tcp:a:1"), b])


def test_transmitter_receiver_is_two_connections() -> None:
    w = World(binds=[SmppBindConfig(name="s", endpoint="tcp:a:1", mode="transmitter_receiver")])
    w.start()
    tx, rx = w.endpoints["tcp:a:1"].connections
    assert [p.command for p in tx.received] == ["bind_transmitter"]
    assert [p.command for p in rx.received] == ["bind_receiver"]
    w.outbox.queue()
    written = submits(tx.read())
    assert len(written) == 1 and not submits(rx.read())
    tx.answer(written)
    w.stop([tx, rx])


def test_refused_bind_logged_once_and_retried_slowly() -> None:
    w = World()
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        w.service.startService()
        endpoint = w.endpoints["tcp:a:1"]
        for attempt in range(3):
            conn = endpoint.last
            (bind,) = conn.read()
            conn.send(codec.encode_header_only(0x80000009, bind.sequence, codec.ESME_RINVPASWD))
            conn.drop()
            assert len(endpoint.connections) == attempt + 1
            w.clock.advance(299)
            assert len(endpoint.connections) == attempt + 1  # not hammered
            w.clock.advance(1)
    finally:
        globalLogPublisher.removeObserver(events.append)
    refusals = [e for e in events if e.get("log_level") is LogLevel.error and "refused" in e["log_format"]]
    assert len(refusals) == 1
    assert "0x0000000E" in refusals[0]["status"]
    assert not any("secret" in repr(e) for e in events)
    conn = endpoint.last
    conn.answer(conn.read())
    w.stop([conn])


def test_stop_waits_for_outstanding_then_unbinds(world: World) -> None:
    world.outbox.queue_many(2)
    world.start()
    conn = world.conn()
    written = submits(conn.read())
    stopped = world.service.stopService()
    assert not stopped.called and not any(p.command == "unbind" for p in conn.read())
    conn.answer(written)
    (unbind,) = conn.read()
    assert unbind.command == "unbind"
    conn.answer([unbind])
    conn.drop()
    assert stopped.called
    assert world.outbox.states() == {SmsState.SUBMITTED: 2}
    assert world.clock.getDelayedCalls() == []
