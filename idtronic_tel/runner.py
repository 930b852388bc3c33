"""`idtronic-tel run`: the daemon in the foreground, with the same service as `twistd -n idtronic`."""

from __future__ import annotations

import gc
import json
import sys
from typing import IO, Any

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogEvent,
    LogLevel,
    LogLevelFilterPredicate,
    eventAsText,
    globalLogBeginner,
    textFileLogObserver,
)
from zope.interface import implementer

from .config_schema import Config


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


def start_logging(level: LogLevel = LogLevel.info) -> None:
    """Text on a terminal, JSON lines otherwise (for the operator's log shipper)."""
    stream: Any = sys.stdout
    observer = textFileLogObserver(stream) if stream.isatty() else JsonLinesObserver(stream)
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(observer, [LogLevelFilterPredicate(defaultLogLevel=level)])],
        redirectStandardIO=False,
    )


def run(config: Config, demo: bool = False) -> int:
    from dataclasses import replace

    from twisted.internet import reactor

    from .daemon import make_service

    if demo:
        config = replace(config, demo=replace(config.demo, enabled=True))
    service = make_service(config, reactor)  # raises SchemaOutOfDate before anything listens
    start_logging()
    failed: list[BaseException] = []

    def start() -> None:
        try:
            service.startService()
        except BaseException as exc:  # a port in use: stop cleanly, say why, exit 1
            failed.append(exc)
            reactor.stop()

    # Everything imported and built so far lives as long as the process: keep it out of the cyclic
    # collector's generations, which shortens the pauses it causes under load.
    gc.collect()
    gc.freeze()
    reactor.callWhenRunning(start)
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
    if failed:
        sys.stderr.write(f"idtronic-tel: could not start: {failed[0]}\n")
        return 1
    return 0
