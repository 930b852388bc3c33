"""End-to-end benchmark: payments created over HTTP, their SMS submitted over SMPP to the node-smpp SMSC,
delivery receipts back, payments confirmed with the codes the SMSC received.

    .venv/bin/python bench/e2e_bench.py --config sqlite|postgresql|two-daemons [--binds 1] [--bind-tps 10000]
        [--workers 1]
        [--window 100] [--smsc-delay-ms 0] [--rates 100,200,...] [--step-seconds 4] [--lanes 64] [--quick]
        [--label NAME] [--save bench/e2e_results.json] [--plot bench/e2e_latency.png] [--profile FILE]

For the configuration it makes a fresh data directory (and a fresh PostgreSQL database on 127.0.0.1),
activates cardholders and adds a merchant through the core, starts the SMSC fixture
(tests/smsc_fixture/server.js: receipts on, `--record` file, receipts on the submitting bind) and
`idtronic-tel run` (two processes for two-daemons, each with its own `[[smpp.bind]]`s), then:

* open loop at rising offered rates (payments per second) until saturation (created/s below 90 % of the
  offered rate, or a median 201 -> submit_sm lag over one second);
* a closed loop: `--lanes` merchants each doing create -> wait for its SMS -> confirm, back to back.

Merchants are separate processes (bench/e2e_merchants.py). Each step prints payments created/s, SMS
submitted/s, confirms/s, p50/p95/p99 of "HTTP 201 -> submit_sm at the SMSC" and of the confirm round
trip, daemon / PostgreSQL / SMSC / merchant CPU per payment, daemon RSS, machine busy, and the
accounting: created = submitted (once) = receipted = confirmed. The run fails (exit 1) unless every
payment is accounted for, in every step and in the database at the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from api_bench import (  # noqa: E402
    Daemon,
    Setup,
    _cpu_of,
    _cpu_split,
    _machine_cpu,
    _postgres_cpu_by_role,
    prepare,
    start_daemons,
    stop_daemons,
    with_workers,
)
from e2e_merchants import Merchants, Outcome  # noqa: E402
from profile_summary import per_payment  # noqa: E402
from profile_summary import summarise as summarise_profile  # noqa: E402
from sqlalchemy import func, select, text  # noqa: E402

from idtronic_tel.core.models import Payment, SmsMessage  # noqa: E402

FIXTURE = ROOT / "tests" / "smsc_fixture" / "server.js"
SATURATED = 0.9  # created/s below this share of the offered rate: saturation


# ---- the SMSC ---------------------------------------------------------------------------------------
class Smsc:
    def __init__(self, record: Path, delay_ms: int) -> None:
        self.record = record
        self.proc = subprocess.Popen(
            [
                *("node", str(FIXTURE), "--quiet", "1", "--record", str(record)),
                *("--submit-delay", str(delay_ms), "--receipts-on-submitter", "1"),
            ],
            stdout=subprocess.PIPE,
            cwd=FIXTURE.parent,
        )
        assert self.proc.stdout is not None
        self.port = int(json.loads(self.proc.stdout.readline())["port"])

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def smpp_config(port: int, binds: int, window: int, tps: float) -> str:
    lines = ["", "[smpp]", "response_timeout = 10", "reconnect_max_delay = 1", ""]
    for index in range(binds):
        lines += [
            "[[smpp.bind]]",
            f'name = "node{index}"',
            f'endpoint = "tcp:127.0.0.1:{port}"',
            'system_id = "test"',
            'password = "secret"',
            f"window = {window}",
            f"max_tps = {tps}",
            "",
        ]
    return "\n".join(lines)


# ---- measurement ------------------------------------------------------------------------------------
def _rss(pid: int) -> tuple[float, float]:
    """VmRSS and VmHWM of a process, MiB."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            found[line[:5]] = int(line.split()[1]) / 1024
    return found.get("VmRSS", 0.0), found.get("VmHWM", 0.0)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class StepResult:
    name: str
    offered: float  # payments/s offered (0: closed loop)
    payments: int
    created: int
    submitted: int
    duplicates: int
    receipted: int
    confirmed: int
    created_per_s: float
    submitted_per_s: float
    confirmed_per_s: float
    lag_ms: tuple[float, float, float]  # 201 -> submit_sm at the SMSC: p50, p95, p99
    confirm_ms: tuple[float, float, float]  # code available -> 200
    create_ms: tuple[float, float, float]  # create request (from when it was due) -> 201
    daemon_ms: float  # CPU per payment
    pg_ms: float
    smsc_ms: float
    merchant_ms: float
    busy: float  # machine, percent of every CPU, our guest's work (steal excluded)
    rss_mib: float  # the largest daemon's RSS at the end of the step
    hwm_mib: float
    steal: float = 0.0  # percent of every CPU the hypervisor gave to other guests (a noisy neighbour)
    daemon_kernel_ms: float = 0.0  # of daemon_ms, in the kernel (system time: sockets, epoll, futexes)
    # PostgreSQL, per payment: CPU of its backends (the daemons' connections) and of its background
    # processes (WAL writer, checkpointer, ...), transactions, WAL records and WAL flushes (pg_stat_*).
    pg_split_ms: tuple[float, float] = (0.0, 0.0)
    pg_xacts: float = 0.0
    pg_wal_records: float = 0.0
    pg_wal_syncs: float = 0.0

    @property
    def accounted(self) -> bool:
        n = self.payments
        return self.created == self.submitted == self.receipted == self.confirmed == n and not self.duplicates

    def line(self) -> str:
        lag, conf = self.lag_ms, self.confirm_ms
        return (
            f"{self.name:<14} {self.payments:>6} pay  created {self.created_per_s:6.0f}/s  "
            f"submitted {self.submitted_per_s:6.0f}/s  confirmed {self.confirmed_per_s:6.0f}/s  "
            f"201->submit p50/95/99 {lag[0]:6.1f} {lag[1]:6.1f} {lag[2]:6.1f} ms  "
            f"confirm {conf[0]:5.1f} {conf[1]:5.1f} {conf[2]:5.1f} ms  "
            f"CPU ms/pay: daemon {self.daemon_ms:.2f} pg {self.pg_ms:.2f} smsc {self.smsc_ms:.2f} "
            f"merchants {self.merchant_ms:.2f}; busy {self.busy:.0f}% steal {self.steal:.0f}%  "
            f"RSS {self.rss_mib:.0f} MiB  "
            f"{self.created}={self.submitted}={self.receipted}={self.confirmed}"
            f"{'' if not self.duplicates else f' DUPLICATES {self.duplicates}'}"
            f"{' ok' if self.accounted else ' NOT ACCOUNTED'}"
        )

    def detail_line(self, pg: bool) -> str:
        """Where the daemon's and PostgreSQL's CPU goes, per payment."""
        daemon = (
            f"{'':<14} daemon per payment: {self.daemon_ms - self.daemon_kernel_ms:.2f} ms user, "
            f"{self.daemon_kernel_ms:.2f} ms kernel"
        )
        if not pg:
            return daemon
        return (
            f"{daemon}; PostgreSQL per payment: backends {self.pg_split_ms[0]:.2f} ms, background "
            f"(WAL writer, checkpointer, ...) {self.pg_split_ms[1]:.2f} ms; "
            f"{self.pg_xacts:.2f} transactions, {self.pg_wal_records:.1f} WAL records, "
            f"{self.pg_wal_syncs:.2f} WAL flushes"
        )


