"""`idtronic-tel run`: the daemon in the foreground, with the same service as `twistd -n idtronic`."""

from __future__ import annotations

import gc
import json
import os
import re
import sys
from typing import IO, TYPE_CHECKING, Any

from twisted.logger import (
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    LogEvent,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    PredicateResult,
    eventAsText,
    globalLogBeginner,
    textFileLogObserver,
)
from zope.interface import implementer

from .config_schema import Config
from .supervisor import Role, Supervisor, die_with_parent, worker_count

log = Logger()

if TYPE_CHECKING:
    from .daemon import DaemonService
    from .demo import DemoService


@implementer(ILogObserver)
class JsonLinesObserver:
    """One compact JSON object per event: time, level, namespace and the formatted text (with the
    traceback of a failure). Twisted's own JSON observer drops exception messages, which operators need."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    def __call__(self, event: LogEvent) -> None:
        level = event.get("log_level")
        record = {
            "time": event.get("log_time"),
            "level": level.name if level is not None else "info",
            "namespace": event.get("log_namespace", ""),
            "text": eventAsText(event, includeTimestamp=False, includeSystem=False),
        }
        self._stream.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._stream.flush()


# Twisted's own lines for each factory and port ("Starting factory <...Factory object at 0x7f...>",
# "Site starting on 8080", "(TCP Port 8080 Closed)"): the daemon says what listens where itself.
_TWISTED_CHATTER = frozenset({"Starting factory {factory!r}", "Stopping factory {factory!r}"})
_PORT_CHATTER = re.compile(r"\w+ starting on \d+|\(\w+ Port \d+ Closed\)")


@implementer(ILogFilterPredicate)
class TwistedChatterAsDebug:
    """Treats Twisted's per-factory and per-port lines as debug: shown only when debug is."""

    def __init__(self, level: LogLevel) -> None:
        self._shown = level <= LogLevel.debug

    def __call__(self, event: LogEvent) -> PredicateResult:
        if self._shown:
            return PredicateResult.maybe
        if event.get("log_format") in _TWISTED_CHATTER:
            return PredicateResult.no
        message = event.get("message") if event.get("log_namespace") == "log_legacy" else None
        if message and _PORT_CHATTER.fullmatch(str(message[0])):
            return PredicateResult.no
        return PredicateResult.maybe


def start_logging(level: LogLevel = LogLevel.info, stream: IO[str] | None = None) -> None:
    """Text on a terminal, JSON lines otherwise (for the operator's log shipper); stdout by default."""
    stream = stream or sys.stdout
    observer = textFileLogObserver(stream) if stream.isatty() else JsonLinesObserver(stream)
    predicates = [TwistedChatterAsDebug(level), LogLevelFilterPredicate(defaultLogLevel=level)]
    globalLogBeginner.beginLoggingTo([FilteringLogObserver(observer, predicates)], redirectStandardIO=False)


def make_service(config: Config, reactor: Any = None, role: Role = Role()) -> DaemonService | DemoService:
    """The daemon's service; with `[demo] enabled`, wrapped with its simulated peers (the production
    assembly, daemon.py, imports no simulator)."""
    if config.demo.enabled:
        from .demo import make_service as make_demo_service

        return make_demo_service(config, reactor)
    from .daemon import make_service as make_daemon_service

    return make_daemon_service(config, reactor, role=role)


def run(
    config: Config,
    demo: bool = False,
    argv: list[str] | None = None,
    worker: tuple[int, int, int] | None = None,
) -> int:
    """`argv`: the command line (from its options on), for worker 0 to start the other workers with;
    `worker`: (index, count, parent pid) in a worker that worker 0 started."""
    from dataclasses import replace

    from twisted.internet import reactor

    if demo:
        config = replace(config, demo=replace(config.demo, enabled=True))
    if worker is not None:
        die_with_parent(worker[2])
        role = Role(worker[0], worker[1])
    else:  # the demo's simulated peers live in its one process
        role = Role(0, 1 if config.demo.enabled else worker_count(config.daemon.workers, config.database.url))
    service = make_service(config, reactor, role)  # raises SchemaOutOfDate before anything listens
    if role.first and role.count > 1:
        http = service.daemon.listeners["http"]
        Supervisor(reactor, argv or [], role.count, http).setServiceParent(service)  # started last
    start_logging()
    if role.count > 1:  # the workers share stdout: say which process is which
        log.info("worker {index} of {count}: pid {pid}", index=role.index, count=role.count, pid=os.getpid())
    failed: list[BaseException] = []

    def start() -> None:
        try:
            service.startService()
        except BaseException as exc:  # stop cleanly, say why, exit 1
            failed.append(exc)
            reactor.stop()

    # Everything imported and built so far lives as long as the process: keep it out of the cyclic
    # collector's generations, which shortens the pauses it causes under load.
    gc.collect()
    gc.freeze()
    reactor.callWhenRunning(start)
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
    if service.daemon.failure is not None:  # a listener that cannot bind: already logged
        sys.stderr.write(f"idtronic-tel: {service.daemon.failure}\n")
        return 1
    if failed:
        sys.stderr.write(f"idtronic-tel: could not start: {failed[0]}\n")
        return 1
    return 0
