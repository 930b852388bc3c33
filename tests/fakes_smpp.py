"""Test doubles for the SMPP edge: an in-memory SmsOutbox, and a launcher for the node-smpp SMSC fixture."""

from __future__ import annotations

import functools
import json
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ProcessDone
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from idtronic_tel.core.ports import MAX_RESENDS, OutgoingSms, Recovered, SmsState

FIXTURE_DIR = Path(__file__).parent / "smsc_fixture"


class DatabaseDown(Exception):
    """What a FakeOutbox method named in `down` fails with."""


def _may_fail(method: Callable[..., Deferred[Any]]) -> Callable[..., Deferred[Any]]:
    @functools.wraps(method)
    def call(self: FakeOutbox, *args: Any) -> Deferred[Any]:
        if method.__name__ in self.down:
            self.calls.append(("down", method.__name__))
            return fail(DatabaseDown(method.__name__))
        return method(self, *args)

    return call


@dataclass
class Record:
    sms: OutgoingSms
    state: SmsState = SmsState.QUEUED
    claimed_by: str | None = None
    message_ids: list[str] = field(default_factory=list)
    bind: str | None = None
    in_doubt: bool = False
    reasons: list[str] = field(default_factory=list)
    part_states: dict[str, str] = field(default_factory=dict)
    claims: int = 0
    resends: int = 0
    lease_until: datetime | None = None


