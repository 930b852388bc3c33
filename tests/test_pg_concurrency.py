"""Concurrent confirms against two real daemons sharing one PostgreSQL database.

Two `idtronic-tel run` processes (each on its own loopback HTTP and AGI port, same database, same data
directory and keys, no AMI, no SMPP) serve one merchant; a cardholder is activated directly through the
core; payments are created over HTTP and their tokens read from the SMS outbox (messages stay queued:
there is no SMPP bind). Then 100 (or 50) confirms leave 4 separate OS processes at the same instant (a
multiprocessing barrier; every connection is opened before it), spread over both daemons.

The row lock in `payments.confirm` must make exactly one of them win, and wrong tokens must be counted
exactly `tokens.max_attempts` times however many race.
"""

from __future__ import annotations

import http.client
import json
import multiprocessing
import os
import re
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from idtronic_tel.config import load_config, prepare_data_dir
from idtronic_tel.config_schema import Config
from idtronic_tel.core import callbacks, enrollment, merchants
from idtronic_tel.core.cards import luhn_check_digit
from idtronic_tel.core.db import DBPool, make_engine
from idtronic_tel.core.models import Payment, SmsMessage
from idtronic_tel.core.rules import Rules
from idtronic_tel.core.states import EndReason
from idtronic_tel.daemon import core_rules

pytestmark = pytest.mark.postgres

DAEMON = Path(sys.executable).with_name("idtronic-tel")
CONFIRMS = 100  # the right token, raced: exactly one 200 (issue 9)
VOLLEY = 50  # the other races
PROCESSES = 4
READY_WITHIN = 30.0  # seconds for both daemons to answer /healthz
MAX_ATTEMPTS = 3  # tokens.max_attempts, written in the configuration below


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _clean_environ() -> dict[str, str]:
    """The test runner's environment without IDTRONIC_* (an unknown one would be a configuration error)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("IDTRONIC_")}


# ---- the two daemons ------------------------------------------------------------------------------------
@dataclass
class Cluster:
    config: Config
    urls: list[str]
    pool: DBPool
    rules: Rules
    api_key: str


def _write_config(path: Path, database_url: str) -> None:
    path.write_text(
        f"""
[database]
url = "{database_url}"
pool_threads = 4

[tokens]
lifetime = 600
max_attempts = {MAX_ATTEMPTS}

