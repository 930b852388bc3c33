"""The cost of `DBPool.run` alone: reactor ↔ database-thread hand-offs around a small transaction.

Keeps `--outstanding` calls in flight on a running reactor (as the HTTP front does under load) and prints
the process CPU per call. Each call is one transaction reading one row (`--empty`: a function that does
not touch its Session, so no statement, no connection), so the figure is the hand-off plus the Session,
without the domain work (bench/RESULTS.md, "What changed", item 6).

    .venv/bin/python bench/dbpool_bench.py [--url postgresql://...] [--threads 1] [--outstanding 64]
        [--calls 20000] [--empty]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session
from twisted.internet import reactor

from idtronic_tel.core.db import DBPool, make_engine, migrate


def read_one(session: Session) -> int:
    return int(session.execute(text("SELECT count(*) FROM alembic_version")).scalar_one())


def nothing(_: Session) -> int:
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", help="database URL (default: a fresh SQLite file)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--outstanding", type=int, default=64, help="calls in flight")
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--empty", action="store_true", help="no statement: the hand-off and the Session")
    args = parser.parse_args()
    url = args.url or f"sqlite:///{tempfile.mkdtemp(prefix='dbpool-bench-')}/db.sqlite"
    migrate(url)
    pool = DBPool(reactor, make_engine(url, pool_size=args.threads), args.threads)  # type: ignore[arg-type]
    pool.start()
    state = {"sent": 0, "done": 0}
    started: dict[str, float] = {}

    def send() -> None:
        state["sent"] += 1
        pool.run(nothing if args.empty else read_one).addCallbacks(finished, failed)

    def finished(_: Any) -> None:
        state["done"] += 1
        if state["sent"] < args.calls:
            send()
        elif state["done"] == args.calls:
            cpu, wall = time.process_time() - started["cpu"], time.monotonic() - started["wall"]
            print(
                f"{url.split(':')[0]}{' (empty)' if args.empty else ''}, {args.threads} thread(s), "
                f"{args.outstanding} in flight: "
                f"{cpu / args.calls * 1e6:.1f} µs CPU per call, {args.calls / wall:,.0f} calls/s"
            )
            reactor.stop()  # type: ignore[attr-defined]

    def failed(failure: Any) -> None:
        print(failure.getTraceback())
        os._exit(1)

    def go() -> None:
        started.update(cpu=time.process_time(), wall=time.monotonic())
        for _ in range(args.outstanding):
            send()

    reactor.callWhenRunning(go)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    pool.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