def _postgres_counters(setup: Setup) -> tuple[float, float, float]:
    """Transactions of the bench database, WAL records and WAL flushes of the server (PostgreSQL 14+).
    A backend publishes its counters at most once a second: deltas over a step are good to ~1 s."""

    def read(s: Any, rules: Any) -> tuple[float, float, float]:
        xacts = s.execute(
            text(
                "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()"
            )
        ).scalar_one()
        records, syncs = s.execute(text("SELECT wal_records, wal_sync FROM pg_stat_wal")).one()
        return float(xacts), float(records), float(syncs)

    result: tuple[float, float, float] = setup.pool.run_blocking(read, setup.rules)
    return result


class Meter:
    def __init__(self, daemons: list[Daemon], smsc: Smsc, setup: Setup) -> None:
        self.daemons = [d.proc.pid for d in daemons]
        self.smsc = smsc.proc.pid
        self.setup = setup
        self.pg = setup.backend == "postgresql"

    def snapshot(self) -> tuple[float, ...]:
        splits = [_cpu_split(p) for p in with_workers(self.daemons)]  # (user, kernel) of each process
        daemon, kernel = sum(map(sum, splits)), sum(k for _, k in splits)
        pg_roles = _postgres_cpu_by_role() if self.pg else (0.0, 0.0)
        busy, steal = _machine_cpu()
        now = time.monotonic()
        common = (daemon, sum(pg_roles), _cpu_of(self.smsc), busy - steal, now, kernel, steal)
        return common + pg_roles + _postgres_counters(self.setup) if self.pg else common


