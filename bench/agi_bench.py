"""FastAGI benchmark: many concurrent sessions against one FastAGI server.

Two processes, so that neither measures the other's CPU:

* `server`: the daemon's FastAGI listener (AgiServerFactory, EnrollmentFlow) with an in-memory gateway
  that accepts any attempt id. It records, on its side, the turnaround of every command (write -> reply),
  the highest number of sessions in progress and its RSS; it prints them as JSON on SIGTERM.
* `driver`: the Asterisk emulator (idtronic_tel.simulators.asterisk_agi), keeping `--concurrency`
  emulated channels connected until `--sessions` are done; each simulated cardholder keys the right
  digits during the entry prompt. Prints JSON: AGISTATUS counts, wall time, sessions/s.

`run` (the default) starts both for each phase and prints a summary:

    .venv/bin/python bench/agi_bench.py                 # both phases
    .venv/bin/python bench/agi_bench.py run --phase concurrency

Turnaround is reported for commands Asterisk answers at once (ANSWER, SET VARIABLE, HANGUP): the
protocol and event-loop cost. A STREAM FILE or GET DATA reply comes when the prompt ends or the digits are
keyed; their times are printed too but mostly measure the emulated prompt lengths.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from twisted.internet import defer, reactor, task  # noqa: E402
from twisted.internet.endpoints import serverFromString  # noqa: E402

from idtronic_tel.core.ports import CallKind, DigitsVerdict, IvrCall  # noqa: E402
from idtronic_tel.ivr.agi_server import AgiServerFactory, with_backlog  # noqa: E402
from idtronic_tel.ivr.call_flows import FlowSettings  # noqa: E402

LAST8 = "49927398"
INSTANT = {"ANSWER", "SET VARIABLE", "HANGUP", "GET VARIABLE"}
PHASES = {
    # 1,000 calls arriving over 10 s in real time; each lasts ~16 s, so all 1,000 are up together.
    "concurrency": {"sessions": 1000, "concurrency": 1000, "speed": 1.0, "ramp": 10.0},
    # Throughput: prompts compressed 20x, up to 1,000 in flight, 5,000 sessions in all.
    "throughput": {"sessions": 5000, "concurrency": 1000, "speed": 20.0, "ramp": 5.0},
    # Worst case: 1,000 connections in the same instant (every call's commands in lockstep).
    "burst": {"sessions": 1000, "concurrency": 1000, "speed": 4.0, "ramp": 0.0},
}


def rss_kib(field: str = "VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class BenchGateway:
    """Accepts any attempt: the bench measures the telephony side, not the database."""

    def __init__(self) -> None:
        self.verdicts: Counter[str] = Counter()
        self.ends: Counter[str] = Counter()

    def start_call(self, attempt_id: str) -> defer.Deferred[IvrCall | None]:
        return defer.succeed(IvrCall(attempt_id, CallKind.ENROLL, 3, None))

    def check_card_digits(self, attempt_id: str, last8: str) -> defer.Deferred[DigitsVerdict]:
        verdict = DigitsVerdict.ACCEPTED if last8 == LAST8 else DigitsVerdict.RETRY
        self.verdicts[verdict.value] += 1
        return defer.succeed(verdict)

    def end_call(self, attempt_id: str, reason: str) -> defer.Deferred[None]:
        self.ends[reason] += 1
        return defer.succeed(None)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def serve(args: argparse.Namespace) -> None:
    turnaround: dict[str, list[float]] = defaultdict(list)
    gateway = BenchGateway()
    factory = AgiServerFactory(
        reactor,
        gateway,
        FlowSettings(dtmf_timeout_ms=10000),
        command_timeout=60.0,
        language="fr",
        on_turnaround=lambda name, seconds: turnaround[name].append(seconds),
    )
    peak = {"active": 0, "rss_kib": 0}

    def sample() -> None:
        peak["active"] = max(peak["active"], factory.active)
        peak["rss_kib"] = max(peak["rss_kib"], rss_kib())

    def report() -> None:
        sample()
        instant = [s for name, values in turnaround.items() if name in INSTANT for s in values]
        print(
            json.dumps(
                {
                    "rss_start_kib": start_rss,
                    "rss_peak_sampled_kib": peak["rss_kib"],
                    "rss_hwm_kib": rss_kib("VmHWM"),
                    "max_active_sessions": peak["active"],
                    "cpu_s": cpu_seconds(),
                    "instant_commands": len(instant),
                    "instant_p50_ms": percentile(instant, 0.50) * 1000,
                    "instant_p99_ms": percentile(instant, 0.99) * 1000,
                    "instant_max_ms": max(instant, default=float("nan")) * 1000,
                    "by_command": {
                        name: {
                            "n": len(v),
                            "p50_ms": percentile(v, 0.5) * 1000,
                            "p99_ms": percentile(v, 0.99) * 1000,
                        }
                        for name, v in sorted(turnaround.items())
                    },
                    "verdicts": dict(gateway.verdicts),
                    "end_reasons": dict(gateway.ends),
                }
            ),
            flush=True,
        )

    start_rss = rss_kib()
    task.LoopingCall(sample).start(0.1)
    endpoint = serverFromString(reactor, with_backlog(args.listen, args.backlog))

    def listening(port: Any) -> None:
        print(f"PORT {port.getHost().port}", flush=True)

    endpoint.listen(factory).addCallback(listening)
    reactor.addSystemEventTrigger("before", "shutdown", report)
    reactor.run()


async def drive(args: argparse.Namespace) -> dict[str, Any]:
    from idtronic_tel.simulators.agi_options import EmulatorOptions, wav_durations
    from idtronic_tel.simulators.asterisk_agi import default_env, run_agi_channel
    from idtronic_tel.simulators.handset import Handset

    sounds = wav_durations(ROOT / "sounds" / "fr")
    options = EmulatorOptions(speed=args.speed, sounds=sounds, max_session_seconds=600)
    # Keys well inside the 5.35 s entry prompt (keyed during the welcome, they would barge in).
    welcome = sounds.get("idtronic-welcome", 16000) / 8000
    handset = Handset.scripted(f"w{welcome + 2.5:.2f}|d{LAST8}#")
    statuses: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    semaphore = defer.DeferredSemaphore(args.concurrency)

    async def one(i: int) -> None:
        # Language en: the server sets CHANNEL(language) (one more instant command per session).
        env = default_env("enroll", (f"bench-{i}",), language="en")
        try:
            statuses[await run_agi_channel(reactor, args.endpoint, env, handset, options)] += 1
        except Exception as exc:
            errors[type(exc).__name__] += 1

    async def arrive(i: int) -> None:
        await task.deferLater(reactor, i * args.ramp / args.sessions)
        await semaphore.run(lambda: defer.Deferred.fromCoroutine(one(i)))

    started = time.monotonic()
    await defer.gatherResults([defer.Deferred.fromCoroutine(arrive(i)) for i in range(args.sessions)])
    wall = time.monotonic() - started
    return {
        "sessions": args.sessions,
        "concurrency": args.concurrency,
        "speed": args.speed,
        "ramp": args.ramp,
        "statuses": dict(statuses),
        "errors": dict(errors),
        "wall_s": wall,
        "sessions_per_s": args.sessions / wall,
        "driver_rss_hwm_kib": rss_kib("VmHWM"),
        "driver_cpu_s": cpu_seconds(),
    }


def run_driver(args: argparse.Namespace) -> None:
    async def report() -> None:
        print(json.dumps(await drive(args)), flush=True)

    def main(_: Any) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(report())

    task.react(main)


def run_phase(name: str, backlog: int) -> dict[str, Any]:
    phase = PHASES[name]
    server = subprocess.Popen(
        [sys.executable, __file__, "server", "--backlog", str(backlog)], stdout=subprocess.PIPE, text=True
    )
    assert server.stdout is not None
    line = server.stdout.readline()
    if not line.startswith("PORT "):
        server.kill()
        raise SystemExit(f"server did not start: {line!r}")
    port = int(line.split()[1])
    try:
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "driver",
                "--endpoint",
                f"tcp:127.0.0.1:{port}",
                "--sessions",
                str(phase["sessions"]),
                "--concurrency",
                str(phase["concurrency"]),
                "--speed",
                str(phase["speed"]),
                "--ramp",
                str(phase["ramp"]),
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        driver = json.loads(out.strip().splitlines()[-1])
    finally:
        server.send_signal(signal.SIGTERM)
        stats_line = server.stdout.read().strip().splitlines()
        server.wait(timeout=30)
    return {"phase": name, "driver": driver, "server": json.loads(stats_line[-1])}


def summarize(result: dict[str, Any]) -> str:
    d, s = result["driver"], result["server"]
    mib = 1024
    by_command = ", ".join(
        f"{n} p50 {v['p50_ms']:.1f}/p99 {v['p99_ms']:.1f} ms (n={v['n']})" for n, v in s["by_command"].items()
    )
    return "\n".join(
        [
            f"phase {result['phase']}: {d['sessions']} sessions arriving over {d['ramp']:g} s, "
            f"at most {d['concurrency']} in flight, emulator speed x{d['speed']:g}",
            f"  AGISTATUS {d['statuses']} errors {d['errors']}; verdicts {s['verdicts']}; "
            f"end_call {s['end_reasons']}",
            f"  max sessions in progress on the server: {s['max_active_sessions']}",
            f"  server RSS: start {s['rss_start_kib'] / mib:.1f} MiB, peak {s['rss_hwm_kib'] / mib:.1f} MiB",
            f"  instant-command turnaround ({s['instant_commands']} commands): "
            f"p50 {s['instant_p50_ms']:.2f} ms, p99 {s['instant_p99_ms']:.2f} ms, "
            f"max {s['instant_max_ms']:.2f} ms",
            f"  by command: {by_command}",
            f"  wall {d['wall_s']:.1f} s, {d['sessions_per_s']:.0f} sessions/s",
            f"  CPU: server {s['cpu_s']:.1f} s ({s['cpu_s'] * 1000 / d['sessions']:.2f} ms/session), "
            f"emulator {d['driver_cpu_s']:.1f} s; emulator RSS peak {d['driver_rss_hwm_kib'] / mib:.0f} MiB",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="mode")
    p_server = sub.add_parser("server")
    p_server.add_argument("--listen", default="tcp:0:interface=127.0.0.1")
    p_server.add_argument("--backlog", type=int, default=2048)
    p_driver = sub.add_parser("driver")
    p_driver.add_argument("--endpoint", required=True)
    p_driver.add_argument("--sessions", type=int, default=1000)
    p_driver.add_argument("--concurrency", type=int, default=1000)
    p_driver.add_argument("--speed", type=float, default=4.0)
    p_driver.add_argument("--ramp", type=float, default=0.0, help="seconds over which sessions arrive")
    p_run = sub.add_parser("run")
    p_run.add_argument("--phase", choices=sorted(PHASES), action="append")
    p_run.add_argument("--backlog", type=int, default=2048)
    p_run.add_argument("--json", action="store_true", help="also print the raw results")
    args = parser.parse_args()
    if args.mode == "server":
        serve(args)
    elif args.mode == "driver":
        run_driver(args)
    else:
        phases = getattr(args, "phase", None) or list(PHASES)
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, pid {os.getpid()}", flush=True)
        for name in phases:
            result = run_phase(name, getattr(args, "backlog", 2048))
            print(summarize(result), flush=True)
            if getattr(args, "json", False):
                print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
