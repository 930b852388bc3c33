"""Summarise a py-spy raw profile (`py-spy record --format raw`, collapsed stacks): the share of samples
under each frame (inclusive), for the project's own functions and a few library ones that matter.

    .venv/bin/python bench/profile_summary.py PROFILE.txt [--top 40] [--cpu-ms 2.5]
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

LIBRARY = (
    "Session.commit",
    "Connection.execute",
    "Session.execute",
    "HTTPChannel.dataReceived",
    "Request.write",
    "deferToThreadPool",
    "ReactorBase.callFromThread",
    "_UnixWaker.wakeUp",
)
_LINE = re.compile(r":\d+\)")


def _area(frames: list[str]) -> str:
    """Database threads: the domain function the pool ran; reactor thread: SMPP edge, HTTP, or other."""
    if frames[0].startswith("Thread._bootstrap"):
        for index, frame in enumerate(frames[:-1]):
            if frame.startswith("DBPool._once "):
                return "db:" + frames[index + 1].split(" (")[0]
        return "db:other"
    if any("(idtronic_tel/smpp/" in f for f in frames):
        return "smpp edge"
    if any("(idtronic_tel/api/" in f or "(twisted/web/" in f for f in frames):
        return "http"
    if frames[0].startswith("<module> "):
        return "reactor other"  # epoll, dispatch to protocols, Deferreds, timers
    # py-spy (--nonblocking) read a stack that was changing and could not unwind it to its root; the
    # leaves show mostly database work (driver, SQLAlchemy, token draws).
    return "partial stack"


def _stacks(text: str) -> Iterator[tuple[list[str], int]]:
    """Each stack of the profile (frames from the root, line numbers dropped) and its sample count."""
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if count.isdigit():  # else blank, or cut short when py-spy was stopped
            yield [_LINE.sub(")", f) for f in stack.split(";")], int(count)


def area_samples(text: str) -> Counter[str]:
    """Samples per area (see `_area`)."""
    areas: Counter[str] = Counter()
    for frames, n in _stacks(text):
        areas[_area(frames)] += n
    return areas


def per_payment(text: str, cpu_ms: float) -> str:
    """The daemon's CPU per payment (`cpu_ms`, measured) shared out by the profile's areas. py-spy's
    `--gil` samples only the thread holding the interpreter lock, so the kernel's part (sockets, epoll,
    futexes) and C code that releases the lock are spread in proportion: an estimate, not a measure."""
    areas = area_samples(text)
    total = sum(areas.values())
    if not total:
        return "no samples"
    parts = ", ".join(f"{k} {v / total * cpu_ms * 1000:.0f}" for k, v in areas.most_common())
    return f"daemon CPU per payment, {cpu_ms:.2f} ms, by area (µs): {parts}"


def summarise(text: str, top: int = 40) -> str:
    inclusive: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    total = 0
    for frames, n in _stacks(text):
        total += n
        root = frames[0]
        threads[
            "database threads"
            if root.startswith("Thread._bootstrap")
            else "reactor thread"
            if root.startswith("<module> ")
            else "partial stacks"
        ] += n
        areas[_area(frames)] += n
        for frame in set(frames):
            inclusive[frame] += n
    if not total:
        return "no samples"
    lines = [f"{total} samples; " + ", ".join(f"{k} {v / total:.0%}" for k, v in threads.most_common())]
    lines.append("by area: " + ", ".join(f"{k} {v / total:.1%}" for k, v in areas.most_common()))
    mine = [
        (frame, n)
        for frame, n in inclusive.most_common()
        if "(idtronic_tel/" in frame or frame.split(" (")[0] in LIBRARY
    ]
    for frame, n in mine[:top]:
        lines.append(f"{n / total:6.1%}  {frame}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--cpu-ms", type=float, help="the daemon's CPU per payment: shared out by area")
    args = parser.parse_args()
    text = args.profile.read_text()
    print(summarise(text, args.top))
    if args.cpu_ms:
        print(per_payment(text, args.cpu_ms))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
