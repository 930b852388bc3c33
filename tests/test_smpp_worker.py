"""Binds, router and outbox worker with an in-process SMSC on StringTransports and a task.Clock."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import REGISTRY
from twisted.internet import task
from twisted.logger import LogLevel, globalLogPublisher

from idtronic_tel.config_schema import SmppBindConfig, SmppConfig
from idtronic_tel.core.ports import MAX_RESENDS, SmsState
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


def two_binds() -> World:
    return World(
        binds=[
            SmppBindConfig(name="a", endpoint="tcp:a:1", max_tps=1000),
            SmppBindConfig(name="b", endpoint="tcp:b:1", max_tps=1000),
        ]
    )


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


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


def test_timeout_sends_the_same_text_again_and_counts_it(world: World) -> None:
    sms = world.outbox.queue()
    before = sample("idtronic_smpp_resends_total", cause="interrupted")
    world.start()
    conn = world.conn()
    (first,) = submits(conn.read())
    world.clock.advance(10)  # no submit_sm_resp within response_timeout
    (again,) = submits(conn.read())
    assert again.body.short_message == first.body.short_message == sms.text.encode()
    assert again.sequence != first.sequence
    conn.answer([again])
    conn.answer([first])  # the late answer to the first copy matches no request any more
    record = world.outbox.records[sms.sms_id]
    assert (record.state, record.in_doubt, record.resends, record.claims) == (SmsState.SUBMITTED, False, 1, 1)
    assert record.message_ids == ["2329"]
    assert sample("idtronic_smpp_resends_total", cause="interrupted") == before + 1
    world.stop([conn])


def test_copies_that_never_get_an_answer_stop_at_max_resends(world: World) -> None:
    sms = world.outbox.queue()
    world.start()
    conn = world.conn()
    for _ in range(MAX_RESENDS + 1):
        assert len(submits(conn.read())) == 1
        world.clock.advance(10)
    assert not submits(conn.read())
    record = world.outbox.records[sms.sms_id]
    assert (record.state, record.in_doubt, record.resends) == (SmsState.SUBMITTED, True, MAX_RESENDS)
    world.clock.advance(10)
    assert not submits(conn.read())
    conn.answer([p for p in conn.read() if p.command == "enquire_link"])
    world.stop([conn])


def test_connection_lost_mid_window_sends_the_unanswered_again_after_reconnect() -> None:
    w = World(binds=[SmppBindConfig(name="smsc1", endpoint="tcp:a:1", max_tps=1000, window=10)])
    w.outbox.queue_many(10)
    w.start()
    conn = w.conn()
    written = submits(conn.read())
    conn.answer(written[:4])
    conn.drop()
    states = [(r.state, r.resends) for r in w.outbox.records.values()]
    # Not given back: the six are kept, in order, for the bind's return (they may have arrived).
    assert states == [(SmsState.SUBMITTED, 0)] * 4 + [(SmsState.QUEUED, 1)] * 6
    w.clock.advance(1.5)  # reconnect: backoff 1 s x 1.5, no jitter
    w.conn().answer(w.conn().read())  # bind
    w.clock.advance(0.5)  # the next poll claims them again
    again = submits(w.conn().read())
    assert [p.body.short_message for p in again] == [p.body.short_message for p in written[4:]]
    w.conn().answer(again)
    assert w.outbox.states() == {SmsState.SUBMITTED: 10}
    assert [r.resends for r in w.outbox.records.values()] == [0] * 4 + [1] * 6
    w.stop([w.conn()])


def test_no_bind_gives_unwritten_messages_back() -> None:
    w = World(binds=[SmppBindConfig(name="smsc1", endpoint="tcp:a:1", max_tps=1, window=5)])
    w.outbox.queue_many(3)
    w.start()
    conn = w.conn()
    assert len(submits(conn.read())) == 2  # 1/s, burst 2: the third waits for a token
    conn.answer(conn.received[-1:])  # the second is accepted, the first stays unanswered
    conn.drop()
    states = [(r.state.value, r.resends) for r in w.outbox.records.values()]
    assert states == [("queued", 1), ("submitted", 0), ("queued", 0)]
    assert [c[0] for c in w.outbox.calls].count("mark_retry") == 2
    w.stop([])


def test_long_message_whose_bind_drops_between_parts_goes_whole_on_another_bind() -> None:
    w = two_binds()
    w.start()
    a, b = w.conn("tcp:a:1"), w.conn("tcp:b:1")
    sms = w.outbox.queue(text="x" * 300)
    first, second = submits(a.read()) or submits(b.read())
    on_a = bool(a.received and submits(a.received))
    here, there = (a, b) if on_a else (b, a)
    here.answer([first])
    here.drop()  # part 2 is lost with the link
    parts = submits(there.read())
    assert [p.body.short_message for p in parts] == [first.body.short_message, second.body.short_message]
    there.answer(parts)
    record = w.outbox.records[sms.sms_id]
    assert record.state is SmsState.SUBMITTED and record.resends == 2  # two parts written twice
    assert record.bind == ("b" if on_a else "a")
    w.clock.advance(1.5)
    w.conn("tcp:a:1" if on_a else "tcp:b:1").answer(w.conn("tcp:a:1" if on_a else "tcp:b:1").read())
    w.stop([w.conn("tcp:a:1"), w.conn("tcp:b:1")])


def test_restart_sends_again_what_the_previous_run_left_in_flight() -> None:
    w = World()
    left = w.outbox.queue(text="left 111111")
    expired = w.outbox.queue(text="expired 222222", lifetime=30)
    tired = w.outbox.queue(text="tired 333333")
    for sms in (left, expired, tired):
        record = w.outbox.records[sms.sms_id]
        record.state, record.claimed_by = SmsState.SENDING, "w1"  # the crashed run's claims
    w.outbox.records[tired.sms_id].resends = MAX_RESENDS
    w.clock.advance(30)
    before = sample("idtronic_smpp_resends_total", cause="crash")
    w.start()
    conn = w.conn()
    (again,) = submits(conn.read())
    assert again.body.short_message == b"left 111111"
    conn.answer([again])
    records = w.outbox.records
    assert (records[left.sms_id].state, records[left.sms_id].resends) == (SmsState.SUBMITTED, 1)
    assert records[expired.sms_id].state is SmsState.EXPIRED
    assert (records[tired.sms_id].state, records[tired.sms_id].in_doubt) == (SmsState.SUBMITTED, True)
    assert sample("idtronic_smpp_resends_total", cause="crash") == before + 1
    w.stop([conn])


def test_stale_claims_of_a_dead_daemon_are_sent_again_live_ones_are_not() -> None:
    w = World()
    dead = w.outbox.queue(text="dead 111111")
    alive = w.outbox.queue(text="alive 222222")
    w.outbox.claim("w2", 2, 40.0)
    w.start()
    conn = w.conn()
    assert not submits(conn.read())
    written = []
    for _ in range(9):  # "w2" keeps renewing the lease of `alive` only
        w.outbox.renew("w2", [alive.sms_id], 40.0)
        w.clock.advance(5)
        pdus = conn.read()
        conn.answer([p for p in pdus if p.command == "enquire_link"])
        written += [(w.clock.seconds() - 1_800_000_000, p) for p in submits(pdus)]
    ((when, taken),) = written
    assert when == 45  # w2 claimed at 0 for 40 s: stale past 40, found by the renewal at 45
    assert taken.body.short_message == b"dead 111111"
    conn.answer([taken])
    assert w.outbox.records[dead.sms_id].claimed_by == "w1"
    assert (w.outbox.records[dead.sms_id].resends, w.outbox.records[dead.sms_id].state) == (
        1,
        SmsState.SUBMITTED,
    )
    assert w.outbox.records[alive.sms_id].state is SmsState.SENDING
    w.stop([conn])


def test_no_part_is_written_unless_the_lease_outlasts_its_response() -> None:
    w = World(binds=[SmppBindConfig(name="smsc1", endpoint="tcp:a:1", max_tps=1, window=40)])
    w.outbox.queue_many(40)
    w.start()  # t0: all forty claimed at once, leased for 10 + 30 s
    conn = w.conn()
    w.outbox.down.add("renew")  # the database stops answering this worker's renewals
    sent = len(w.serve(conn))
    for _ in range(35):
        w.clock.advance(1)
        sent += len(w.serve(conn))
    # Two at t0 (the bucket's burst), then one a second until t0 + 25 s: never later.
    assert sent == 27
    w.outbox.down.clear()
    w.clock.advance(5)  # the next renewal confirms the leases: sending resumes
    assert len(w.serve(conn)) == 2  # the bucket's burst again
    w.stop([conn])


def test_a_claim_taken_over_by_another_daemon_is_not_sent_from_here() -> None:
    w = World(binds=[SmppBindConfig(name="smsc1", endpoint="tcp:a:1", max_tps=0.1, window=10)])
    w.outbox.queue_many(5)
    w.start()
    conn = w.conn()
    assert len(w.serve(conn)) == 2  # the burst; three wait for rate tokens (one per 10 s)
    for record in list(w.outbox.records.values())[2:]:
        record.claimed_by = "w2"  # lease ran out while our renewals failed; w2 took them
    w.clock.advance(5)  # the renewal learns it
    for _ in range(30):
        w.clock.advance(1)
        assert not submits(conn.read())
    assert [r.state for r in w.outbox.records.values()] == [SmsState.SUBMITTED] * 2 + [SmsState.SENDING] * 3
    w.stop([conn])


def test_records_are_retried_until_the_database_answers(world: World) -> None:
    sms = world.outbox.queue()
    world.start()
    conn = world.conn()
    world.outbox.down.add("mark_submitted")
    conn.answer(submits(conn.read()))
    assert world.outbox.records[sms.sms_id].state is SmsState.SENDING
    world.clock.advance(0.5)
    world.clock.advance(1)
    assert [c for c in world.outbox.calls if c == ("down", "mark_submitted")] == [
        ("down", "mark_submitted")
    ] * 3
    world.outbox.down.clear()
    world.clock.advance(2)
    assert world.outbox.records[sms.sms_id].state is SmsState.SUBMITTED
    world.stop([conn])


def test_recover_is_retried_until_the_database_answers() -> None:
    w = World()
    w.outbox.queue()
    w.outbox.down.add("recover")
    w.start()
    conn = w.conn()
    w.clock.advance(2)
    assert not submits(conn.read())
    w.outbox.down.clear()
    w.clock.advance(2)
    conn.answer(submits(conn.read()))
    assert w.outbox.states() == {SmsState.SUBMITTED: 1}
    w.stop([conn])


def test_claims_stay_within_the_windows_while_records_are_late() -> None:
    w = World(binds=[SmppBindConfig(name="smsc1", endpoint="tcp:a:1", max_tps=1000, window=10)])
    w.outbox.queue_many(50)
    w.start()
    conn = w.conn()
    w.outbox.down.add("mark_submitted")
    for _ in range(20):
        w.serve(conn)
        w.clock.advance(0.01)
    # Ten accepted, none recorded: a crash now could leave at most ten on the wire.
    assert w.outbox.states() == {SmsState.SENDING: 10, SmsState.QUEUED: 40}
    w.outbox.down.clear()
    for _ in range(200):
        w.serve(conn)
        w.clock.advance(0.05)
    assert w.outbox.states() == {SmsState.SUBMITTED: 50}
    w.stop([conn])


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
    w = two_binds()
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