def summarise(
    name: str, offered: float, outcomes: list[Outcome], cpu: list[float], meter: Meter
) -> StepResult:
    errors = [e for o in outcomes for e in o.errors]
    if errors:
        raise SystemExit(f"{name}: merchants failed: {errors}")
    rows = [r for o in outcomes for r in o.rows]
    start = min(o.started for o in outcomes)
    ok = [r for r in rows if r[1] == 201]
    sent = [r for r in ok if r[5] >= 1]

    def rate(count: int, last: float) -> float:
        return count / (last - start) if count and last > start else 0.0

    n = len(rows) or 1
    sizes = [_rss(p) for p in with_workers(meter.daemons)]
    pg = [x / n for x in cpu[7:]] or [0.0] * 5  # backends s, others s, transactions, WAL records, syncs
    return StepResult(
        name=name,
        offered=offered,
        payments=len(rows),
        created=len(ok),
        submitted=len(sent),
        duplicates=sum(r[5] - 1 for r in sent),
        receipted=sum(1 for r in sent if r[6]),
        confirmed=sum(1 for r in rows if r[7] == 200),
        created_per_s=rate(len(ok), max((r[3] for r in ok), default=0.0)),
        submitted_per_s=rate(len(sent), max((r[4] for r in sent), default=0.0)),
        confirmed_per_s=rate(
            sum(1 for r in rows if r[7] == 200), max((r[3] + r[8] for r in rows if r[7] == 200), default=0.0)
        ),
        lag_ms=tuple(_pct([(r[4] - r[3]) * 1000 for r in sent], q) for q in (0.5, 0.95, 0.99)),  # type: ignore[arg-type]
        confirm_ms=tuple(_pct([r[8] * 1000 for r in rows if r[7] == 200], q) for q in (0.5, 0.95, 0.99)),  # type: ignore[arg-type]
        create_ms=tuple(_pct([r[2] * 1000 for r in ok], q) for q in (0.5, 0.95, 0.99)),  # type: ignore[arg-type]
        daemon_ms=cpu[0] * 1000 / n,
        pg_ms=cpu[1] * 1000 / n,
        smsc_ms=cpu[2] * 1000 / n,
        merchant_ms=sum(o.cpu for o in outcomes) * 1000 / n,
        busy=cpu[3] / cpu[4] * 100 / (os.cpu_count() or 1),  # over the meter's own interval
        steal=cpu[6] / cpu[4] * 100 / (os.cpu_count() or 1),
        rss_mib=max(s[0] for s in sizes),
        hwm_mib=max(s[1] for s in sizes),
        daemon_kernel_ms=cpu[5] * 1000 / n,
        pg_split_ms=(pg[0] * 1000, pg[1] * 1000),
        pg_xacts=pg[2],
        pg_wal_records=pg[3],
        pg_wal_syncs=pg[4],
    )


PROFILE_RATE = 200  # py-spy samples per second


def _py_spy(out: Path | None, pid: int) -> subprocess.Popen[bytes] | None:
    """py-spy sampling `pid` (only the thread holding the interpreter lock: where the CPU goes)."""
    if out is None:
        return None
    command = [str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(pid), "--gil"]
    command += ["--nonblocking", "--rate", str(PROFILE_RATE), "--format", "raw", "--output", str(out)]
    spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)  # py-spy attaches before the step starts
    return spy


# ---- one configuration ------------------------------------------------------------------------------
class Amounts:
    """Unique amounts (the SMS carries the amount: that is how a merchant recognises its payment)."""

    def __init__(self) -> None:
        self.next = 101

    def take(self, setup: Setup, count: int) -> list[tuple[str, int]]:
        holders = setup.cardholders
        first = self.next
        self.next += count
        return [(holders[(first + i) % len(holders)], first + i) for i in range(count)]


def database_counts(setup: Setup) -> tuple[dict[str, int], dict[str, int]]:
    def read(s: Any, rules: Any) -> tuple[dict[str, int], dict[str, int]]:
        payments = dict(s.execute(select(Payment.status, func.count()).group_by(Payment.status)).all())
        sms = dict(
            s.execute(
                select(SmsMessage.state, func.count())
                .where(SmsMessage.payment_id.is_not(None))
                .group_by(SmsMessage.state)
            ).all()
        )
        return payments, sms

    result: tuple[dict[str, int], dict[str, int]] = setup.pool.run_blocking(read, setup.rules)
    return result


