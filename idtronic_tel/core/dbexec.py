"""The database threads: a job queue and a batched delivery of results to the reactor thread.

Twisted's `deferToThreadPool` costs, per call, a coordinator hop on each side of the job and one
`callFromThread` per result, each writing the reactor's waker pipe (bench/RESULTS.md, "What changed",
item 6). Here a job is one `SimpleQueue.put`, and the results that finish while the reactor has not yet
collected them share one `callFromThread`: only the first completion since the last delivery wakes
the reactor.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorThreads
from twisted.python.failure import Failure

# A queued job: its Deferred, the function, its arguments. None tells a thread to exit.
_Job = tuple[Deferred[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class DBExecutor:
    """Runs jobs on `threads` threads in the order they were submitted; their results reach the Deferreds
    on the reactor thread. `stop()` runs the jobs already queued, then joins the threads."""

    def __init__(self, reactor: IReactorThreads, threads: int, name: str) -> None:
        self._reactor = reactor
        self._size = threads
        self._name = name
        self._jobs: SimpleQueue[_Job | None] = SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()  # guards _done and _wake_pending
        self._done: list[tuple[Deferred[Any], bool, Any]] = []
        self._wake_pending = False

    def start(self) -> None:
        for index in range(self._size):
            # daemon: a pool that was never stopped (a test failing early) must not hang the exit.
            thread = threading.Thread(target=self._work, name=f"{self._name}-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        # The exit markers queue behind the jobs already submitted: those still run.
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join()
        self._threads = []

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
        """`fn(*args, **kwargs)` on a thread; the Deferred fires on the reactor thread."""
        d: Deferred[Any] = Deferred()
        self._jobs.put((d, fn, args, kwargs))
        return d

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            d, fn, args, kwargs = job
            try:
                outcome: tuple[Deferred[Any], bool, Any] = (d, True, fn(*args, **kwargs))
            except BaseException:
                outcome = (d, False, Failure())
            with self._lock:
                self._done.append(outcome)
                wake = not self._wake_pending
                self._wake_pending = True
            if wake:
                self._reactor.callFromThread(self._deliver)

    def _deliver(self) -> None:
        """On the reactor thread: fire every result collected since the last delivery, in that order."""
        with self._lock:
            done, self._done = self._done, []
            self._wake_pending = False
        for d, ok, value in done:
            if ok:
                d.callback(value)
            else:
                d.errback(value)
