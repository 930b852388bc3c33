"""`[daemon] workers = 2`: a real `idtronic-tel run` (worker 0) and the worker it starts, sharing the HTTP
port, the database and the node-smpp SMSC (tests/smsc_fixture), with two binds, one per worker.

Both workers serve payments (each connection is asked which worker holds it, /healthz `worker`), every
SMS reaches the SMSC exactly once whichever worker created it, kill -9 of worker 1 gets it restarted with
nothing lost, and SIGTERM (or kill -9) to worker 0 leaves no process behind.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from sqlalchemy import select
from twisted.internet import reactor, threads

from idtronic_tel.config_schema import Config
from idtronic_tel.core import callbacks, enrollment, merchants
from idtronic_tel.core.cards import luhn_check_digit
from idtronic_tel.core.db import DBPool, make_engine
from idtronic_tel.core.models import SmsMessage
from idtronic_tel.core.rules import Rules
from idtronic_tel.core.states import EndReason
from idtronic_tel.daemon import core_rules
from tests.fakes_smpp import NodeSmsc, node_or_skip
from tests.faultharness import DaemonProcess, Outbox, prepared, wait_for, write_config

pytestmark = pytest.mark.node

CARDHOLDERS = 20
PER_WORKER = 15  # payments created through each worker, per round


def activate(s: Any, rules: Rules, count: int) -> list[str]:
    """`count` cardholders, each enrolled and its callback answered with the right digits."""
    identifiers = []
    for number in range(count):
        first8, last7 = f"4{number:07d}", f"{number:07d}"
        fields = {
            "last_name": "Martin",
            "first_name": "Claire",
            "birth_date": "1985-04-12",
            "mobile": f"+336100{number:05d}",
            "card_first8": first8,
        }
        identifiers.append(enrollment.enroll(s, rules, fields, "web", "cardholder").identifier)
        (job,) = callbacks.claim_due(s, rules, "test-setup", 1)
        callbacks.start_call(s, rules, job.attempt_id)
        digits = last7 + luhn_check_digit(first8 + last7)
        assert callbacks.check_card_digits(s, rules, job.attempt_id, digits) == "accepted"
        callbacks.end_call(s, rules, job.attempt_id, EndReason.COMPLETED)
    return identifiers


def setup_data(url: str, config: Config) -> tuple[str, list[str]]:
    """A merchant's API key and active cardholders."""
    rules = core_rules(config)
    pool = DBPool(None, make_engine(url, pool_size=1), 1)  # type: ignore[arg-type]  # run_blocking only
    try:
        holders = pool.run_blocking(activate, rules, CARDHOLDERS)
        return pool.run_blocking(merchants.add, rules, "Boutique", None).api_key, holders
    finally:
        pool.engine.dispose()


class Client:
    """One keep-alive connection to the daemon's port, and the worker that accepted it."""

    def __init__(self, address: str, key: str) -> None:
        self.conn = http.client.HTTPConnection(address, timeout=10)
        self.key = key
        self.worker = self.call("GET", "/healthz")[1]["worker"]

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        headers = {"authorization": f"Bearer {self.key}", "content-type": "application/json"}
        self.conn.request(method, path, json.dumps(body) if body is not None else None, headers)
        response = self.conn.getresponse()
        return response.status, json.loads(response.read())


def clients_of_each_worker(address: str, key: str, count: int = 2) -> dict[int, Client]:
    """Connections until each of the `count` workers holds one (the kernel picks the accepting worker)."""
    found: dict[int, Client] = {}
    for _ in range(100 * count):
        client = Client(address, key)
        if client.worker["index"] in found:
            client.conn.close()
        else:
            found[client.worker["index"]] = client
        if len(found) == count:
            break
    return found  # one only while the other is not running


def create_payments(address: str, key: str, holders: list[str], tag: str) -> dict[int, int]:
    """PER_WORKER payments through each worker; worker index -> pid that created them."""
    pids = {}
    clients = clients_of_each_worker(address, key)
    assert sorted(clients) == [0, 1], f"only workers {sorted(clients)} accept connections"
    for index, client in clients.items():
        for i in range(PER_WORKER):
            body = {"identifier": holders[(index * PER_WORKER + i) % len(holders)], "amount": 1000 + i}
            status, answer = client.call(
                "POST", "/v1/payments", {**body, "currency": "EUR", "reference": tag}
            )
            assert status == 201, answer
        pids[index] = client.worker["pid"]
        client.conn.close()
    return pids


def health_by_worker(address: str, key: str) -> dict[int, dict[str, Any]]:
    return {i: c.call("GET", "/healthz")[1] for i, c in clients_of_each_worker(address, key).items()}


async def each_bind_up(daemon: DaemonProcess, key: str) -> bool:
    health = await threads.deferToThread(health_by_worker, daemon.url, key)
    links = {i: h["links"]["smpp"] for i, h in health.items()}  # {0: ...} while worker 1 starts
    return links == {0: {"node1": "bound"}, 1: {"node2": "bound"}}


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"  # reaped by nobody yet: not running