[callback]
first_call_delay = 0
calling_hours = "00:00-24:00"
"""
    )


def _wait_ready(procs: list[subprocess.Popen[bytes]], urls: list[str], logs: list[Path]) -> None:
    deadline = time.monotonic() + READY_WITHIN
    pending = dict(enumerate(urls))
    while pending:
        for index, url in list(pending.items()):
            if procs[index].poll() is not None:
                tail = logs[index].read_text()[-3000:]
                pytest.fail(f"daemon {index} exited with {procs[index].returncode}:\n{tail}")
            try:
                status, _ = _request(url, "GET", "/healthz")
            except OSError:
                continue
            if status == 200:
                del pending[index]
        if pending and time.monotonic() > deadline:
            tails = "\n".join(logs[i].read_text()[-2000:] for i in pending)
            pytest.fail(f"daemons {sorted(pending)} not ready within {READY_WITHIN} s:\n{tails}")
        if pending:
            time.sleep(0.05)  # polling interval of the readiness probe, not a synchronisation


@pytest.fixture
def cluster(pg_url: str, tmp_path: Path) -> Iterator[Cluster]:
    config_file = tmp_path / "idtronic.toml"
    _write_config(config_file, pg_url)
    data_dir = tmp_path / "data"
    environ = _clean_environ()
    # Keys are created here, once, before either daemon starts: two first starts would race on them.
    prepare_data_dir(data_dir, config_file, {})
    config = load_config(config_file, data_dir, {})
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []
    urls: list[str] = []
    pool = DBPool(None, make_engine(pg_url, pool_size=2), 1)  # type: ignore[arg-type]  # run_blocking only
    try:
        for index in range(2):
            port = _free_port()
            env = {
                **environ,
                "IDTRONIC_HTTP_LISTEN": f"tcp:{port}:interface=127.0.0.1",
                "IDTRONIC_AGI_LISTEN": f"tcp:{_free_port()}:interface=127.0.0.1",
                "IDTRONIC_HTTP_METRICS_LISTEN": "tcp:0:interface=127.0.0.1",
            }
            log = tmp_path / f"daemon{index}.log"
            logs.append(log)
            with log.open("wb") as out:
                procs.append(
                    subprocess.Popen(
                        [str(DAEMON), "--config", str(config_file), "--data-dir", str(data_dir), "run"],
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        cwd=tmp_path,
                    )
                )
            urls.append(f"127.0.0.1:{port}")
        _wait_ready(procs, urls, logs)
        rules = core_rules(config)
        added = pool.run_blocking(merchants.add, rules, "Boutique Concurrente", None)
        yield Cluster(config, urls, pool, rules, added.api_key)
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait(timeout=10)
        pool.engine.dispose()


# ---- fixtures of the product, through the core and over HTTP -------------------------------------------
def _activate(s: Any, rules: Rules, number: int) -> str:
    """Enroll cardholder `number` (its own card) and run its callback to the accepted digits."""
    first8 = "4" + f"{number:07d}"
    last7 = f"{number:07d}"
    last8 = last7 + luhn_check_digit(first8 + last7)
    fields = {
        "last_name": "Martin",
        "first_name": "Claire",
        "birth_date": "1985-04-12",
        "mobile": "06 11 22 33 44",
        "card_first8": first8,
    }
    identifier = enrollment.enroll(s, rules, fields, "web", "cardholder").identifier
    jobs = callbacks.claim_due(s, rules, "test-setup", 1)
    assert len(jobs) == 1, "the callback of the new cardholder is not due"
    assert callbacks.start_call(s, rules, jobs[0].attempt_id) is not None
    assert callbacks.check_card_digits(s, rules, jobs[0].attempt_id, last8) == "accepted"
    callbacks.end_call(s, rules, jobs[0].attempt_id, EndReason.COMPLETED)
    return str(identifier)


def _payment(cluster: Cluster, number: int) -> tuple[str, str]:
    """A pending payment for a fresh active cardholder: (payment id, its token from the SMS outbox)."""
    identifier = cluster.pool.run_blocking(_activate, cluster.rules, number)
    status, body = _request(
        cluster.urls[0],
        "POST",
        "/v1/payments",
        {"identifier": identifier, "amount": 1999, "currency": "EUR", "reference": f"order-{number}"},
        cluster.api_key,
    )
    assert status == 201, body
    assert body["status"] == "pending"

    def token(s: Any, rules: Rules) -> str:
        blob = s.scalar(select(SmsMessage.body_enc).where(SmsMessage.payment_id == body["id"]))
        match = re.search(r"code (\d{6})", rules.vault.decrypt("sms", blob))
        assert match, "no token in the queued SMS"
        return match.group(1)

    return body["id"], cluster.pool.run_blocking(token, cluster.rules)


def _wrong(token: str) -> str:
    return f"{(int(token) + 1) % 1_000_000:06d}"


def _stored(cluster: Cluster, payment_id: str) -> tuple[str, int]:
    def read(s: Any) -> tuple[str, int]:
        payment = s.get(Payment, payment_id)
        return payment.status, payment.wrong_tokens

    return cluster.pool.run_blocking(read)


# ---- HTTP ---------------------------------------------------------------------------------------------
def _request(host: str, method: str, path: str, body: Any = None, key: str | None = None) -> tuple[int, Any]:
    conn = http.client.HTTPConnection(host, timeout=10)
    try:
        _send(conn, method, path, body, key)
        return _read(conn)
    finally:
        conn.close()


def _send(conn: http.client.HTTPConnection, method: str, path: str, body: Any, key: str | None) -> None:
    headers = {"content-type": "application/json"}
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    conn.request(method, path, None if body is None else json.dumps(body).encode(), headers)


def _read(conn: http.client.HTTPConnection) -> tuple[int, Any]:
    answer = conn.getresponse()
    raw = answer.read()
    return answer.status, json.loads(raw) if raw else None


def _volley_worker(barrier: Any, results: Any, jobs: list[tuple[int, str, str, str]], key: str) -> None:
    """One OS process: open a connection per job, wait for the others, send every request, then read
    every answer. jobs: (index, host, payment id, token)."""
    try:
        conns = []
        for _, host, _, _ in jobs:
            conn = http.client.HTTPConnection(host, timeout=30)
            conn.connect()
            conns.append(conn)
        barrier.wait(timeout=30)
        for conn, (_, _, payment_id, token) in zip(conns, jobs, strict=True):
            _send(conn, "POST", f"/v1/payments/{payment_id}/confirm", {"token": token}, key)
        out = [(index, *_read(conn)) for conn, (index, _, _, _) in zip(conns, jobs, strict=True)]
        for conn in conns:
            conn.close()
        results.put(out)
    except BaseException as exc:  # reported to the test, which fails with it
        results.put([("error", repr(exc))])
        raise


def _volley(cluster: Cluster, payment_id: str, tokens: list[str]) -> list[tuple[int, Any]]:
    """len(tokens) confirms of one payment, fired together from PROCESSES processes over both daemons;
    the answers in the order of `tokens`."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(PROCESSES)
    results = ctx.Queue()
    jobs = [(i, cluster.urls[i % len(cluster.urls)], payment_id, token) for i, token in enumerate(tokens)]
    workers = [
        ctx.Process(target=_volley_worker, args=(barrier, results, jobs[p::PROCESSES], cluster.api_key))
        for p in range(PROCESSES)
    ]
    for worker in workers:
        worker.start()
    answers: dict[int, tuple[int, Any]] = {}
    try:
        for _ in workers:
            for item in results.get(timeout=60):
                assert item[0] != "error", f"a confirm process failed: {item[1]}"
                answers[item[0]] = (item[1], item[2])
    finally:
        for worker in workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.kill()
    assert sorted(answers) == list(range(len(tokens)))
    return [answers[i] for i in range(len(tokens))]


