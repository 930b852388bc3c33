"""Several worker processes in one daemon (`[daemon] workers`, docs/operator.md).

Worker 0 is the process the operator started: it binds every listener as a single daemon does, then
starts workers 1..N-1 (`idtronic-tel ... run --worker-index i`) with the HTTP listener's socket as their
file descriptor 3, which they adopt (`adoptStreamPort`): all accept on one socket and the kernel hands
each connection to one of them. Passing the bound socket rather than binding N sockets with SO_REUSEPORT
keeps one bind, so everything a single daemon does with its port behaves the same (`tcp:0`, the "held
by pid N" message, TLS), and a worker that dies leaves no queue of accepted-but-unserved connections
behind: the others keep accepting on the same socket while it is restarted.

Worker 0 supervises: a worker that exits is started again after a delay that doubles while it keeps
dying; stopping worker 0 (SIGTERM) stops the workers first and waits for them. A worker asks the kernel
for SIGTERM when its parent dies (Linux), so that a killed worker 0 leaves no orphan serving.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys
from dataclasses import dataclass
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.endpoints import SSL4ServerEndpoint, serverFromString
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

log = Logger()

LISTENER_FD = 3  # the HTTP listener's socket, in workers 1..N-1
FIRST_DELAY, MAX_DELAY = 1.0, 30.0  # restart backoff, seconds
STABLE_AFTER = 60.0  # a worker that ran this long before dying is restarted after FIRST_DELAY again
STOP_TIMEOUT = 20.0  # SIGKILL a worker still running this long after SIGTERM
_PR_SET_PDEATHSIG = 1


def worker_count(setting: int | str, database_url: str = "") -> int:
    """`"auto"`: one per core on PostgreSQL, one on SQLite (one writer at a time: more processes only
    queue on its lock; measured in bench/RESULTS.md, "End to end"). An integer is taken as given."""
    if setting != "auto":
        return int(setting)
    return 1 if database_url.startswith("sqlite") else (os.cpu_count() or 1)


@dataclass(frozen=True)
class Role:
    """Which worker this process is, of how many."""

    index: int = 0
    count: int = 1

    @property
    def first(self) -> bool:
        """Worker 0: the listeners besides HTTP, the AMI link, callbacks and housekeeping."""
        return self.index == 0

    def share(self, binds: tuple[Any, ...]) -> tuple[Any, ...]:
        """This worker's SMPP binds: bind k goes to worker k mod count."""
        return tuple(bind for k, bind in enumerate(binds) if k % self.count == self.index)

    def name(self, configured: str) -> str:
        """A configured `[smpp] worker` name, made distinct per worker (the default, host:pid, is)."""
        return f"{configured}-w{self.index}" if configured and self.index else configured

    def describe(self) -> dict[str, int]:
        """For /healthz: which process answered."""
        return {"index": self.index, "pid": os.getpid(), "workers": self.count}


@implementer(IStreamServerEndpoint)
class InheritedEndpoint:
    """The HTTP listener of worker 0, adopted from file descriptor `fd` (TLS as `listen` says)."""

    def __init__(self, reactor: Any, fd: int, listen: str) -> None:
        self._reactor = reactor
        self._fd = fd
        self._listen = listen

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        endpoint = serverFromString(self._reactor, self._listen)  # binds nothing: only read for its TLS
        if isinstance(endpoint, SSL4ServerEndpoint):
            factory = TLSMemoryBIOFactory(endpoint._sslContextFactory, False, factory)
        port: IListeningPort = self._reactor.adoptStreamPort(self._fd, _family(self._fd), factory)
        os.close(self._fd)  # adoptStreamPort took its own copy
        return succeed(port)


def _family(fd: int) -> socket.AddressFamily:
    sock = socket.socket(fileno=os.dup(fd))
    try:
        return sock.family
    finally:
        sock.close()


def die_with_parent(parent: int) -> None:
    """SIGTERM this worker when worker 0 dies (Linux); exit now if it is already gone."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: a dead worker 0 leaves workers until they are stopped
        log.warn("this system cannot stop workers when their parent dies")
    if os.getppid() != parent:
        raise SystemExit(f"worker 0 (pid {parent}) is gone")


class _Child(ProcessProtocol):
    def __init__(self, supervisor: Supervisor, index: int) -> None:
        self.supervisor = supervisor
        self.index = index
        self.started = supervisor.now()
        self.ended: Deferred[None] = Deferred()

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(None)
        self.supervisor.ended(self, reason)


class Supervisor(Service):
    """In worker 0: starts workers 1..count-1 on the HTTP listener's socket and keeps them running."""

    def __init__(self, reactor: Any, argv: list[str], count: int, listener: Any) -> None:
        self.setName("workers")
        self._reactor = reactor
        self._argv = argv  # the command line worker 0 was started with, from its options on
        self._count = count
        self._listener = listener  # the HTTP Listener: listening once started (TCP/TLS listen at once)
        self._children: dict[int, _Child] = {}
        self._delays: dict[int, float] = {}
        self._pending: dict[int, Any] = {}

    def now(self) -> float:
        return float(self._reactor.seconds())

    def startService(self) -> None:
        super().startService()
        if self._listener.port is None:
            return  # it could not bind: the daemon is stopping
        for index in range(1, self._count):
            self._spawn(index)

    def _spawn(self, index: int) -> None:
        self._pending.pop(index, None)
        fd = self._listener.port.fileno()
        args = [sys.executable, "-m", "idtronic_tel.cli", *self._argv]
        args += ["--worker-index", str(index), "--workers", str(self._count), "--parent", str(os.getpid())]
        child = _Child(self, index)
        process = self._reactor.spawnProcess(
            child, sys.executable, args, env=dict(os.environ), childFDs={0: 0, 1: 1, 2: 2, LISTENER_FD: fd}
        )
        self._children[index] = child
        log.info("worker {index} started (pid {pid})", index=index, pid=process.pid)

    def ended(self, child: _Child, reason: Failure) -> None:
        if self._children.get(child.index) is not child:
            return
        del self._children[child.index]
        if not self.running:
            return
        ran = self.now() - child.started
        delay = FIRST_DELAY if ran >= STABLE_AFTER else self._delays.get(child.index, FIRST_DELAY / 2) * 2
        self._delays[child.index] = delay = min(delay, MAX_DELAY)
        log.error(
            "worker {index} exited ({why}); restarting it in {delay:.0f} s",
            index=child.index,
            why=reason.getErrorMessage(),
            delay=delay,
        )
        self._pending[child.index] = self._reactor.callLater(delay, self._spawn, child.index)

    def pids(self) -> dict[int, int]:
        """Worker index -> pid of the workers running now (tests)."""
        return {i: c.transport.pid for i, c in self._children.items() if c.transport is not None}

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        for call in self._pending.values():
            call.cancel()
        self._pending.clear()
        children = list(self._children.values())
        for child in children:
            _signal(child, signal.SIGTERM)
        killer = self._reactor.callLater(STOP_TIMEOUT, _signal_all, children, signal.SIGKILL)

        def stopped(result: Any) -> Any:
            if killer.active():
                killer.cancel()
            return result

        return DeferredList([c.ended for c in children]).addBoth(stopped)


def _signal_all(children: list[_Child], signum: int) -> None:
    for child in children:
        _signal(child, signum)


def _signal(child: _Child, signum: int) -> None:
    if child.transport is not None and child.transport.pid is not None:
        child.transport.signalProcess(signum)
