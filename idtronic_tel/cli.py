"""`idtronic-tel`: the operator's command line (docs/operator.md).

Administrative commands go through the core's facade, on the database here and now (the daemon need not
run); `status` also asks the running daemon for its links. Exit status: 0 success, 2 usage or
configuration error, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from . import __version__, endpoints
from .config import ConfigError, load_config, prepare_data_dir, resolve_config_path, resolve_data_dir
from .config_schema import Config

if TYPE_CHECKING:
    from .core.facade import Core

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
T = TypeVar("T")


class Usage(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _overlap(value: str) -> int:
    """`rotate-key --overlap`: seconds, 0 to 7 days (a usage error otherwise, exit status 2)."""
    from .core.merchants import MAX_OVERLAP_SECONDS  # the core loads only for commands that use it

    seconds = int(value) if value.isdigit() else -1
    if not 0 <= seconds <= MAX_OVERLAP_SECONDS:
        raise argparse.ArgumentTypeError(f"seconds from 0 to {MAX_OVERLAP_SECONDS} (7 days), not {value!r}")
    return seconds


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="idtronic-tel", description="id-tronic telephony daemon and its administration")
    parser.add_argument("--version", action="version", version=f"idtronic-tel {__version__}")
    parser.add_argument("--config", type=Path, help="configuration file (default: $IDTRONIC_CONFIG, or none)")
    parser.add_argument(
        "--data-dir", type=Path, help="data directory (default: $IDTRONIC_DATA_DIR or ./idtronic-data)"
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = commands.add_parser("run", help="run the daemon in the foreground")
    run.add_argument(
        "--demo", action="store_true", help="start the built-in SMSC and Asterisk simulators too"
    )
    # Set by worker 0 when it starts the other workers ([daemon] workers, supervisor.py); not for operators.
    run.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    run.add_argument("--workers", type=int, help=argparse.SUPPRESS)
    run.add_argument("--parent", type=int, help=argparse.SUPPRESS)
    commands.add_parser("migrate", help="bring the database schema up to date")

    merchant = commands.add_parser("merchant", help="manage merchants")
    verbs = merchant.add_subparsers(dest="verb", required=True, parser_class=_Parser)
    add = verbs.add_parser("add", help="register a merchant; prints its id and API key (shown once)")
    add.add_argument("name")
    add.add_argument("--domain")
    verbs.add_parser("list", help="list merchants")
    rotate = verbs.add_parser("rotate-key", help="replace a merchant's API key; prints the new one")
    rotate.add_argument("id")
    rotate.add_argument(
        "--overlap",
        type=_overlap,
        default=0,
        metavar="SECONDS",
        help="the replaced key keeps working this long (at most 604800, 7 days); default 0: it stops now",
    )
    verbs.add_parser("remove", help="remove a merchant").add_argument("id")

    enroll = commands.add_parser("enroll", help="enroll a cardholder who applied by phone or fax")
    enroll.add_argument("--channel", required=True, choices=("phone", "fax"))
    for name in ("last-name", "first-name", "birth-date", "mobile", "card-first8"):
        enroll.add_argument(f"--{name}", required=True)

    lock = commands.add_parser("lock", help="lock a cardholder until unlocked")
    lock.add_argument("identifier")
    lock.add_argument("--reason", default="")
    commands.add_parser("unlock", help="end any lock of a cardholder").add_argument("identifier")

    suspend = commands.add_parser("suspend", help="suspend the service (or one cardholder or merchant)")
    suspend.add_argument(
        "--notice", required=True, help="the public notice shown to merchants and cardholders"
    )
    scope = suspend.add_mutually_exclusive_group()
    scope.add_argument("--cardholder", help="suspend this identification number only")
    scope.add_argument("--merchant", help="suspend this merchant only")
    resume = commands.add_parser("resume", help="resume the service (or one cardholder or merchant)")
    scope = resume.add_mutually_exclusive_group()
    scope.add_argument("--cardholder")
    scope.add_argument("--merchant")

    rekey = commands.add_parser("rekey", help="re-encrypt stored data under the current keys (key rotation)")
    rekey.add_argument("--check", action="store_true", help="only count what still needs a previous key")
    commands.add_parser("status", help="links, queues and counts")
    backup = commands.add_parser("backup", help="copy the SQLite database, daemon running or not")
    backup.add_argument("destination", type=Path, help="a new file")
    from .simulators import smsc_command

    sim = commands.add_parser("smsc-sim", help="run the built-in SMSC simulator (dry runs, demos)")
    smsc_command.add_arguments(sim)
    return parser


def _config(args: argparse.Namespace, environ: dict[str, str]) -> Config:
    data_dir = resolve_data_dir(args.data_dir, environ)
    path = resolve_config_path(args.config, environ)
    prepare_data_dir(data_dir, path, environ)
    return load_config(path, data_dir, environ)


def _core(config: Config) -> Core:
    """The core's facade, its database work done here and now (no reactor runs)."""
    from twisted.internet import reactor

    from .core.db import InlinePool, check_schema, make_engine
    from .core.facade import Core
    from .daemon import core_rules

    engine = make_engine(config.database.url, pool_size=1)
    check_schema(engine)
    return Core(reactor, InlinePool(reactor, engine, 1), core_rules(config))  # type: ignore[arg-type]


