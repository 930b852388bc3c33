"""CPU of the payment hot paths' transactions alone: payments.create and payments.confirm run through
DBPool.run_blocking in this thread (session, statements, commit), no HTTP, no reactor. The figure is the
calling thread's CPU time (time.thread_time), so it holds on a busy machine better than a rate does; on
PostgreSQL the server's own CPU is not in it.

    .venv/bin/python bench/payment_sql_bench.py [--db sqlite|postgresql|both] [--payments 1500]

Prints, per database, the median of 3 rounds of CPU per create and per confirm (µs)."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from api_bench import Setup, prepare

from idtronic_tel.core import merchants, payments

CARDHOLDERS = 50  # the per-cardholder token limit (100 per window) bounds payments per cardholder


def _round(setup: Setup, shop: merchants.MerchantAuth, count: int, offset: int) -> tuple[float, float]:
    """CPU seconds of `count` creates, then of their confirms."""
    run, rules = setup.pool.run_blocking, setup.rules
    started = time.thread_time()
    for n in range(count):
        body = {
            "identifier": setup.cardholders[(offset + n) % len(setup.cardholders)],
            "amount": 1000 + n,
            "currency": "EUR",
            "reference": f"bench-{offset + n}",
        }
        run(payments.create, rules, shop, body, None, "digest")
    creates = time.thread_time() - started
    tokens = setup.tokens()
    assert len(tokens) == count, len(tokens)
    started = time.thread_time()
    for payment_id, token in tokens.items():
        run(payments.confirm, rules, shop, payment_id, token)
    return creates, time.thread_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--payments", type=int, default=1500, help="per round (3 rounds)")
    args = parser.parse_args()
    count = min(args.payments, CARDHOLDERS * 30)
    for backend in ["sqlite", "postgresql"] if args.db == "both" else [args.db]:
        setup = prepare(backend, CARDHOLDERS, 1)
        try:
            shop = setup.pool.run_blocking(merchants.authenticate, setup.rules, setup.api_key)
            assert shop is not None
            rounds = [_round(setup, shop, count, r * count) for r in range(3)]
            create = statistics.median(c for c, _ in rounds) / count * 1e6
            confirm = statistics.median(c for _, c in rounds) / count * 1e6
            print(f"{backend} CPU per create {create:6.0f} µs, per confirm {confirm:6.0f} µs ({count}x3)")
        finally:
            setup.close()


if __name__ == "__main__":
    main()
