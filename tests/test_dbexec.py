"""The database executor (core/dbexec.py): order, errors, one reactor wake-up per batch of results,
stop with jobs queued, and many threads completing while the reactor delivers.

A fake reactor records `callFromThread` in a queue; the test thread plays the reactor by running what it
recorded, so every step is deterministic (events, no sleeps)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from idtronic_tel.core.dbexec import DBExecutor

WAIT = 10.0  # seconds; only reached when a wake-up is lost, which fails the test


class FakeReactor:
    def __init__(self) -> None:
        self.calls: SimpleQueue[Callable[[], object]] = SimpleQueue()

    def callFromThread(self, fn: Callable[..., object], *args: Any) -> None:
        self.calls.put(lambda: fn(*args))

    def run_one(self) -> None:
        self.calls.get(timeout=WAIT)()


def collect(d: Deferred[Any], into: list[Any]) -> None:
    d.addBoth(into.append)


def test_jobs_run_and_fire_in_order_with_one_wake_up_per_batch() -> None:
    reactor = FakeReactor()
    executor = DBExecutor(reactor, 1, "test-db")  # type: ignore[arg-type]
    ran: list[int] = []
    results: list[Any] = []
    for index in range(20):
        collect(executor.submit(lambda i: ran.append(i) or i * 10, index), results)
    executor.start()
    executor.stop()  # the jobs queued before stop still run
    assert ran == list(range(20))
    assert results == []  # nothing fires off the reactor thread
    assert reactor.calls.qsize() == 1  # the first completion woke the reactor, the others joined it
    reactor.run_one()
    assert results == [i * 10 for i in range(20)]


def test_an_error_fails_its_own_deferred_only() -> None:
    reactor = FakeReactor()
    executor = DBExecutor(reactor, 1, "test-db")  # type: ignore[arg-type]

    def fail(message: str) -> None:
        raise ValueError(message)

    results: list[Any] = []
    collect(executor.submit(lambda: "before"), results)
    collect(executor.submit(fail, "refused"), results)
    collect(executor.submit(lambda x, *, y: x + y, 1, y=2), results)
    executor.start()
    executor.stop()
    reactor.run_one()
    before, failure, after = results
    assert before == "before" and after == 3
    assert isinstance(failure, Failure) and failure.check(ValueError)
    assert str(failure.value) == "refused"


def test_a_completion_after_a_delivery_wakes_the_reactor_again() -> None:
    reactor = FakeReactor()
    executor = DBExecutor(reactor, 1, "test-db")  # type: ignore[arg-type]
    executor.start()
    try:
        results: list[Any] = []
        collect(executor.submit(lambda: 1), results)
        reactor.run_one()
        assert results == [1]
        collect(executor.submit(lambda: 2), results)
        reactor.run_one()  # a new wake-up: the flag was cleared by the delivery
        assert results == [1, 2]
    finally:
        executor.stop()
    assert reactor.calls.empty()


def test_stop_runs_the_jobs_queued_behind_a_busy_thread() -> None:
    reactor = FakeReactor()
    executor = DBExecutor(reactor, 1, "test-db")  # type: ignore[arg-type]
    executor.start()
    gate = threading.Event()
    ran: list[int] = []
    results: list[Any] = []
    collect(executor.submit(lambda: gate.wait(WAIT) and ran.append(0)), results)
    for index in range(1, 6):
        collect(executor.submit(ran.append, index), results)
    stopper = threading.Thread(target=executor.stop)
    stopper.start()  # stop() waits: the first job holds the only thread
    gate.set()
    stopper.join(WAIT)
    assert not stopper.is_alive()
    assert ran == [0, 1, 2, 3, 4, 5]
    reactor.run_one()
    assert len(results) == 6
    assert reactor.calls.empty()


@pytest.mark.parametrize("threads", [2, 8])
def test_many_threads_deliver_every_result_exactly_once(threads: int) -> None:
    reactor = FakeReactor()
    executor = DBExecutor(reactor, threads, "test-db")  # type: ignore[arg-type]
    executor.start()
    jobs = 3000
    fired: list[int] = []
    try:
        for index in range(jobs):
            executor.submit(lambda i: i, index).addCallback(fired.append)
        wake_ups = 0
        while len(fired) < jobs:  # the reactor delivers while the threads are still completing
            reactor.run_one()
            wake_ups += 1
    finally:
        executor.stop()
    assert sorted(fired) == list(range(jobs))
    assert wake_ups <= jobs
    assert reactor.calls.empty()  # no wake-up left over once everything was delivered