def _done(d: Deferred[T]) -> T:
    """The result of a Deferred that has fired (on an InlinePool, the facade's have), or its exception."""
    results: list[T | Failure] = []
    d.addBoth(results.append)
    [result] = results
    if isinstance(result, Failure):
        result.raiseException()
    return result


def _backup(url: str, destination: Path) -> dict[str, Any]:
    """SQLite's online backup: a consistent copy while the daemon writes (pages are copied in steps, so
    a writer waits at most one step). PostgreSQL is pg_dump's job (docs/operations.md)."""
    import sqlite3

    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        raise Usage("backup copies an SQLite database file; for PostgreSQL use pg_dump (docs/operations.md)")
    try:
        destination.touch(mode=0o600, exist_ok=False)  # private from the start: it holds the card data
    except FileExistsError:
        raise Usage(f"{destination} exists: name a new file") from None
    source, target = sqlite3.connect(parsed.database), sqlite3.connect(destination)
    try:
        source.backup(target, pages=1024)
    finally:
        source.close()
        target.close()
    return {"backup": str(destination), "bytes": destination.stat().st_size}


def _rekey(core: Core, check: bool) -> dict[str, Any]:
    """Column by column, batch by batch, each batch its own short transaction (core/rekey.py)."""
    from .core.rekey import COLUMNS

    columns: dict[str, dict[str, int]] = {}
    for column in COLUMNS:
        batches = []
        after: int | None = 0
        while after is not None:
            batches.append(_done(core.rekey_batch(column, after, check)))
            after = batches[-1].after
        counts = (
            {"previous_key": sum(b.stale for b in batches)}
            if check
            else {"rewritten": sum(b.written for b in batches)}
        )
        columns[column] = {**counts, "unreadable": sum(b.unreadable for b in batches)}
    merchants = _done(core.merchants_not_rehashed())
    remaining = sum(c.get("previous_key", 0) + c["unreadable"] for c in columns.values()) + len(merchants)
    return {"check": check, "columns": columns, "merchants_not_rehashed": merchants, "remaining": remaining}


