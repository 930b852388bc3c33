"""CPU per message of the SMPP edge alone: smpp_bench.py's "ours, window 100" against the SMSC answering at
once, `--rounds` times, with nothing else in the process (for A/B runs and instruction counts).

    .venv/bin/python bench/smpp_edge_cpu.py [--messages 3000] [--rounds 3]

Load-independent figure (instructions, user space, the SMSC excluded: valgrind does not follow children):
the difference between two message counts cancels start-up, bind and unbind.

    valgrind --tool=callgrind --callgrind-out-file=/dev/null .venv/bin/python bench/smpp_edge_cpu.py \
        --messages 300 --rounds 1     # then --messages 1300; (Ir_1300 - Ir_300) / 1000 per message
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from smpp_bench import Smsc, ours
from twisted.internet import defer, task


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    async def run(reactor: Any) -> None:
        cpu = []
        for _ in range(args.rounds):
            smsc = Smsc(0)
            try:
                ours_before, node_before = time.process_time(), smsc.cpu_seconds()
                outbox = await ours(reactor, smsc.port, args.messages, 100)
                cpu.append(1e6 * (time.process_time() - ours_before) / args.messages)
                node = 1e6 * (smsc.cpu_seconds() - node_before) / args.messages
            finally:
                smsc.close()
            rate = args.messages / (outbox.last_receipt - outbox.first_claim)
            print(f"ours {cpu[-1]:.1f} µs/message, SMSC {node:.1f} µs/message, {rate:.0f} msg/s", flush=True)
        print(f"median of {args.rounds}: ours {statistics.median(cpu):.1f} µs of CPU per message", flush=True)

    task.react(lambda reactor: defer.ensureDeferred(run(reactor)))


if __name__ == "__main__":
    main()
