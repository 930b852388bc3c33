"""HTTP API benchmark: payment creations and confirmations against a real daemon over loopback.

    .venv/bin/python bench/api_bench.py [--db sqlite|postgresql|both] [--quick] [--daemons N] [--workers N]

For each database it makes a fresh data directory (and a fresh PostgreSQL database on 127.0.0.1:5432,
dropped at the end), migrates, activates cardholders and adds a merchant directly through the core,
starts `idtronic-tel run` (N processes on PostgreSQL: the architecture's scale-out; `--workers N`: each
with `[daemon] workers = N`, worker processes sharing its port, their CPU counted with it), then:

* closed loop at each concurrency level: create payments, read their tokens from the SMS outbox (no SMPP
  bind, so messages stay queued; the bench decrypts them with the data key like an SMPP worker would),
  then confirm every payment with its right token;
* open loop at half the best rate of the closed-loop runs, for creations and for confirmations: p99.

The load generator is bench/loadgen.py (worker processes with an asyncio keep-alive client); every line
shows the CPU used by the generator, the daemon(s) and PostgreSQL so the bottleneck is visible.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import sqlalchemy as sa  # noqa: E402
from loadgen import LoadGenerator, Outcome, request_bytes  # noqa: E402
from sqlalchemy import select  # noqa: E402

from idtronic_tel.config import load_config, prepare_data_dir  # noqa: E402
from idtronic_tel.core import callbacks, enrollment, merchants  # noqa: E402
from idtronic_tel.core.cards import luhn_check_digit  # noqa: E402
from idtronic_tel.core.db import DBPool, make_engine, migrate  # noqa: E402
from idtronic_tel.core.models import SmsMessage  # noqa: E402
from idtronic_tel.core.rules import Rules  # noqa: E402
from idtronic_tel.core.states import EndReason  # noqa: E402
from idtronic_tel.daemon import core_rules  # noqa: E402

DAEMON = Path(sys.executable).with_name("idtronic-tel")
PG_ADMIN_URL = os.environ.get("IDT_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
TOKENS_PER_CARDHOLDER = 100  # tokens.per_cardholder_limit (its maximum) per 600 s window
TICKS = os.sysconf("SC_CLK_TCK")


# ---- setup ------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pg_admin() -> sa.Engine:
    return sa.create_engine(
        PG_ADMIN_URL.replace("postgresql://", "postgresql+psycopg://"), isolation_level="AUTOCOMMIT"
    )


def _activate_batch(s: Any, rules: Rules, numbers: range) -> list[str]:
    """Enroll each cardholder (its own card) and run its callback to accepted digits, in one transaction."""
    identifiers = []
    for number in numbers:
        first8 = "4" + f"{number:07d}"
        last7 = f"{number:07d}"
        fields = {
            "last_name": "Martin",
            "first_name": "Claire",
            "birth_date": "1985-04-12",
            "mobile": f"06 {number // 10000 % 100:02d} {number // 100 % 100:02d} {number % 100:02d} 44",
            "card_first8": first8,
        }
        identifiers.append(enrollment.enroll(s, rules, fields, "web", "cardholder").identifier)
        (job,) = callbacks.claim_due(s, rules, "bench-setup", 1)
        callbacks.start_call(s, rules, job.attempt_id)
        verdict = callbacks.check_card_digits(
            s, rules, job.attempt_id, last7 + luhn_check_digit(first8 + last7)
        )
        assert verdict == "accepted", verdict
        callbacks.end_call(s, rules, job.attempt_id, EndReason.COMPLETED)
    return identifiers


@dataclass
class Setup:
    backend: str
    url: str
    workdir: Path
    config_file: Path
    data_dir: Path
    pool: DBPool
    rules: Rules
    api_key: str
    cardholders: list[str]
    pg_name: str | None
    last_sms_id: int = 0

    def close(self) -> None:
        self.pool.engine.dispose()
        if self.pg_name is not None:
            admin = _pg_admin()
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{self.pg_name}" WITH (FORCE)'))
            admin.dispose()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def tokens(self) -> dict[str, str]:
        """Payment id -> token of every SMS queued since the last call (decrypted with the data key)."""

        def read(s: Any, rules: Rules, after: int) -> list[tuple[int, str, bytes]]:
            rows = s.execute(
                select(SmsMessage.id, SmsMessage.payment_id, SmsMessage.body_enc)
                .where(SmsMessage.id > after)
                .order_by(SmsMessage.id)
            ).all()
            return [tuple(row) for row in rows]

        rows = self.pool.run_blocking(read, self.rules, self.last_sms_id)
        found = {}
        for sms_id, payment_id, blob in rows:
            match = re.search(r"code (\d{6})", self.rules.vault.decrypt("sms", blob))
            if payment_id and match:
                found[payment_id] = match.group(1)
            self.last_sms_id = max(self.last_sms_id, sms_id)
        return found


def prepare(backend: str, cardholders: int, pool_threads: int, workers: int = 1) -> Setup:
    workdir = Path(tempfile.mkdtemp(prefix=f"idt-bench-{backend}-"))
    data_dir = workdir / "data"
    pg_name = None
    if backend == "postgresql":
        pg_name = "idt_bench_" + uuid.uuid4().hex[:12]
        admin = _pg_admin()
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{pg_name}"'))
        admin.dispose()
        url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + pg_name
    else:
        url = f"sqlite:///{data_dir}/idtronic.db"
    config_file = workdir / "idtronic.toml"
    config_file.write_text(
        f"""