def plan(args: argparse.Namespace) -> tuple[list[float], float, int, int]:
    rates = [float(x) for x in args.rates.split(",") if x]  # "": the closed loop only
    seconds = args.step_seconds
    closed = args.closed_payments
    return rates, seconds, closed, int(sum(r * seconds for r in rates)) + closed + 200


def bench_config(args: argparse.Namespace, merchants: Merchants) -> tuple[list[StepResult], bool]:
    backend = "sqlite" if args.config == "sqlite" else "postgresql"
    count = 2 if args.config == "two-daemons" else 1
    rates, seconds, closed, total = plan(args)
    cardholders = max(20, total // 80 + 10)  # tokens.per_cardholder_limit = 100 per 600 s
    started = time.monotonic()
    setup = prepare(backend, cardholders, args.pool_threads, args.workers)
    record = setup.workdir / "smsc-record.jsonl"
    smsc = Smsc(record, args.smsc_delay_ms)
    per_daemon = max(1, args.binds // count)
    with setup.config_file.open("a") as f:
        f.write(smpp_config(smsc.port, per_daemon, args.window, args.bind_tps))
    print(
        f"\n=== {args.label}: {backend}, {count} daemon(s) of {args.workers} worker(s) x {per_daemon} "
        f"bind(s) (window {args.window}, "
        f"max_tps {args.bind_tps:g}), SMSC answering {args.smsc_delay_ms} ms late, "
        f"{cardholders} cardholders, setup {time.monotonic() - started:.1f} s ===",
        flush=True,
    )
    daemons = start_daemons(setup, count, args.workers)
    results: list[StepResult] = []
    amounts = Amounts()
    try:
        hosts = [("127.0.0.1", d.port) for d in daemons]
        meter = Meter(daemons, smsc, setup)

        def step(
            name: str, offered: float, payments: int, connections: int, rate: float | None
        ) -> StepResult:
            spy = _py_spy(args.profile, daemons[0].proc.pid) if name.startswith("closed") else None
            before = meter.snapshot()
            outcomes = merchants.run(
                hosts,
                setup.api_key,
                str(record),
                amounts.take(setup, payments),
                connections,
                rate,
                args.drain,
            )
            after = meter.snapshot()
            result = summarise(
                name, offered, outcomes, [b - a for a, b in zip(before, after, strict=True)], meter
            )
            print(result.line(), flush=True)
            print(result.detail_line(meter.pg), flush=True)
            if spy is not None:
                spy.send_signal(signal.SIGINT)  # py-spy writes its profile and exits
                spy.wait(timeout=30)
                print(f"py-spy profile of the first daemon, thread holding the GIL ({args.profile}):")
                print(summarise_profile(args.profile.read_text(), 30))
                print(per_payment(args.profile.read_text(), result.daemon_ms))
            return result

        step("warm-up", 0, 40 if args.quick else 400, 8, None)
        for rate in rates:
            result = step(f"open {rate:g}/s", rate, int(rate * seconds), args.connections, rate)
            results.append(result)
            if result.created_per_s < SATURATED * rate or result.lag_ms[0] > 1000:
                print(f"saturated at {rate:g}/s offered", flush=True)
                break
        results.append(step(f"closed x{args.lanes}", 0, closed, args.lanes, None))
    finally:
        stop_daemons(daemons)
        for daemon in daemons:
            if daemon.proc.returncode not in (0, -15):
                print(f"daemon exit {daemon.proc.returncode}:\n{daemon.log.read_text()[-2000:]}")
        smsc.stop()
    payments, sms = database_counts(setup)
    created = amounts.next - 101
    database_ok = payments == {"validated": created} and sms == {"delivered": created}
    print(
        f"database: payments {payments}, their SMS {sms}: "
        f"{'every payment validated, every SMS delivered' if database_ok else 'NOT ACCOUNTED'}"
    )
    setup.close()
    return results, database_ok and all(r.accounted for r in results)


# ---- results file and plot --------------------------------------------------------------------------
def save(path: Path, label: str, args: argparse.Namespace, results: list[StepResult]) -> None:
    saved = json.loads(path.read_text()) if path.exists() else {}
    saved[label] = {
        "command": "bench/e2e_bench.py " + " ".join(sys.argv[1:]),
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "load_average": os.getloadavg(),
        "steps": [asdict(r) for r in results],
    }
    path.write_text(json.dumps(saved, indent=1) + "\n")


def plot(results_file: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    saved = json.loads(results_file.read_text())
    fig, (ax50, ax99, axrate) = plt.subplots(1, 3, figsize=(16, 5), sharex=True)
    for label, run in saved.items():
        steps = [s for s in run["steps"] if s["offered"]]
        closed = [s for s in run["steps"] if not s["offered"]]
        best = f" (closed loop: {closed[-1]['created_per_s']:.0f}/s)" if closed else ""
        x = [s["offered"] for s in steps]
        (line,) = ax50.plot(x, [s["lag_ms"][0] for s in steps], marker="o", label=label + best)
        ax99.plot(x, [s["lag_ms"][2] for s in steps], marker="o", color=line.get_color())
        axrate.plot(x, [s["created_per_s"] for s in steps], marker="o", color=line.get_color())
        axrate.plot(x, [s["submitted_per_s"] for s in steps], ls=":", color=line.get_color())
    for ax, what in ((ax50, "p50"), (ax99, "p99")):
        ax.set_yscale("symlog", linthresh=1)  # the lag is negative when the SMS beats the 201
        ax.set_ylabel(f"HTTP 201 -> submit_sm at the SMSC, {what} (ms)")
    top = max(max(s["offered"] for s in run["steps"]) for run in saved.values())
    axrate.plot([0, top], [0, top], ls="--", color="grey", lw=0.8)
    axrate.set_ylabel("payments created/s (solid), SMS submitted/s (dotted)")
    for ax in (ax50, ax99, axrate):
        ax.set_xlabel("offered payments/s (open loop)")
        ax.grid(True, which="both", alpha=0.3)
    ax50.legend(fontsize=7)
    fig.suptitle(
        "idtronic-tel end to end against offered load "
        "(2 vCPUs: daemons, PostgreSQL, SMSC and merchants on the same host)"
    )
    fig.tight_layout()
    fig.savefig(out, dpi=80)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", choices=("sqlite", "postgresql", "two-daemons"), default="sqlite")
    parser.add_argument(
        "--binds", type=int, default=1, help="[[smpp.bind]] sections in all (split over daemons)"
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="[daemon] workers of each daemon (bind k: worker k mod N)"
    )
    parser.add_argument("--bind-tps", type=float, default=10000, help="max_tps of each bind")
    parser.add_argument("--window", type=int, default=100, help="window of each bind")
    parser.add_argument(
        "--smsc-delay-ms", type=int, default=0, help="the SMSC answers each submit_sm this late"
    )
    parser.add_argument(
        "--rates", default="100,200,300,400,600,800,1000,1200,1500", help="offered payments/s"
    )
    parser.add_argument("--step-seconds", type=float, default=4.0)
    parser.add_argument("--connections", type=int, default=64, help="HTTP connections, open loop")
    parser.add_argument("--lanes", type=int, default=64, help="merchant lanes of the closed loop")
    parser.add_argument("--closed-payments", type=int, default=3000)
    parser.add_argument("--merchants", type=int, default=2, help="merchant processes")
    parser.add_argument("--pool-threads", type=int, default=8, help="database.pool_threads (PostgreSQL)")
    parser.add_argument("--drain", type=float, default=30.0, help="seconds to wait for the last SMS/confirms")
    parser.add_argument("--profile", type=Path, help="py-spy the first daemon in the closed loop (raw file)")
    parser.add_argument("--quick", action="store_true", help="a few seconds: two small steps (the test)")
    parser.add_argument("--label", default="", help="name of this run in the results file and the plot")
    parser.add_argument("--save", type=Path, help="merge this run's steps into a JSON results file")
    parser.add_argument("--plot", type=Path, help="draw the results file (--save) into this PNG")
    args = parser.parse_args(argv)
    if args.quick:
        args.rates, args.step_seconds, args.closed_payments, args.lanes, args.connections = (
            "20,40",
            1.0,
            60,
            4,
            8,
        )
    args.label = args.label or (
        f"{args.config}, {args.binds} bind(s) x {args.bind_tps:g} TPS, SMSC +{args.smsc_delay_ms} ms"
    )
    load = os.getloadavg()
    print(
        f"e2e_bench {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')} on {platform.node()}: "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, load average {load[0]:.2f} "
        f"{load[1]:.2f} {load[2]:.2f}; {' '.join(sys.argv[1:] if argv is None else argv)}",
        flush=True,
    )
    merchants = Merchants(args.merchants)
    try:
        results, ok = bench_config(args, merchants)
    finally:
        merchants.close()
    if args.save is not None:
        save(args.save, args.label, args, results)
        if args.plot is not None:
            plot(args.save, args.plot)
    print("every payment accounted for" if ok else "SOME PAYMENTS NOT ACCOUNTED FOR")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
