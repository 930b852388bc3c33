"""In-memory `CallbackQueue` (idtronic_tel/core/ports.py) for the AMI/dialer tests.

It follows the port's contract: claimed jobs move to DIALING and are returned once; `mark_originated`
records the ActionID; `apply_outcome` resolves; `unresolved` lists originated attempts without outcome.
It also records every call so tests can assert "no duplicate Originate" and "exactly one outcome".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.logger import LogEvent, LogLevel, formatEvent, globalLogPublisher

from idtronic_tel.config_schema import AmiConfig
from idtronic_tel.core.ports import CallbackJob, CallKind, CallOutcome
from idtronic_tel.ivr.ami_client import AmiClient
from idtronic_tel.simulators.asterisk_ami import AmiEmulatorFactory

_T = TypeVar("_T")


def make_job(
    attempt_id: str,
    *,
    mobile: str = "+33611223344",
    kind: CallKind = CallKind.ENROLL,
    deadline_in: float = 30.0,
    attempt_no: int = 1,
) -> CallbackJob:
    return CallbackJob(
        attempt_id=attempt_id,
        kind=kind,
        mobile=mobile,
        attempt_no=attempt_no,
        deadline=datetime.now(UTC) + timedelta(seconds=deadline_in),
    )


@dataclass
class FakeCallbackQueue:
    queued: list[CallbackJob] = field(default_factory=list)
    dialing: dict[str, str] = field(default_factory=dict)  # attempt_id -> worker
    originated: dict[str, tuple[str, str]] = field(default_factory=dict)  # attempt_id -> (worker, action_id)
    outcomes: list[tuple[str, CallOutcome, str]] = field(default_factory=list)
    claims: list[tuple[str, int, int]] = field(default_factory=list)  # (worker, limit, returned)
    jobs: dict[str, CallbackJob] = field(default_factory=dict)
    _callbacks: list[Callable[[], None]] = field(default_factory=list)
    _outcome_waiters: list[tuple[int, Deferred[None]]] = field(default_factory=list)

    # -- test helpers ------------------------------------------------------------------------------------

    def add(self, *jobs: CallbackJob, notify: bool = True) -> None:
        for job in jobs:
            self.jobs[job.attempt_id] = job
            self.queued.append(job)
        if notify:
            for cb in list(self._callbacks):
                cb()

    def preload_originated(self, job: CallbackJob, worker: str) -> None:
        """An attempt a previous run of `worker` originated and never resolved."""
        self.jobs[job.attempt_id] = job
        self.originated[job.attempt_id] = (worker, f"cb-{job.attempt_id}")

    def outcome_of(self, attempt_id: str) -> list[CallOutcome]:
        return [o for a, o, _ in self.outcomes if a == attempt_id]

    def when_outcomes(self, count: int) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if len(self.outcomes) >= count:
            d.callback(None)
        else:
            self._outcome_waiters.append((count, d))
        return d

    # -- CallbackQueue -----------------------------------------------------------------------------------

    def claim_due(self, worker: str, limit: int) -> Deferred[list[CallbackJob]]:
        taken, self.queued = self.queued[:limit], self.queued[limit:]
        for job in taken:
            assert job.attempt_id not in self.dialing, "claimed twice"
            self.dialing[job.attempt_id] = worker
        self.claims.append((worker, limit, len(taken)))
        return succeed(taken)

    def mark_originated(self, attempt_id: str, action_id: str) -> Deferred[None]:
        assert attempt_id in self.dialing, f"{attempt_id} originated without a claim"
        assert attempt_id not in self.originated, f"{attempt_id} originated twice"
        self.originated[attempt_id] = (self.dialing[attempt_id], action_id)
        return succeed(None)

    def apply_outcome(self, attempt_id: str, outcome: CallOutcome, detail: str) -> Deferred[None]:
        self.outcomes.append((attempt_id, outcome, detail))
        self.dialing.pop(attempt_id, None)
        ready = [w for w in self._outcome_waiters if len(self.outcomes) >= w[0]]
        self._outcome_waiters = [w for w in self._outcome_waiters if w not in ready]
        for _, d in ready:
            d.callback(None)
        return succeed(None)

    def unresolved(self, worker: str) -> Deferred[list[CallbackJob]]:
        done = {a for a, _, _ in self.outcomes}
        return succeed(
            [self.jobs[a] for a, (w, _) in self.originated.items() if w == worker and a not in done]
        )

    def on_new_work(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)


# -- real-socket harness: the emulator on 127.0.0.1:0 and an AmiClient pointed at it ------------------------


@dataclass
class Harness:
    """An emulator listening on loopback plus clients; `close()` tears everything down."""

    factory: AmiEmulatorFactory
    port: IListeningPort
    clients: list[AmiClient] = field(default_factory=list)
    services: list[Service] = field(default_factory=list)
    errors: list[LogEvent] = field(default_factory=list)  # error/critical log events while running

    @classmethod
    def start(cls, **emulator_options: Any) -> Harness:
        from twisted.internet import reactor

        emulator_options.setdefault("auth_failure_delay", 0.0)
        factory = AmiEmulatorFactory(
            username="tester", secret="testsecret", reactor=reactor, **emulator_options
        )
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        harness = cls(factory, port)
        globalLogPublisher.addObserver(harness._observe)
        return harness

    def _observe(self, event: LogEvent) -> None:
        level = event.get("log_level")
        if "log_failure" in event or level in (LogLevel.error, LogLevel.critical):
            self.errors.append(event)

    def config(self, **overrides: Any) -> AmiConfig:
        base: dict[str, Any] = dict(
            endpoint=f"tcp:127.0.0.1:{self.port.getHost().port}",  # type: ignore[attr-defined]
            username="tester",
            secret="testsecret",
            auth="md5",
            callback_channel="Local/{national}@callee",
            callback_context="idtronic-callback",
            originate_timeout=30.0,
            action_timeout=5.0,
            ping_interval=20.0,
        )
        base.update(overrides)
        return AmiConfig(**base)

    def client(
        self,
        config: AmiConfig | None = None,
        *,
        clock: Any = None,
        retry_policy: Callable[[int], float] | None = None,
        start: bool = True,
    ) -> AmiClient:
        from twisted.internet import reactor

        cfg = config or self.config()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port.getHost().port)  # type: ignore[attr-defined]
        client = AmiClient(
            endpoint,
            cfg,
            clock=clock,
            retry_policy=retry_policy if retry_policy is not None else (lambda n: 0.05),
        )
        self.clients.append(client)
        if start:
            client.startService()
        return client

    def run(self, service: Service) -> Service:
        self.services.append(service)
        service.startService()
        return service

    async def close(self) -> None:
        for svc in reversed(self.services):
            if svc.running:
                await maybeDeferred(svc.stopService)
        for client in self.clients:
            if client.running:
                await client.stopService()
        self.factory.kill()
        await self.port.stopListening()  # type: ignore[misc]
        globalLogPublisher.removeObserver(self._observe)
        # Nothing may have logged an error or an unhandled failure (e.g. NoTransition in ClientService).
        assert not self.errors, [formatEvent(e) for e in self.errors]


def within(d: Deferred[_T], seconds: float = 10.0) -> Deferred[_T]:
    """Wait on a Deferred, but never forever (no sleeps in tests: wait on events with a bound)."""
    from twisted.internet import reactor

    return d.addTimeout(seconds, reactor)  # type: ignore[arg-type]


async def turn(n: int = 1) -> None:
    """Let the reactor run `n` iterations (for "nothing else happened" assertions)."""
    from twisted.internet import reactor

    for _ in range(n):
        d: Deferred[None] = Deferred()
        reactor.callLater(0, d.callback, None)  # type: ignore[attr-defined]
        await d
