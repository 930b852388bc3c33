"""The merchants of bench/e2e_bench.py: worker processes, each an asyncio loop with keep-alive HTTP
connections (bench/loadgen.py's client), that create payments, wait for the SMS the SMSC received and
confirm each payment with the code read there.

The node-smpp SMSC (`--record PATH`) appends one JSON line per accepted submit_sm (its text and the time
it was accepted) and one per delivery receipt the daemon acknowledged. Every worker tails that file and
keeps the lines of its own payments: a payment is recognised by its amount (unique in a run), which the
SMS text carries next to the code.

Open loop: creation i is due at start + i / rate (latency counted from when it was due, no coordinated
omission); each payment is confirmed as soon as its code is read. Closed loop: each lane does create ->
wait for the SMS -> confirm, then its next payment.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from loadgen import ProcessPool, _Connection, _payment_id, request_bytes, spread

TEXT = re.compile(r"code (\d{6}) pour payer (\d+),(\d\d) ")
TAIL_INTERVAL = 0.003  # how often the record file is read, seconds


@dataclass
class Step:
    hosts: list[tuple[str, int]]
    api_key: str
    record_path: str
    payments: list[tuple[str, int]]  # (cardholder identifier, amount): this worker's share, in order
    connections: int
    rate: float | None  # open loop: creations per second of this worker; None: closed loop
    drain: float  # seconds to wait for SMS, receipts and confirms after the last creation


@dataclass
class Pay:
    """One payment's timeline; times are time.time() (comparable with the SMSC's epoch milliseconds)."""

    amount: int
    identifier: str
    created: int = 0  # HTTP status of the create
    create_latency: float = 0.0
    t_201: float = 0.0
    payment_id: str = ""
    code: str = ""
    t_submit: float = 0.0  # acceptance at the SMSC
    t_seen: float = 0.0  # when this worker read the SMS in the record file
    submits: int = 0  # SMS the SMSC accepted for it (1 when sent once)
    smsc_id: str = ""
    receipted: bool = False
    confirmed: int = 0  # HTTP status of the confirm
    confirm_latency: float = 0.0  # code available (SMS read and 201 in) -> 200
    sms: asyncio.Future[None] | None = field(default=None, repr=False)

    def row(self) -> tuple[Any, ...]:
        return (
            self.amount,
            self.created,
            self.create_latency,
            self.t_201,
            self.t_submit,
            self.submits,
            self.receipted,
            self.confirmed,
            self.confirm_latency,
        )


@dataclass
class Outcome:
    rows: list[tuple[Any, ...]] = field(default_factory=list)  # Pay.row() per payment
    started: float = 0.0  # time.time()
    ended: float = 0.0
    cpu: float = 0.0
    errors: list[str] = field(default_factory=list)


class Tail:
    """Reads the SMSC's record file from where the previous step stopped."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""
        self.pays: dict[int, Pay] = {}
        self.by_id: dict[str, Pay] = {}

    def poll(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return
        self.offset += len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        now = time.time()
        for line in lines:
            if line.startswith(b'{"e":"s"'):
                self._submit(json.loads(line), now)
            elif line.startswith(b'{"e":"r"'):
                pay = self.by_id.get(json.loads(line)["id"])
                if pay is not None:
                    pay.receipted = True

    def _submit(self, event: dict[str, Any], now: float) -> None:
        match = TEXT.search(event["x"])
        if match is None:
            return
        pay = self.pays.get(int(match.group(2)) * 100 + int(match.group(3)))
        if pay is None:
            return  # another worker's payment, or an earlier step's
        pay.submits += 1
        if pay.submits > 1:
            return  # a duplicate: counted, the first one is the one measured
        pay.code = match.group(1)
        pay.t_submit = event["t"] / 1000
        pay.t_seen = now
        pay.smsc_id = event["id"]
        self.by_id[pay.smsc_id] = pay
        if pay.sms is not None and not pay.sms.done():
            pay.sms.set_result(None)


_tail: Tail | None = None  # one per worker process, kept between steps


async def _run(step: Step, ready: Any, out: Outcome) -> None:
    global _tail
    if _tail is None or _tail.path != step.record_path:
        _tail = Tail(step.record_path)
    tail = _tail
    loop = asyncio.get_running_loop()
    pays = [Pay(amount, identifier) for identifier, amount in step.payments]
    tail.pays = {p.amount: p for p in pays}
    tail.by_id = {}
    for pay in pays:
        pay.sms = loop.create_future()
    conns: list[_Connection] = []
    for i in range(step.connections):
        host, port = step.hosts[i % len(step.hosts)]
        conns.append((await loop.create_connection(_Connection, host, port))[1])
    ready()
    cpu0 = sum(os.times()[:2])
    out.started = time.time()
    done = asyncio.Event()

    async def tailing() -> None:
        while not done.is_set():
            tail.poll()
            await asyncio.sleep(TAIL_INTERVAL)  # polling a file: there is nothing to wait on

    tailer = loop.create_task(tailing())
    deadline: list[float] = [float("inf")]

    async def create(conn: _Connection, pay: Pay, since: float) -> bool:
        body = {
            "identifier": pay.identifier,
            "amount": pay.amount,
            "currency": "EUR",
            "reference": f"e2e-{pay.amount}",
        }
        status, answer = await conn.send(request_bytes("POST", "/v1/payments", step.api_key, body))
        pay.t_201 = time.time()
        pay.create_latency = time.perf_counter() - since
        pay.created = status
        if status != 201:
            return False
        pay.payment_id = _payment_id(answer)
        return True

    async def wait_sms(pay: Pay) -> bool:
        assert pay.sms is not None
        if not pay.sms.done():
            try:
                await asyncio.wait_for(asyncio.shield(pay.sms), max(0.0, deadline[0] - time.monotonic()))
            except TimeoutError:
                return False
        return True

    async def confirm(conn: _Connection, pay: Pay) -> None:
        start = time.perf_counter() - max(0.0, time.time() - max(pay.t_seen, pay.t_201))
        path = f"/v1/payments/{pay.payment_id}/confirm"
        status, _ = await conn.send(request_bytes("POST", path, step.api_key, {"token": pay.code}))
        pay.confirmed = status
        pay.confirm_latency = time.perf_counter() - start

    if step.rate is None:
        deadline[0] = time.monotonic() + step.drain + len(pays) * 0.05
        queue = list(reversed(pays))

        async def lane(conn: _Connection) -> None:
            while queue:
                pay = queue.pop()
                if await create(conn, pay, time.perf_counter()) and await wait_sms(pay):
                    await confirm(conn, pay)

        await asyncio.gather(*(lane(c) for c in conns))
    else:
        idle: asyncio.Queue[_Connection] = asyncio.Queue()
        for conn in conns:
            idle.put_nowait(conn)

        async def one(pay: Pay, due: float) -> None:
            conn = await idle.get()  # no free connection: the wait counts in the latency
            try:
                ok = await create(conn, pay, due)
            finally:
                idle.put_nowait(conn)
            if ok and await wait_sms(pay):
                conn = await idle.get()
                try:
                    await confirm(conn, pay)
                finally:
                    idle.put_nowait(conn)

        tasks = []
        start = time.perf_counter()
        for index, pay in enumerate(pays):
            due = start + index / step.rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)  # pacing of an open-loop load
            tasks.append(loop.create_task(one(pay, due)))
        deadline[0] = time.monotonic() + step.drain
        await asyncio.gather(*tasks)
    # Receipts come after the submit_sm_resp; wait for the last ones (bounded by the deadline).
    while any(p.submits and not p.receipted for p in pays) and time.monotonic() < deadline[0]:
        await asyncio.sleep(TAIL_INTERVAL)
    tail.poll()
    done.set()
    await tailer
    out.ended = time.time()
    out.cpu = sum(os.times()[:2]) - cpu0
    out.rows = [p.row() for p in pays]
    for conn in conns:
        if conn.transport is not None:
            conn.transport.close()


def _run_step(step: Step, ready: Callable[[], None]) -> Outcome:
    out = Outcome()
    try:
        asyncio.run(_run(step, ready, out))
    except Exception as exc:  # reported in the outcome; the parent prints it
        out.errors.append(repr(exc))
    return out


class Merchants(ProcessPool):
    """`processes` merchant processes, started once and reused for every step."""

    def __init__(self, processes: int) -> None:
        super().__init__(processes, _run_step)

    def run(
        self,
        hosts: list[tuple[str, int]],
        api_key: str,
        record_path: str,
        payments: list[tuple[str, int]],
        connections: int,
        rate: float | None,
        drain: float,
    ) -> list[Outcome]:
        """Spread payments (round robin) and connections over the workers; all start together."""
        return self.dispatch(
            [
                Step(hosts_w, api_key, record_path, share, conns, worker_rate, drain)
                for hosts_w, share, conns, worker_rate in spread(
                    payments, connections, rate, hosts, self.processes
                )
            ]
        )
