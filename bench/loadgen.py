"""The load generator of bench/api_bench.py: worker processes, each with its own asyncio event loop and
a minimal HTTP/1.1 keep-alive client (Content-Length and chunked bodies; nothing else is needed here).

The parent sends a phase to every worker over a pipe; each worker opens its connections, answers "ready",
waits for "go", runs the phase and sends back one record per request: (status, latency in seconds,
payment id or ""). Closed loop: each connection sends its next request when the previous answer is in.
Open loop: request i is due at start + i / rate; latency is measured from when it was due (queueing in the
generator counts, no coordinated omission). Every worker reports its CPU time so that the report can show
the generator is not the bottleneck.
"""

from __future__ import annotations

import asyncio
import functools
import json
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

Record = tuple[int, float, str]  # status, latency (s), payment id (creations) or ""


@dataclass
class Phase:
    hosts: list[tuple[str, int]]  # connection i goes to hosts[i % len(hosts)]
    requests: list[bytes]  # complete HTTP/1.1 requests, this worker's share, in order
    connections: int
    rate: float | None = None  # None: closed loop; otherwise requests per second (this worker's share)
    want_ids: bool = False  # parse the payment id out of each answer


@dataclass
class Outcome:
    records: list[Record] = field(default_factory=list)
    started: float = 0.0  # time.monotonic(): system-wide on Linux, comparable between processes
    ended: float = 0.0
    cpu: float = 0.0  # user + system seconds spent by this worker during the phase
    errors: list[str] = field(default_factory=list)


def request_bytes(method: str, path: str, key: str, body: Any = None) -> bytes:
    payload = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionError(f"connection lost: {exc}"))

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._waiter is None or self._waiter.done():
            return
        parsed = _parse(self._buffer)
        if parsed is not None:
            status, body, used = parsed
            del self._buffer[:used]
            self._waiter.set_result((status, body))

    def send(self, data: bytes) -> asyncio.Future[tuple[int, bytes]]:
        assert self.transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self._waiter