def payment_sms(s: Any) -> Counter[str]:
    return Counter(s.scalars(select(SmsMessage.state).where(SmsMessage.payment_id.is_not(None))))


@pytest_twisted.ensureDeferred
async def test_two_workers_serve_http_send_each_sms_once_survive_kill_9_and_stop_together(
    db_url: str, tmp_path: Path
) -> None:
    smsc = NodeSmsc(reactor, node_or_skip())
    await smsc.start().addTimeout(20, reactor)
    config_file = tmp_path / "idtronic.toml"
    bind = {"endpoint": smsc.endpoint, "system_id": "test", "password": "secret"}
    write_config(
        config_file,
        db_url,
        daemon={"workers": 2},
        api={"merchant_requests_per_minute": 100000, "merchant_payments_per_minute": 100000},
        tokens={"per_cardholder_limit": 100},
        callback={"first_call_delay": 0, "calling_hours": "00:00-24:00"},
        smpp={"response_timeout": 5, "poll_interval": 0.1, "reconnect_max_delay": 1},
    )
    # Two [[smpp.bind]] tables (write_config writes one per section name).
    binds = [
        f'[[smpp.bind]]\nname = "node{n}"\n' + "".join(f'{k} = "{v}"\n' for k, v in bind.items())
        for n in (1, 2)
    ]
    config_file.write_text(config_file.read_text() + "\n" + "\n".join(binds))
    config = prepared(config_file, tmp_path / "data")
    key, holders = await threads.deferToThread(setup_data, db_url, config)
    daemon = DaemonProcess(tmp_path, "daemon", config_file, tmp_path / "data")
    outbox = Outbox(db_url)
    try:
        daemon.start()
        await daemon.ready()
        await wait_for(lambda: each_bind_up(daemon, key), "bind k up in worker k mod 2", 20)
        health = await threads.deferToThread(health_by_worker, daemon.url, key)
        assert "fastagi" in health[0]["listeners"] and "fastagi" not in health[1]["listeners"]

        first = await threads.deferToThread(create_payments, daemon.url, key, holders, "round-1")
        assert first[0] == daemon.pid and first[1] != daemon.pid
        # Settled first: a worker killed with a submit answered but not yet recorded sends it again on
        # restart (the crash policy, tests/test_smpp_faults.py); here each SMS must arrive exactly once.
        await wait_for(lambda: outbox.settled(frozenset({"delivered"})), "the first round delivered", 60)

        os.kill(first[1], signal.SIGKILL)  # worker 1, kill -9: worker 0 starts another
        await wait_for(lambda: gone(first[1]), "worker 1 to die")
        await wait_for(lambda: each_bind_up(daemon, key), "worker 1 restarted, bound", 30)
        second = await threads.deferToThread(create_payments, daemon.url, key, holders, "round-2")
        assert second[0] == daemon.pid and second[1] not in (first[1], daemon.pid)

        await wait_for(lambda: outbox.settled(frozenset({"delivered"})), "every SMS delivered", 60)
        assert await outbox.run(payment_sms) == {"delivered": 4 * PER_WORKER}
        accepted = Counter(s["destination"] for s in smsc.submits())
        assert sum(accepted.values()) == 4 * PER_WORKER  # each SMS once: none lost, none twice

        await daemon.stop()  # SIGTERM to worker 0
        assert daemon.proc is not None and daemon.proc.returncode == 0
        await wait_for(lambda: gone(second[1]), "worker 1 to stop with worker 0", 10)
    finally:
        await daemon.stop()
        outbox.close()
        await smsc.stop()


@pytest_twisted.ensureDeferred
async def test_a_worker_stops_when_worker_0_is_killed_and_a_dead_worker_0_leaves_no_process(
    sqlite_url: str, tmp_path: Path
) -> None:
    """kill -9 of worker 0 gives it no chance to stop the others: the kernel sends them SIGTERM (they
    asked for it at start, supervisor.die_with_parent), and they stop, orphans for an instant only."""
    config_file = tmp_path / "idtronic.toml"
    write_config(config_file, sqlite_url, daemon={"workers": 3})
    prepared(config_file, tmp_path / "data")
    daemon = DaemonProcess(tmp_path, "daemon", config_file, tmp_path / "data")
    try:
        daemon.start()
        await daemon.ready()
        workers: dict[int, int] = {}

        async def all_up() -> bool:
            for index, client in (
                await threads.deferToThread(clients_of_each_worker, daemon.url, "", 3)
            ).items():
                workers[index] = client.worker["pid"]
                client.conn.close()
            return len(workers) == 3

        await wait_for(all_up, "three workers answering", 30)
        await daemon.kill()
        for index in (1, 2):
            await wait_for(lambda pid=workers[index]: gone(pid), f"worker {index} to stop", 15)
    finally:
        await daemon.stop()
