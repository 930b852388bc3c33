"""`idtronic-tel smsc-sim`: the built-in SMSC simulator as a command (docs/operator.md)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from twisted.internet.interfaces import IListeningPort
from twisted.python.failure import Failure

from .smsc import MESSAGE_STATES, SmscService, makeService


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `idtronic-tel smsc-sim`."""
    parser.add_argument(
        "--listen",
        default="tcp:2775:interface=127.0.0.1",
        metavar="ENDPOINT",
        help="Twisted server endpoint string (default: %(default)s; tcp:0 picks a free port)",
    )
    parser.add_argument("--system-id", default="idtronic", help="system_id binds must give (%(default)s)")
    parser.add_argument("--password", default="", help="password binds must give (default: empty)")
    parser.add_argument(
        "--receipts",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="send a delivery receipt when the ESME asks for one (default: on)",
    )
    parser.add_argument(
        "--receipt-delay",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="before each receipt (%(default)s)",
    )
    parser.add_argument(
        "--receipt-status",
        default="DELIVRD",
        choices=sorted(MESSAGE_STATES),
        help="the stat: of every receipt (%(default)s)",
    )
    parser.add_argument(
        "--max-tps",
        type=int,
        default=0,
        metavar="N",
        help="accept N submit_sm per second, answer ESME_RTHROTTLED to the others (default: 0, no limit)",
    )
    parser.add_argument(
        "--record", default=None, metavar="FILE", help="append each message to this JSON-lines file"
    )
    parser.add_argument("--quiet", action="store_true", help="do not print each message on stdout")


def run(options: argparse.Namespace) -> int:
    """Run until interrupted: one line when listening, then one per message (unless --quiet)."""
    from twisted.internet import reactor

    from ..listener import address_url, describe
    from ..runner import start_logging

    start_logging(stream=sys.stderr)
    service = makeService(
        options.listen,
        options.system_id,
        options.password,
        options.receipt_delay,
        options.receipt_status,
        options.record,
        reactor=reactor,
        echo=None if options.quiet else sys.stdout,
        receipts=options.receipts,
        max_tps=options.max_tps,
    )
    assert isinstance(service, SmscService)

    problems: list[str] = []

    def listening(port: IListeningPort) -> None:
        where = address_url("smpp", port.getHost())
        sys.stdout.write(f"SMSC simulator listening on {where} (system_id {options.system_id})\n")
        sys.stdout.flush()

    def failed(failure: Failure) -> None:
        assert failure.value is not None
        problems.append(f"SMSC simulator cannot listen {describe(failure.value)}")
        reactor.stop()

    def started() -> None:
        service.when_listening().addCallbacks(listening, failed)
        service.startService()

    reactor.callWhenRunning(started)
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
    for problem in problems:
        sys.stderr.write(f"idtronic-tel: {problem}\n")
    return 1 if problems else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="idtronic-tel smsc-sim", description="Built-in SMSC simulator")
    add_arguments(parser)
    return run(parser.parse_args(argv))