class FakeOutbox:
    """SmsOutbox in memory, with the same rules as the real one (claim order, expiry on claim, suspension),
    a log of every call, and `when(predicate)` to wait for a state without sleeping."""

    def __init__(self, now: Callable[[], datetime] | None = None) -> None:
        self.now = now or (lambda: datetime.now(UTC))
        self.records: dict[int, Record] = {}
        self.calls: list[tuple[str, Any]] = []
        self.suspended = False
        self.down: set[str] = set()  # methods that fail as if the database were unreachable
        self._callbacks: list[Callable[[], None]] = []
        self._waiters: list[tuple[Callable[[], bool], Deferred[None]]] = []
        self._next_id = 1

    # -- test helpers -------------------------------------------------------------------------------------

    def queue(
        self,
        text: str = "id-tronic : code 123456. Ne le communiquez jamais.",
        destination: str = "+33611223344",
        lifetime: float = 300.0,
        purpose: str = "payment",
    ) -> OutgoingSms:
        sms = OutgoingSms(self._next_id, destination, text, self.now() + timedelta(seconds=lifetime), purpose)
        self._next_id += 1
        self.records[sms.sms_id] = Record(sms)
        for callback in list(self._callbacks):
            callback()
        return sms

    def queue_many(self, count: int, **kwargs: Any) -> list[OutgoingSms]:
        return [self.queue(**kwargs) for _ in range(count)]

    def resume(self) -> None:
        self.suspended = False
        for callback in list(self._callbacks):
            callback()

    def states(self) -> dict[SmsState, int]:
        counts: dict[SmsState, int] = {}
        for record in self.records.values():
            counts[record.state] = counts.get(record.state, 0) + 1
        return counts

    def in_states(self, *states: SmsState) -> list[Record]:
        return [record for record in self.records.values() if record.state in states]

    def when(self, predicate: Callable[[], bool]) -> Deferred[None]:
        waiter: Deferred[None] = Deferred()
        if predicate():
            waiter.callback(None)
        else:
            self._waiters.append((predicate, waiter))
        return waiter

    def settled(self) -> bool:
        """Every message left QUEUED/SENDING (receipts may still come)."""
        return all(r.state not in (SmsState.QUEUED, SmsState.SENDING) for r in self.records.values())

    def _changed(self) -> None:
        waiting, self._waiters = self._waiters, []
        for predicate, waiter in waiting:
            if predicate():
                waiter.callback(None)
            else:
                self._waiters.append((predicate, waiter))

    def _set(
        self, sms_id: int, state: SmsState, expected: Iterable[SmsState] = (SmsState.SENDING,)
    ) -> Record:
        record = self.records[sms_id]
        assert record.state in expected, f"sms {sms_id}: {state} from {record.state}"
        record.state = state
        return record

    # -- SmsOutbox ----------------------------------------------------------------------------------------

    @_may_fail
    def claim(self, worker: str, limit: int, lease: float) -> Deferred[list[OutgoingSms]]:
        self.calls.append(("claim", (worker, limit)))
        claimed: list[OutgoingSms] = []
        if self.suspended:
            return succeed(claimed)
        now = self.now()
        for record in self.records.values():  # insertion order = oldest first
            if len(claimed) >= limit:
                break
            if record.state is not SmsState.QUEUED:
                continue
            if record.sms.expires_at <= now:
                record.state = SmsState.EXPIRED
                continue
            record.state = SmsState.SENDING
            record.claimed_by = worker
            record.lease_until = now + timedelta(seconds=lease)
            record.claims += 1
            claimed.append(replace(record.sms, resends=record.resends))
        self._changed()
        return succeed(claimed)

    @_may_fail
    def renew(self, worker: str, sms_ids: list[int], lease: float) -> Deferred[list[int]]:
        self.calls.append(("renew", (worker, list(sms_ids))))
        held = []
        for sms_id in sms_ids:
            record = self.records[sms_id]
            if record.state is SmsState.SENDING and record.claimed_by == worker:
                record.lease_until = self.now() + timedelta(seconds=lease)
                held.append(sms_id)
        return succeed(held)

    def _mine(self, worker: str, sms_id: int, resends: int) -> Record | None:
        record = self.records[sms_id]
        if record.state is not SmsState.SENDING or record.claimed_by != worker:
            return None
        record.resends = max(record.resends, resends)
        return record

    def _finish(
        self, call: str, worker: str, sms_id: int, state: SmsState, reason: str | None, resends: int
    ) -> Deferred[None]:
        self.calls.append((call, (sms_id, reason) if reason is not None else sms_id))
        record = self._mine(worker, sms_id, resends)
        if record is not None:
            record.state = state
            if state is SmsState.QUEUED:
                record.claimed_by = None
            if reason is not None:
                record.reasons.append(reason)
            self._changed()
        return succeed(None)

    @_may_fail
    def mark_submitted(
        self, worker: str, sms_id: int, message_ids: list[str], bind: str, resends: int
    ) -> Deferred[None]:
        self.calls.append(("mark_submitted", (sms_id, list(message_ids), bind)))
        record = self._mine(worker, sms_id, resends)
        if record is not None:
            record.state = SmsState.SUBMITTED
            record.message_ids = list(message_ids)
            record.bind = bind
            self._changed()
        return succeed(None)

    @_may_fail
    def mark_retry(self, worker: str, sms_id: int, reason: str, resends: int) -> Deferred[None]:
        return self._finish("mark_retry", worker, sms_id, SmsState.QUEUED, reason, resends)

    @_may_fail
    def mark_undeliverable(self, worker: str, sms_id: int, reason: str, resends: int) -> Deferred[None]:
        return self._finish("mark_undeliverable", worker, sms_id, SmsState.UNDELIVERABLE, reason, resends)

    @_may_fail
    def mark_expired(self, worker: str, sms_id: int, resends: int) -> Deferred[None]:
        return self._finish("mark_expired", worker, sms_id, SmsState.EXPIRED, None, resends)

    @_may_fail
    def mark_in_doubt(self, worker: str, sms_id: int, reason: str, resends: int) -> Deferred[None]:
        record = self.records[sms_id]
        mine = record.state is SmsState.SENDING and record.claimed_by == worker
        self._finish("mark_in_doubt", worker, sms_id, SmsState.SUBMITTED, reason, resends)
        record.in_doubt = record.in_doubt or mine
        return succeed(None)

    @_may_fail
    def recover(self, worker: str) -> Deferred[Recovered]:
        self.calls.append(("recover", worker))
        return succeed(self._send_again(lambda r: r.claimed_by == worker))

    @_may_fail
    def recover_stale(self, worker: str, held: list[int]) -> Deferred[Recovered]:
        now = self.now()
        return succeed(
            self._send_again(
                lambda r: (
                    (r.lease_until is None or r.lease_until < now)
                    and not (r.claimed_by == worker and r.sms.sms_id in held)
                )
            )
        )

    def _send_again(self, left: Callable[[Record], bool]) -> Recovered:
        """core.outbox._send_again's policy."""
        resent = expired = in_doubt = 0
        now = self.now()
        for record in self.records.values():
            if record.state is not SmsState.SENDING or not left(record):
                continue
            if record.sms.expires_at <= now:
                record.state = SmsState.EXPIRED
                expired += 1
            elif record.resends >= MAX_RESENDS:
                record.state, record.in_doubt = SmsState.SUBMITTED, True
                in_doubt += 1
            else:
                record.state, record.claimed_by = SmsState.QUEUED, None
                record.resends += 1
                resent += 1
        self._changed()
        if resent:  # CoreSmsOutbox wakes the workers too
            for callback in list(self._callbacks):
                callback()
        return Recovered(resent, expired, in_doubt)

    @_may_fail
    def apply_receipt(self, message_id: str, state: str) -> Deferred[bool]:
        self.calls.append(("apply_receipt", (message_id, state)))
        for record in self.records.values():
            if message_id in record.message_ids:
                record.part_states[message_id] = state
                if state != SmsState.DELIVERED:
                    record.state = SmsState(state)
                elif len(record.part_states) == len(record.message_ids) and all(
                    s == SmsState.DELIVERED for s in record.part_states.values()
                ):
                    record.state = SmsState.DELIVERED
                self._changed()
                return succeed(True)
        return succeed(False)

    def on_new_work(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)


def expire_now(sms: OutgoingSms, now: datetime) -> OutgoingSms:
    return replace(sms, expires_at=now)


# ---------------------------------------------------------------------------------------------------------
# node-smpp SMSC fixture