def _print(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n")


def _status(config: Config, core: Core) -> dict[str, Any]:
    counts = _done(core.counts())
    suspended, notice = _done(core.suspension_state())
    return {"suspended": suspended, "notice": notice, "links": _daemon_links(config), **counts}


def _daemon_links(config: Config) -> Any:
    """Ask the running daemon (its /healthz) for the state of its links."""
    listen = endpoints.server(config.http.listen)
    if listen.kind not in ("tcp", "tcp6") or listen.port is None:
        return "unknown: the daemon listens on a non-TCP endpoint"
    host = "127.0.0.1" if listen.host in ("0.0.0.0", "::", "") else listen.host
    host = f"[{host}]" if ":" in host else host
    try:
        with urllib.request.urlopen(f"http://{host}:{listen.port}/healthz", timeout=3) as answer:
            return json.load(answer)["links"]
    except Exception as exc:
        return f"unknown: daemon not reachable ({type(exc).__name__})"


def main(argv: Sequence[str] | None = None, environ: dict[str, str] | None = None) -> int:
    environ = dict(os.environ if environ is None else environ)
    args = _parser().parse_args(argv)
    if args.command == "smsc-sim":
        from .simulators import smsc_command

        return smsc_command.run(args)
    try:
        config = _config(args, environ)
        return _dispatch(args, config, list(sys.argv[1:] if argv is None else argv))
    except ConfigError as exc:
        sys.stderr.write(f"idtronic-tel: configuration error: {exc}\n")
        return EXIT_USAGE
    except Usage as exc:
        sys.stderr.write(f"idtronic-tel: {exc}\n")
        return EXIT_USAGE
    except Exception as exc:
        from .core.db import SchemaOutOfDate
        from .core.errors import DomainError

        if isinstance(exc, DomainError):
            sys.stderr.write(f"idtronic-tel: {exc.message} {json.dumps(exc.extra) if exc.extra else ''}\n")
        elif isinstance(exc, SchemaOutOfDate):
            sys.stderr.write(f"idtronic-tel: {exc}\n")
        else:
            sys.stderr.write(f"idtronic-tel: {type(exc).__name__}: {exc}\n")
        return EXIT_FAILURE


def _dispatch(args: argparse.Namespace, config: Config, argv: list[str]) -> int:
    from .core.views import wire

    if args.command == "migrate":
        from .core.db import migrate

        revision = migrate(config.database.url)
        sys.stdout.write(f"database schema at revision {revision}\n")
        return EXIT_OK
    if args.command == "run":
        from .runner import run

        worker = None
        if args.worker_index is not None:
            worker = (args.worker_index, args.workers, args.parent)
        return run(config, demo=args.demo, argv=argv, worker=worker)
    if args.command == "backup":
        _print(_backup(config.database.url, args.destination))
        return EXIT_OK
    core = _core(config)
    if args.command == "merchant":
        if args.verb == "add":
            _print(wire(_done(core.add_merchant(args.name, args.domain))))
        elif args.verb == "list":
            _print(wire(_done(core.list_merchants()))["merchants"])
        elif args.verb == "rotate-key":
            _print(wire(_done(core.rotate_merchant_key(args.id, args.overlap))))
        else:
            _done(core.remove_merchant(args.id))
            _print({"removed": args.id})
    elif args.command == "enroll":
        fields = {
            "last_name": args.last_name,
            "first_name": args.first_name,
            "birth_date": args.birth_date,
            "mobile": args.mobile,
            "card_first8": args.card_first8,
        }
        _print(wire(_done(core.enroll(fields, args.channel, "operator"))))
    elif args.command in ("lock", "unlock"):
        locked = args.command == "lock"
        _print(wire(_done(core.lock(args.identifier, locked, getattr(args, "reason", "")))))
    elif args.command == "suspend":
        _done(core.suspend(args.notice, args.cardholder, args.merchant))
        _print({"suspended": True, "notice": args.notice})
    elif args.command == "resume":
        _done(core.resume(args.cardholder, args.merchant))
        _print({"suspended": False})
    elif args.command == "status":
        _print(_status(config, core))
    elif args.command == "rekey":
        report = _rekey(core, args.check)
        _print(report)
        if args.check and report["remaining"]:
            sys.stderr.write(
                f"idtronic-tel: {report['remaining']} values still need a previous key (or no configured "
                "key opens them): keep the previous keys (docs/operations.md, Key rotation)\n"
            )
            return EXIT_FAILURE
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
