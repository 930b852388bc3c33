"""SMPP throughput: idtronic-tel's client against node-smpp 0.5.1 (tests/smsc_fixture) on loopback.

One run measures, each against a fresh SMSC, with the SMSC answering submit_sm at once and then 20 ms late
(what a real operator's SMSC does, docs/protocols/SMPP.md "Benchmarking an SMPP client"):
  * ours, window 1 / 10 / 100 (the whole edge: worker, binds, receipts, with an in-memory outbox);
  * smpplib's blocking client, one submit_sm at a time (the design of Jasmin's connector), TCP_NODELAY;
  * the SMSC's ceiling: smpplib-encoded PDUs from a plain socket with 100 in flight and TCP_NODELAY.
Rate = messages / (first submit_sm -> last delivery receipt). Then a run with max_tps set, to check that
the per-bind cap holds (achieved rate of submit_sm_resp over the run).

    .venv/bin/python bench/smpp_bench.py [--messages 2000] [--delayed-messages 300] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from smpplib import client as smpplib_client  # noqa: E402
from smpplib import consts as smpplib_consts  # noqa: E402
from twisted.internet import defer, task  # noqa: E402
from twisted.internet.defer import Deferred, succeed  # noqa: E402

from idtronic_tel.config_schema import SmppBindConfig, SmppConfig  # noqa: E402
from idtronic_tel.core.ports import OutgoingSms, Recovered  # noqa: E402
from idtronic_tel.smpp import codec  # noqa: E402
from idtronic_tel.smpp.service import makeSmppService  # noqa: E402

FIXTURE = ROOT / "tests" / "smsc_fixture" / "server.js"
TEXT = "id-tronic : code 483920 pour payer 49,90 EUR chez Boutique Exemple. Valable 5 min."


class Smsc:
    """node server.js in quiet mode (no line per message: its stdout would cost the SMSC time)."""

    def cpu_seconds(self) -> float:
        """CPU time node has used so far (Linux /proc; 0 elsewhere)."""
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def __init__(self, submit_delay_ms: int) -> None:
        self.process = subprocess.Popen(
            ["node", str(FIXTURE), "--quiet", "1", "--submit-delay", str(submit_delay_ms)],
            stdout=subprocess.PIPE,
            cwd=FIXTURE.parent,
        )
        assert self.process.stdout is not None
        self.port = json.loads(self.process.stdout.readline())["port"]

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(10)


# ---------------------------------------------------------------------------------------------------------
# smpplib, blocking, one at a time


def smpplib_one_at_a_time(port: int, count: int) -> float:
    client = smpplib_client.Client("127.0.0.1", port, timeout=30, allow_unknown_opt_params=True)
    receipts = 0

    def on_message(pdu: Any, **kwargs: Any) -> None:
        nonlocal receipts
        receipts += 1

    client.set_message_received_handler(on_message)
    client.connect()
    assert client._socket is not None
    client._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client.bind_transceiver(system_id="test", password="secret")
    start = time.perf_counter()
    for _ in range(count):
        client.send_message(
            source_addr_ton=5,
            source_addr="IDTRONIC",
            dest_addr_ton=1,
            dest_addr_npi=1,
            destination_addr="33611223344",
            short_message=TEXT.encode(),
            registered_delivery=1,
        )
        while True:  # wait for this submit's response (receipts of earlier ones may come first)
            pdu = client.read_pdu()
            if pdu.command == "submit_sm_resp":
                break
            if pdu.command == "deliver_sm":
                client._message_received(pdu)
    while receipts < count:
        client.read_once()
    elapsed = time.perf_counter() - start
    client.unbind()
    client.disconnect()
    return count / elapsed


# ---------------------------------------------------------------------------------------------------------
# the SMSC's ceiling: pre-encoded PDUs, a window, TCP_NODELAY, minimal parsing


def smsc_ceiling(port: int, count: int, window: int = 100) -> float:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    framer = codec.SmppCodec()
    sock.sendall(
        codec.encode(
            "bind_transceiver",
            1,
            system_id="test",
            password="secret",
            system_type="",
            addr_ton=0,
            addr_npi=0,
            address_range="",
        )
    )
    while not framer.receive_data(sock.recv(4096)):
        pass
    submits = [
        codec.encode(
            "submit_sm",
            2 + i,
            service_type="",
            source_addr_ton=5,
            source_addr_npi=0,
            source_addr="IDTRONIC",
            dest_addr_ton=1,
            dest_addr_npi=1,
            destination_addr="33611223344",
            registered_delivery=1,
            data_coding=smpplib_consts.SMPP_ENCODING_DEFAULT,
            short_message=TEXT.encode(),
        )
        for i in range(count)
    ]
    sent = answered = receipts = 0
    buffer = bytearray()
    start = time.perf_counter()
    while receipts < count:
        if sent < count and sent - answered < window:
            burst = min(count - sent, window - (sent - answered))
            sock.sendall(b"".join(submits[sent : sent + burst]))
            sent += burst
        buffer += sock.recv(65536)
        offset = 0
        replies = []
        while len(buffer) - offset >= 16:
            length, command_id, _status, sequence = struct.unpack_from(">LLLL", buffer, offset)
            if len(buffer) - offset < length:
                break
            offset += length
            if command_id == 0x80000004:
                answered += 1
            elif command_id == 0x00000005:
                receipts += 1
                replies.append(struct.pack(">LLLLB", 17, 0x80000005, 0, sequence, 0))
        del buffer[:offset]
        if replies:
            sock.sendall(b"".join(replies))
    elapsed = time.perf_counter() - start
    sock.close()
    return count / elapsed


# ---------------------------------------------------------------------------------------------------------
# ours


class BenchOutbox:
    """SmsOutbox in memory with O(1) operations, timing the first claim and the last receipt."""

    def __init__(self) -> None:
        self.queued: list[OutgoingSms] = []
        self.by_message_id: dict[str, int] = {}
        self.delivered = 0
        self.expected = 0
        self.first_claim = 0.0
        self.last_receipt = 0.0
        self.submitted_at: list[float] = []
        self.done: Deferred[None] = Deferred()
        self.callbacks: list[Callable[[], None]] = []

    def add(self, count: int) -> None:
        expires = datetime.now(UTC) + timedelta(minutes=5)
        self.queued = [OutgoingSms(i, "+33611223344", TEXT, expires, "payment") for i in range(count)]
        self.queued.reverse()
        self.expected = count
        for callback in self.callbacks:
            callback()

    def claim(self, worker: str, limit: int, lease: float) -> Deferred[list[OutgoingSms]]:
        if not self.first_claim and self.queued:
            self.first_claim = time.perf_counter()
        batch = [self.queued.pop() for _ in range(min(limit, len(self.queued)))]
        return succeed(batch)

    def renew(self, worker: str, sms_ids: list[int], lease: float) -> Deferred[list[int]]:
        return succeed(sms_ids)

    def mark_submitted(
        self, worker: str, sms_id: int, message_ids: list[str], bind: str, resends: int
    ) -> Deferred[None]:
        self.submitted_at.append(time.perf_counter())
        for message_id in message_ids:
            self.by_message_id[message_id] = sms_id
        return succeed(None)

    def _unexpected(self, *args: Any) -> Deferred[None]:
        raise AssertionError(f"unexpected outcome {args}")

    mark_retry = mark_undeliverable = mark_in_doubt = _unexpected

    def mark_expired(self, worker: str, sms_id: int, resends: int) -> Deferred[None]:
        raise AssertionError("expired")

    def recover(self, worker: str) -> Deferred[Recovered]:
        return succeed(Recovered())

    def recover_stale(self, worker: str, held: list[int]) -> Deferred[Recovered]:
        return succeed(Recovered())

    def apply_receipt(self, message_id: str, state: str) -> Deferred[bool]:
        if self.by_message_id.pop(message_id, None) is None:
            return succeed(False)
        self.delivered += 1
        if self.delivered == self.expected:
            self.last_receipt = time.perf_counter()
            self.done.callback(None)
        return succeed(True)

    def on_new_work(self, callback: Callable[[], None]) -> None:
        self.callbacks.append(callback)


async def ours(reactor: Any, port: int, count: int, window: int, max_tps: float = 1e6) -> BenchOutbox:
    outbox = BenchOutbox()
    config = SmppConfig(
        binds=(
            SmppBindConfig(
                name="bench",
                endpoint=f"tcp:127.0.0.1:{port}",
                system_id="test",
                password="secret",
                window=window,
                max_tps=max_tps,
            ),
        ),
        poll_interval=1.0,
    )
    service = makeSmppService(config, outbox, "bench", reactor=reactor)
    service.startService()
    bind = service.binds[0]
    while not bind.bound:  # bind before timing
        await task.deferLater(reactor, 0.01, lambda: None)
    outbox.add(count)
    await outbox.done.addTimeout(600, reactor)
    await service.stopService()
    return outbox


# ---------------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--delayed-messages", type=int, default=300, help="window-1 runs with 20 ms delay")
    parser.add_argument("--cap-tps", type=float, default=200.0)
    parser.add_argument("--cap-messages", type=int, default=1000)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    n, n_slow = args.messages, args.delayed_messages
    results: dict[str, float] = {}

    def with_smsc(delay: int, run: Callable[[int], float]) -> float:
        smsc = Smsc(delay)
        try:
            return run(smsc.port)
        finally:
            smsc.close()

    for delay in (0, 20):
        count = n if delay == 0 else n_slow
        results[f"smpplib_one_at_a_time_{delay}ms"] = with_smsc(
            delay, lambda p, count=count: smpplib_one_at_a_time(p, count)
        )
        smsc = Smsc(delay)
        try:
            node_before = smsc.cpu_seconds()
            results[f"ceiling_window100_{delay}ms"] = smsc_ceiling(smsc.port, n, 100)
            results[f"cpu_us_smsc_in_ceiling_{delay}ms"] = 1e6 * (smsc.cpu_seconds() - node_before) / n
        finally:
            smsc.close()

    async def ours_all(reactor: Any) -> None:
        for delay in (0, 20):
            for window in (1, 10, 100):
                count = n_slow if (window == 1 and delay) else n
                smsc = Smsc(delay)
                try:
                    ours_before, node_before = time.process_time(), smsc.cpu_seconds()
                    outbox = await ours(reactor, smsc.port, count, window)
                    ours_cpu = time.process_time() - ours_before
                    node_cpu = smsc.cpu_seconds() - node_before
                finally:
                    smsc.close()
                results[f"ours_window{window}_{delay}ms"] = count / (outbox.last_receipt - outbox.first_claim)
                if window == 100:  # CPU per message (ours: bind and unbind included)
                    results[f"cpu_us_ours_{delay}ms"] = 1e6 * ours_cpu / count
                    results[f"cpu_us_smsc_with_ours_{delay}ms"] = 1e6 * node_cpu / count
        smsc = Smsc(0)
        try:
            outbox = await ours(reactor, smsc.port, args.cap_messages, 10, max_tps=args.cap_tps)
        finally:
            smsc.close()
        times = outbox.submitted_at
        results["cap_target_tps"] = args.cap_tps
        results["cap_achieved_tps"] = (len(times) - 1) / (times[-1] - times[0])
        print(report(results))
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))

    task.react(lambda reactor: defer.ensureDeferred(ours_all(reactor)))  # exits the process
    return 0


def report(results: dict[str, float]) -> str:
    lines = [
        f"node {subprocess.run(['node', '--version'], capture_output=True, text=True).stdout.strip()}, "
        f"python {sys.version.split()[0]}, {os.cpu_count()} cores"
    ]
    lines.append(f"{'run':<34}{'no delay':>12}{'20 ms':>12}   (msg/s, submit -> receipt)")
    for name in (
        "smpplib_one_at_a_time",
        "ceiling_window100",
        "ours_window1",
        "ours_window10",
        "ours_window100",
    ):
        lines.append(f"{name:<34}{results[name + '_0ms']:>12.0f}{results[name + '_20ms']:>12.0f}")
    for delay in ("0ms", "20ms"):
        lines.append(
            f"ratio ours w100 / one-at-a-time ({delay}): "
            f"{results['ours_window100_' + delay] / results['smpplib_one_at_a_time_' + delay]:.1f}x"
        )
        lines.append(
            f"ratio ours w100 / SMSC ceiling ({delay}): "
            f"{100 * results['ours_window100_' + delay] / results['ceiling_window100_' + delay]:.0f} %"
        )
    for delay in ("0ms", "20ms"):
        lines.append(
            f"CPU per message, window 100 ({delay}): ours {results['cpu_us_ours_' + delay]:.0f} µs, "
            f"SMSC {results['cpu_us_smsc_with_ours_' + delay]:.0f} µs "
            f"(SMSC in the ceiling run: {results['cpu_us_smsc_in_ceiling_' + delay]:.0f} µs)"
        )
    achieved, target = results["cap_achieved_tps"], results["cap_target_tps"]
    error = 100 * (achieved / target - 1)
    lines.append(f"per-bind cap: max_tps={target:.0f}, achieved {achieved:.1f}/s ({error:+.2f} %)")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