def node_or_skip() -> str:
    """The node binary, with the fixture installed; skip if missing, fail under CI=true."""
    node = shutil.which("node")
    installed = (FIXTURE_DIR / "node_modules" / "smpp" / "package.json").exists()
    if node and installed:
        return node
    why = (
        "node is not installed"
        if not node
        else "the node-smpp fixture is not installed: run scripts/smsc-fixture-install"
    )
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and {why}")
    pytest.skip(why)


class _NodeProcess(ProcessProtocol):
    def __init__(self) -> None:
        self.listening: Deferred[int] = Deferred()
        self.ended: Deferred[None] = Deferred()
        self.events: list[dict[str, Any]] = []
        self.stderr = b""
        self._partial = b""

    def outReceived(self, data: bytes) -> None:
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            event = json.loads(line)
            if event["event"] == "listening":
                self.listening.callback(event["port"])
            else:
                self.events.append(event)

    def errReceived(self, data: bytes) -> None:
        self.stderr += data

    def processEnded(self, reason: Failure) -> None:
        if not self.listening.called:
            self.listening.errback(RuntimeError(f"node fixture died: {self.stderr.decode(errors='replace')}"))
        self.ended.callback(None)
        if not reason.check(ProcessDone):
            pass


class NodeSmsc:
    """`node server.js` on 127.0.0.1, port 0. `events` are the JSON lines it printed (submits, binds...)."""

    def __init__(self, reactor: Any, node: str, **options: Any) -> None:
        self.reactor = reactor
        self.node = node
        self.options = options
        self.port = 0
        self._process: Any = None
        self._protocol = _NodeProcess()

    @property
    def events(self) -> list[dict[str, Any]]:
        return self._protocol.events

    def submits(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == "submit"]

    @property
    def endpoint(self) -> str:
        return f"tcp:127.0.0.1:{self.port}"

    def start(self) -> Deferred[int]:
        args = [self.node, str(FIXTURE_DIR / "server.js")]
        for key, value in self.options.items():
            args += [f"--{key.replace('_', '-')}", str(value)]
        self._process = self.reactor.spawnProcess(
            self._protocol, self.node, args, env=dict(os.environ), path=str(FIXTURE_DIR)
        )

        def listening(port: int) -> int:
            self.port = port
            return port

        return self._protocol.listening.addCallback(listening)

    def stop(self) -> Deferred[None]:
        if not self._protocol.ended.called:
            self._process.signalProcess("TERM")
        return self._protocol.ended


# ---------------------------------------------------------------------------------------------------------
# An in-process SMSC on StringTransports, for deterministic bind/worker tests with task.Clock


class FakeConnection:
    """One client connection: what the client wrote, decoded; helpers to answer like an SMSC."""

    def __init__(self, protocol: Any) -> None:
        from twisted.internet.testing import StringTransport

        from idtronic_tel.smpp import codec

        self.codec_module = codec
        self.protocol = protocol
        self.transport = StringTransport()
        self.decoder = codec.SmppCodec()
        self.received: list[Any] = []  # every PDU the client wrote
        self._unread = 0
        self.next_id = 0x2329
        protocol.makeConnection(self.transport)

    def read(self) -> list[Any]:
        """PDUs written by the client since the last read()."""
        data = self.transport.value()
        self.transport.clear()
        pdus = [e for e in self.decoder.receive_data(data)]
        self.received.extend(pdus)
        return pdus

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def answer(self, pdus: list[Any], submit_status: Callable[[Any], int] | None = None) -> list[str]:
        """Answer binds (ok), enquire_link, unbind, and submit_sm (ids 00002329, ... or a status)."""
        codec = self.codec_module
        ids = []
        for pdu in pdus:
            if pdu.command.startswith("bind_"):
                self.send(codec.encode(pdu.command + "_resp", pdu.sequence, system_id="FAKESMSC"))
            elif pdu.command in ("enquire_link", "unbind"):
                self.send(codec.encode_header_only(pdu.command_id | codec.RESPONSE_BIT, pdu.sequence))
            elif pdu.command == "submit_sm":
                status = submit_status(pdu) if submit_status else 0
                if status:
                    self.send(codec.encode_header_only(0x80000004, pdu.sequence, status))
                else:
                    message_id = f"{self.next_id:08X}"
                    self.next_id += 1
                    ids.append(message_id)
                    self.send(codec.encode("submit_sm_resp", pdu.sequence, message_id=message_id))
        return ids

    def drop(self) -> None:
        from twisted.internet.error import ConnectionLost

        self.transport.loseConnection()
        self.protocol.connectionLost(Failure(ConnectionLost()))


class FakeEndpoint:
    """IStreamClientEndpoint: each connect() builds the protocol on a StringTransport at once."""

    def __init__(self) -> None:
        self.connections: list[FakeConnection] = []
        self.refuse = False

    def connect(self, factory: Any) -> Deferred[Any]:
        from twisted.internet.error import ConnectionRefusedError

        if self.refuse:
            from twisted.internet.defer import fail

            return fail(ConnectionRefusedError())
        protocol = factory.buildProtocol(None)
        self.connections.append(FakeConnection(protocol))
        return succeed(protocol)

    @property
    def last(self) -> FakeConnection:
        return self.connections[-1]