[daemon]
workers = {workers}

[database]
url = "{url}"
pool_threads = {pool_threads}

[api]
merchant_requests_per_minute = 1000000
merchant_payments_per_minute = 1000000

[tokens]
lifetime = 600
per_cardholder_limit = {TOKENS_PER_CARDHOLDER}

[callback]
first_call_delay = 0
calling_hours = "00:00-24:00"
"""
    )
    prepare_data_dir(data_dir, config_file, {})
    config = load_config(config_file, data_dir, {})
    migrate(url)
    pool = DBPool(None, make_engine(url, pool_size=1), 1)  # type: ignore[arg-type]  # run_blocking only
    rules = core_rules(config)
    identifiers: list[str] = []
    for start in range(0, cardholders, 100):
        identifiers += pool.run_blocking(_activate_batch, rules, range(start, min(start + 100, cardholders)))
    api_key = pool.run_blocking(merchants.add, rules, "Boutique Bench", None).api_key
    return Setup(backend, url, workdir, config_file, data_dir, pool, rules, api_key, identifiers, pg_name)


# ---- the daemon(s) ----------------------------------------------------------------------------------
@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path


def start_daemons(setup: Setup, count: int, workers: int = 1) -> list[Daemon]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("IDTRONIC_")}
    daemons = []
    for index in range(count):
        port = _free_port()
        env = {
            **environ,
            "IDTRONIC_HTTP_LISTEN": f"tcp:{port}:interface=127.0.0.1",
            "IDTRONIC_AGI_LISTEN": f"tcp:{_free_port()}:interface=127.0.0.1",
            "IDTRONIC_HTTP_METRICS_LISTEN": "tcp:0:interface=127.0.0.1",
        }
        log = setup.workdir / f"daemon{index}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [str(DAEMON), "--config", str(setup.config_file), "--data-dir", str(setup.data_dir), "run"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=setup.workdir,
            )
        daemons.append(Daemon(proc, port, log))
    deadline = time.monotonic() + 30
    for daemon in daemons:
        while not _healthy(daemon.port, workers):
            if daemon.proc.poll() is not None or time.monotonic() > deadline:
                stop_daemons(daemons)
                raise SystemExit(f"daemon did not start:\n{daemon.log.read_text()[-3000:]}")
            time.sleep(0.05)  # readiness polling interval
    return daemons


def _healthy(port: int, workers: int = 1) -> bool:
    """/healthz answers 200, from each of the daemon's `workers` processes (a connection each)."""
    seen = set()
    try:
        for _ in range(20 * workers):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            response = conn.getresponse()
            body = json.loads(response.read())
            conn.close()
            if response.status != 200:
                return False
            seen.add(body.get("worker", {}).get("index", 0))
            if len(seen) == workers:
                return True
        return False
    except OSError:
        return False


def stop_daemons(daemons: list[Daemon]) -> None:
    for daemon in daemons:
        daemon.proc.terminate()
    for daemon in daemons:
        try:
            daemon.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            daemon.proc.kill()
            daemon.proc.wait()


# ---- CPU accounting ---------------------------------------------------------------------------------
def _cpu_split(pid: int) -> tuple[float, float]:
    """utime and stime of a process and its threads, seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    return int(fields[11]) / TICKS, int(fields[12]) / TICKS


def _cpu_of(pid: int) -> float:
    """utime + stime of a process and its threads, seconds."""
    return sum(_cpu_split(pid))


def _postgres_cpu_by_role() -> tuple[float, float]:
    """CPU seconds of PostgreSQL's client backends and of its other processes (WAL writer, checkpointer,
    ...), told apart by process title: a backend's is "postgres: user db 127.0.0.1(port) state"."""
    backends = other = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if Path(f"/proc/{entry}/comm").read_text().strip() != "postgres":
                continue
            title = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue  # gone meanwhile
        if b"(" in title or b"[local]" in title:
            backends += _cpu_of(int(entry))
        else:
            other += _cpu_of(int(entry))
    return backends, other