def _summary(answers: list[tuple[int, Any]]) -> Counter[str]:
    return Counter(f"{status} {body.get('error') or body.get('status')}" for status, body in answers)


# ---- the cases ----------------------------------------------------------------------------------------
def test_one_right_token_raced_a_hundred_times_validates_once(cluster: Cluster) -> None:
    payment_id, token = _payment(cluster, 1)

    answers = _volley(cluster, payment_id, [token] * CONFIRMS)

    assert _summary(answers) == {"200 validated": 1, "409 not_pending": CONFIRMS - 1}, answers
    for status, body in answers:
        if status == 409:
            assert body["status"] == "validated"
    assert _stored(cluster, payment_id) == ("validated", 0)


def test_fifty_wrong_tokens_fail_the_payment_after_exactly_three(cluster: Cluster) -> None:
    payment_id, token = _payment(cluster, 2)

    wrong = _volley(cluster, payment_id, [_wrong(token)] * VOLLEY)

    invalid = [body for status, body in wrong if status == 422]
    assert all(body["error"] == "invalid_token" for body in invalid), wrong
    assert sorted(body["attempts_remaining"] for body in invalid) == [0, 1, 2], wrong
    refused = [body for status, body in wrong if status == 409]
    assert len(refused) == VOLLEY - MAX_ATTEMPTS, wrong
    assert all(body == {**body, "error": "not_pending", "status": "failed"} for body in refused), wrong
    assert _stored(cluster, payment_id) == ("failed", MAX_ATTEMPTS)

    right = _volley(cluster, payment_id, [token] * VOLLEY)

    assert _summary(right) == {"409 not_pending": VOLLEY}, right
    assert all(body["status"] == "failed" for _, body in right)
    assert _stored(cluster, payment_id) == ("failed", MAX_ATTEMPTS)
    status, body = _request(cluster.urls[1], "GET", f"/v1/payments/{payment_id}", key=cluster.api_key)
    assert (status, body["status"], body["attempts_remaining"]) == (200, "failed", 0)


def test_wrong_and_right_tokens_raced_together_stay_consistent(cluster: Cluster) -> None:
    """Which wins depends on the order the row lock is granted; the accounting must hold either way."""
    payment_id, token = _payment(cluster, 3)

    answers = _volley(cluster, payment_id, [token if i % 2 else _wrong(token) for i in range(VOLLEY)])

    remaining = sorted(
        (body["attempts_remaining"] for status, body in answers if status == 422), reverse=True
    )
    validated = [body for status, body in answers if status == 200]
    assert remaining == [2, 1, 0][: len(remaining)], answers
    assert len(validated) <= 1, answers
    final = "validated" if validated else "failed"
    assert (len(validated) == 1) != (remaining == [2, 1, 0]), answers
    assert len(remaining) + len(validated) + sum(status == 409 for status, _ in answers) == VOLLEY, answers
    assert all(body["status"] == final for status, body in answers if status == 409), answers
    assert _stored(cluster, payment_id) == (final, len(remaining))
