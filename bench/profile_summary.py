"""Summarise a py-spy raw profile (`py-spy record --format raw`, collapsed stacks): the share of samples
under each frame (inclusive), for the project's own functions and a few library ones that matter.

    .venv/bin/python bench/profile_summary.py PROFILE.txt [--top 40]
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
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
    return "reactor other"


def summarise(text: str, top: int = 40) -> str:
    inclusive: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue  # blank, or cut short when py-spy was stopped
        n = int(count)
        total += n
        frames = [_LINE.sub(")", f) for f in stack.split(";")]
        threads["database threads" if frames[0].startswith("Thread._bootstrap") else "reactor thread"] += n
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
    args = parser.parse_args()
    print(summarise(args.profile.read_text(), args.top))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