def _postgres_cpu() -> float:
    """Every postgres process on the machine (backends of other users included: see the report)."""
    return sum(_postgres_cpu_by_role())


def _machine_cpu() -> tuple[float, float]:
    """CPU seconds of the machine (all CPUs) busy, and of those the steal: the hypervisor running other
    guests while this one wanted to run (first line of /proc/stat: user nice system idle iowait irq
    softirq steal ...)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    busy = sum(fields) - fields[3] - fields[4]  # minus idle and iowait
    return busy / TICKS, fields[7] / TICKS


def _children(pid: int) -> list[int]:
    """The processes `pid` started (a daemon's workers 1..N-1)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found += [int(child) for child in task.read_text().split()]
        except OSError:
            continue
    return found


def with_workers(pids: list[int]) -> list[int]:
    """The daemons' processes and the workers they started."""
    return pids + [child for pid in pids for child in _children(pid)]


class CpuMeter:
    def __init__(self, daemons: list[Daemon]) -> None:
        self._pids = [d.proc.pid for d in daemons]

    def snapshot(self) -> tuple[float, float, float]:
        return sum(_cpu_of(p) for p in with_workers(self._pids)), _postgres_cpu(), _machine_cpu()[0]


# ---- phases -----------------------------------------------------------------------------------------
@dataclass
class Result:
    name: str
    count: int
    wall: float
    p50: float
    p99: float
    statuses: Counter[int]
    daemon_cpu: float
    pg_cpu: float
    gen_cpu: float
    machine_cpu: float
    ids: list[str]

    @property
    def rate(self) -> float:
        return self.count / self.wall if self.wall else 0.0

    @property
    def busy(self) -> float:
        """Share of the whole machine (every CPU) busy during the phase, percent."""
        return self.machine_cpu / self.wall * 100 / (os.cpu_count() or 1) if self.wall else 0.0

    def line(self) -> str:
        per = 1000 / self.count if self.count else 0.0
        return (
            f"{self.name:<28} {self.count:>6} req {self.wall:6.2f} s {self.rate:8.0f}/s  "
            f"p50 {self.p50 * 1000:7.2f} ms  p99 {self.p99 * 1000:7.2f} ms  {dict(self.statuses)}  "
            f"CPU ms/req: daemon {self.daemon_cpu * per:.2f} pg {self.pg_cpu * per:.2f} "
            f"gen {self.gen_cpu * per:.2f}; machine busy {self.busy:.0f}%"
            if self.wall
            else f"{self.name}: nothing ran"
        )


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_phase(
    gen: LoadGenerator,
    meter: CpuMeter,
    hosts: list[tuple[str, int]],
    name: str,
    requests: list[bytes],
    concurrency: int,
    rate: float | None = None,
    want_ids: bool = False,
) -> Result:
    before = meter.snapshot()
    outcomes: list[Outcome] = gen.run(hosts, requests, concurrency, rate, want_ids)
    after = meter.snapshot()
    errors = [e for o in outcomes for e in o.errors]
    if errors:
        raise SystemExit(f"{name}: load generator failed: {errors}")
    records = [r for o in outcomes for r in o.records]
    wall = max(o.ended for o in outcomes) - min(o.started for o in outcomes)
    latencies = [r[1] for r in records]
    return Result(
        name,
        len(records),
        wall,
        _percentile(latencies, 0.50),
        _percentile(latencies, 0.99),
        Counter(r[0] for r in records),
        after[0] - before[0],
        after[1] - before[1],
        sum(o.cpu for o in outcomes),
        after[2] - before[2],
        [r[2] for r in records if r[2]],
    )


def _creations(setup: Setup, count: int, tag: str) -> list[bytes]:
    holders = setup.cardholders
    offset = _creations.counter  # type: ignore[attr-defined]
    _creations.counter += count  # type: ignore[attr-defined]
    return [
        request_bytes(
            "POST",
            "/v1/payments",
            setup.api_key,
            {
                "identifier": holders[(offset + i) % len(holders)],
                "amount": 1000 + i % 5000,
                "currency": "EUR",
                "reference": f"{tag}-{i}",
            },
        )
        for i in range(count)
    ]


_creations.counter = 0  # type: ignore[attr-defined]


def _confirmations(setup: Setup, ids: list[str]) -> list[bytes]:
    tokens = setup.tokens()
    missing = [i for i in ids if i not in tokens]
    if missing:
        raise SystemExit(f"{len(missing)} payments without a queued token, e.g. {missing[:3]}")
    return [
        request_bytes("POST", f"/v1/payments/{pid}/confirm", setup.api_key, {"token": tokens[pid]})
        for pid in ids
    ]


def bench_backend(backend: str, args: argparse.Namespace, gen: LoadGenerator) -> list[Result]:
    levels = [int(x) for x in args.levels.split(",")]
    per_level = 600 if args.quick else 3000
    total_creates = per_level * len(levels) * 3
    cardholders = max(200, total_creates // (TOKENS_PER_CARDHOLDER // 2))
    print(f"\n=== {backend}: preparing ({cardholders} active cardholders) ===", flush=True)
    started = time.monotonic()
    setup = prepare(backend, cardholders, args.pool_threads, args.workers)
    print(f"setup {time.monotonic() - started:.1f} s", flush=True)
    count = args.daemons if backend == "postgresql" else 1
    daemons = start_daemons(setup, count, args.workers)
    results: list[Result] = []
    try:
        hosts = [("127.0.0.1", d.port) for d in daemons]
        meter = CpuMeter(daemons)
        pids = [d.proc.pid for d in daemons]
        print(f"{count} daemon(s) of {args.workers} worker(s), pids {pids}, generator pids {gen.pids()}")
        # Warm-up: imports, connection pools, statement caches.
        warm = run_phase(
            gen, meter, hosts, "warm-up create", _creations(setup, 200, "warm"), 8, want_ids=True
        )
        run_phase(gen, meter, hosts, "warm-up confirm", _confirmations(setup, warm.ids), 8)
        for level in levels:
            n = max(100, per_level // 6) if level == 1 else per_level
            created = run_phase(
                gen,
                meter,
                hosts,
                f"create c={level}",
                _creations(setup, n, f"c{level}"),
                level,
                want_ids=True,
            )
            print(created.line(), flush=True)
            confirmed = run_phase(
                gen, meter, hosts, f"confirm c={level}", _confirmations(setup, created.ids), level
            )
            print(confirmed.line(), flush=True)
            results += [created, confirmed]
        best_create = max(r.rate for r in results if r.name.startswith("create"))
        best_confirm = max(r.rate for r in results if r.name.startswith("confirm"))
        seconds = 3 if args.quick else 8
        rate = best_create / 2
        half = run_phase(
            gen,
            meter,
            hosts,
            f"create @{rate:.0f}/s (half max)",
            _creations(setup, int(rate * seconds), "half"),
            64,
            rate=rate,
            want_ids=True,
        )
        print(half.line(), flush=True)
        rate = best_confirm / 2
        needed = int(rate * seconds)
        pending = run_phase(
            gen, meter, hosts, "prep create", _creations(setup, needed, "prep"), 32, want_ids=True
        )
        half_confirm = run_phase(
            gen,
            meter,
            hosts,
            f"confirm @{rate:.0f}/s (half max)",
            _confirmations(setup, pending.ids),
            64,
            rate=rate,
        )
        print(half_confirm.line(), flush=True)
        results += [half, half_confirm]
    finally:
        stop_daemons(daemons)
        for daemon in daemons:
            if daemon.proc.returncode not in (0, -15):
                print(f"daemon exit {daemon.proc.returncode}:\n{daemon.log.read_text()[-2000:]}")
        setup.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--db", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--quick", action="store_true", help="fewer requests per level (about 1 min)")
    parser.add_argument("--levels", default="1,8,32,64", help="closed-loop concurrency levels")
    parser.add_argument("--daemons", type=int, default=1, help="daemon processes on PostgreSQL")
    parser.add_argument("--workers", type=int, default=1, help="[daemon] workers of each daemon")
    parser.add_argument("--generators", type=int, default=2, help="load generator processes")
    parser.add_argument("--pool-threads", type=int, default=8, help="database.pool_threads of the daemon")
    args = parser.parse_args()
    print(
        f"api_bench {dt.datetime.now().isoformat(timespec='seconds')} on {platform.node()}: "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, {' '.join(sys.argv[1:])}"
    )
    backends = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    gen = LoadGenerator(args.generators)
    try:
        for backend in backends:
            bench_backend(backend, args, gen)
    finally:
        gen.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