def _parse(buffer: bytearray) -> tuple[int, bytes, int] | None:
    """(status, body, bytes used) for one complete response at the start of buffer, else None."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buffer[:end]).lower()
    status = int(head[9:12])
    start = end + 4
    marker = head.find(b"\ncontent-length:")
    if marker >= 0:
        line_end = head.find(b"\r", marker + 1)
        length = int(head[marker + 16 : line_end if line_end > 0 else None])
        if len(buffer) < start + length:
            return None
        return status, bytes(buffer[start : start + length]), start + length
    if b"\ntransfer-encoding: chunked" not in head:
        return status, b"", start  # no body (204)
    body = bytearray()
    pos = start
    while True:
        line_end = buffer.find(b"\r\n", pos)
        if line_end < 0:
            return None
        size = int(bytes(buffer[pos:line_end]).split(b";")[0], 16)
        chunk_start = line_end + 2
        if len(buffer) < chunk_start + size + 2:
            return None
        if size == 0:
            return status, bytes(body), chunk_start + 2
        body += buffer[chunk_start : chunk_start + size]
        pos = chunk_start + size + 2


def _payment_id(body: bytes) -> str:
    marker = body.find(b'"id": "')
    if marker >= 0:
        return body[marker + 7 : body.index(b'"', marker + 7)].decode()
    try:
        return str(json.loads(body).get("id", ""))
    except ValueError:
        return ""


async def _open(phase: Phase) -> list[_Connection]:
    loop = asyncio.get_running_loop()
    conns = []
    for i in range(phase.connections):
        host, port = phase.hosts[i % len(phase.hosts)]
        _, conn = await loop.create_connection(_Connection, host, port)
        conns.append(conn)
    return conns


async def _closed_loop(phase: Phase, conns: list[_Connection], out: Outcome) -> None:
    records: list[Record | None] = [None] * len(phase.requests)
    next_index = 0
    clock = time.perf_counter

    async def lane(conn: _Connection) -> None:
        nonlocal next_index
        while next_index < len(phase.requests):
            index = next_index
            next_index += 1
            sent = clock()
            status, body = await conn.send(phase.requests[index])
            elapsed = clock() - sent
            records[index] = (status, elapsed, _payment_id(body) if phase.want_ids and status == 201 else "")

    await asyncio.gather(*(lane(conn) for conn in conns))
    out.records = [r for r in records if r is not None]


async def _open_loop(phase: Phase, conns: list[_Connection], out: Outcome) -> None:
    assert phase.rate is not None
    loop = asyncio.get_running_loop()
    idle: asyncio.Queue[_Connection] = asyncio.Queue()
    for conn in conns:
        idle.put_nowait(conn)
    records: list[Record | None] = [None] * len(phase.requests)
    start = time.perf_counter()
    interval = 1.0 / phase.rate

    async def one(index: int, due: float) -> None:
        conn = await idle.get()  # no free connection: the wait counts in the latency
        try:
            status, body = await conn.send(phase.requests[index])
        finally:
            idle.put_nowait(conn)
        elapsed = time.perf_counter() - due
        records[index] = (status, elapsed, _payment_id(body) if phase.want_ids and status == 201 else "")

    tasks = []
    for index in range(len(phase.requests)):
        due = start + index * interval
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)  # pacing of an open-loop load, not a synchronisation
        tasks.append(loop.create_task(one(index, due)))
    await asyncio.gather(*tasks)
    out.records = [r for r in records if r is not None]


def _run_phase(phase: Phase, ready: Any) -> Outcome:
    out = Outcome()

    async def main() -> None:
        conns = await _open(phase)
        ready()  # tell the parent, then block until "go"
        cpu0 = sum(os.times()[:2])
        out.started = time.monotonic()
        try:
            if phase.rate is None:
                await _closed_loop(phase, conns, out)
            else:
                await _open_loop(phase, conns, out)
        finally:
            out.ended = time.monotonic()
            out.cpu = sum(os.times()[:2]) - cpu0
            for conn in conns:
                if conn.transport is not None:
                    conn.transport.close()

    try:
        asyncio.run(main())
    except Exception as exc:  # reported in the outcome; the parent prints it
        out.errors.append(repr(exc))
    return out


def _serve(run: Callable[[Any, Callable[[], None]], Any], pipe: Any) -> None:
    """A worker process: for each task, run(task, ready) and send its result; None ends it."""
    import gc

    gc.freeze()
    while True:
        task = pipe.recv()
        if task is None:
            return

        def ready() -> None:
            pipe.send("ready")
            if pipe.recv() != "go":
                raise RuntimeError("expected go")

        pipe.send(run(task, ready))


class ProcessPool:
    """`processes` worker processes running `run` (a module-level function, for spawn), started once and
    reused: dispatch sends one task to each of the first workers, waits until all are ready, then starts
    them together."""

    def __init__(self, processes: int, run: Callable[[Any, Callable[[], None]], Any]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._pipes = []
        self._procs = []
        for _ in range(processes):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=functools.partial(_serve, run), args=(child,), daemon=True)
            proc.start()
            self._pipes.append(parent)
            self._procs.append(proc)

    @property
    def processes(self) -> int:
        return len(self._procs)

    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p.pid is not None]

    def dispatch(self, tasks: Sequence[Any]) -> list[Any]:
        pipes = self._pipes[: len(tasks)]
        for pipe, task in zip(pipes, tasks, strict=True):
            pipe.send(task)
        for pipe in pipes:
            answer = pipe.recv()
            if answer != "ready":
                raise RuntimeError(f"worker did not get ready: {answer}")
        for pipe in pipes:
            pipe.send("go")
        return [pipe.recv() for pipe in pipes]

    def close(self) -> None:
        for pipe in self._pipes:
            pipe.send(None)
        for proc in self._procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()


def spread(
    items: Sequence[Any], connections: int, rate: float | None, hosts: list[tuple[str, int]], processes: int
) -> list[tuple[list[tuple[str, int]], list[Any], int, float | None]]:
    """Items (round robin), connections and rate shared over the workers: per worker its hosts, items,
    connections and rate. The hosts are rotated so that two workers with one connection each use different
    daemons."""
    workers = min(processes, connections)
    shares = []
    for w in range(workers):
        share = list(items[w::workers])
        conns = connections // workers + (1 if w < connections % workers else 0)
        worker_rate = None if rate is None else rate * len(share) / len(items)
        shares.append((hosts[w % len(hosts) :] + hosts[: w % len(hosts)], share, conns, worker_rate))
    return shares


class LoadGenerator(ProcessPool):
    """`processes` worker processes, started once and reused for every phase."""

    def __init__(self, processes: int) -> None:
        super().__init__(processes, _run_phase)

    def run(
        self,
        hosts: list[tuple[str, int]],
        requests: Sequence[bytes],
        concurrency: int,
        rate: float | None = None,
        want_ids: bool = False,
    ) -> list[Outcome]:
        """Spread requests (round robin) and connections over the workers; all start together."""
        return self.dispatch(
            [
                Phase(hosts_w, share, conns, worker_rate, want_ids)
                for hosts_w, share, conns, worker_rate in spread(
                    requests, concurrency, rate, hosts, self.processes
                )
            ]
        )
