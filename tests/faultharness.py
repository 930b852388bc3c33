"""Real `idtronic-tel run` daemons as subprocesses, for the fault tests: their configuration, their start,
kill -9 and stop, SMS rows seeded straight into the outbox, a private PostgreSQL cluster the test may
restart, and waits on conditions with deadlines.

The tests using this run under pytest_twisted: the node-smpp SMSC (tests/fakes_smpp.NodeSmsc) and the
Asterisk emulator live in the test's reactor; database reads go through a DBPool (off the reactor).
"""

from __future__ import annotations

import datetime as dt
import http.client
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, insert, select
from twisted.internet import reactor, task, threads
from twisted.internet.defer import Deferred

from idtronic_tel.config import load_config, prepare_data_dir
from idtronic_tel.config_schema import Config, SmppBindConfig, SmppConfig
from idtronic_tel.core.crypto import Vault
from idtronic_tel.core.db import DBPool, make_engine
from idtronic_tel.core.facade import Core, CoreSmsOutbox
from idtronic_tel.core.models import SmsMessage, SmsPart
from idtronic_tel.core.rules import utcnow
from idtronic_tel.daemon import core_rules
from idtronic_tel.smpp.service import SmppService, makeSmppService
from tests.conftest import ON_CI
from tests.daemonharness import free_port
from tests.fakes_smpp import NodeSmsc

DAEMON = Path(sys.executable).with_name("idtronic-tel")
READY_WITHIN = 30.0


def clean_environ() -> dict[str, str]:
    """The test runner's environment without IDTRONIC_* (an unknown one would be a configuration error)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("IDTRONIC_")}


async def wait_for(check: Callable[[], Awaitable[bool] | bool], what: str, timeout: float = 90.0) -> None:
    """Re-evaluate `check` every 50 ms until it holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        await task.deferLater(reactor, 0.05, lambda: None)


# ---- configuration and data -----------------------------------------------------------------------------


def write_config(path: Path, database_url: str, **sections: dict[str, Any]) -> None:
    """A TOML file: the database, then `sections` ("smpp", "smpp.bind", "ami", ...), key = value."""
    lines = ["[database]", f'url = "{database_url}"', "pool_threads = 4", ""]
    for section, values in sections.items():
        lines.append(f"[[{section}]]" if section == "smpp.bind" else f"[{section}]")
        for key, value in values.items():
            if isinstance(value, bool):
                lines.append(f"{key} = {'true' if value else 'false'}")
            elif isinstance(value, str):
                lines.append(f'{key} = "{value}"')
            else:
                lines.append(f"{key} = {value}")
        lines.append("")
    path.write_text("\n".join(lines))


def smpp_sections(endpoint: str, window: int, max_tps: float) -> dict[str, dict[str, Any]]:
    return {
        "smpp": {"response_timeout": 5, "poll_interval": 0.1, "reconnect_max_delay": 1},
        "smpp.bind": {
            "name": "node",
            "endpoint": endpoint,
            "system_id": "test",
            "password": "secret",
            "window": window,
            "max_tps": max_tps,
        },
    }


def prepared(config_file: Path, data_dir: Path) -> Config:
    """Keys created once, before any daemon starts (two first starts would race on them)."""
    prepare_data_dir(data_dir, config_file, {})
    return load_config(config_file, data_dir, {})


@dataclass(frozen=True)
class Seeded:
    sms_id: int
    destination: str  # E.164

    @property
    def digits(self) -> str:
        """The destination as the SMSC records it."""
        return self.destination[1:]


def seed_sms(url: str, config: Config, count: int, lifetime: float = 600.0, start: int = 0) -> list[Seeded]:
    """`count` queued SMS with distinct destinations, written straight into the outbox (as a payment or a
    profile challenge would queue them, without the rate limits that would slow a thousand of them)."""
    vault = Vault(config.keys.data_key, config.keys.hmac_key)
    now = dt.datetime.now(dt.UTC)
    rows = []
    for i in range(start, start + count):
        text = f"id-tronic : code {i % 1_000_000:06d}. Message {i}."
        rows.append(
            {
                "purpose": "notice",
                "destination": f"+3361{i:07d}",
                "body_enc": vault.encrypt("sms", text),
                "state": "queued",
                "in_doubt": False,
                "created_at": now,
                "expires_at": now + dt.timedelta(seconds=lifetime),
                "reason": "",
            }
        )
    engine = make_engine(url, pool_size=1)
    try:
        with engine.begin() as conn:
            conn.execute(insert(SmsMessage), rows)
            destinations = [str(r["destination"]) for r in rows]
            by_destination = dict(
                conn.execute(
                    select(SmsMessage.destination, SmsMessage.id).where(
                        SmsMessage.destination.in_(destinations)
                    )
                ).all()
            )
    finally:
        engine.dispose()
    return [Seeded(by_destination[d], d) for d in destinations]


@dataclass(frozen=True)
class Row:
    sms_id: int
    destination: str
    state: str
    resends: int
    in_doubt: bool
    claimed_by: str | None
    expires_at: dt.datetime
    parts: tuple[str, ...]


class Outbox:
    """Reads of sms_outbox from the test, on a thread (the reactor keeps serving the SMSC and AMI)."""

    def __init__(self, url: str) -> None:
        self.pool = DBPool(reactor, make_engine(url, pool_size=2), 2)  # type: ignore[arg-type]
        self.pool.start()

    def close(self) -> None:
        self.pool.stop()

    def rows(self) -> Deferred[dict[int, Row]]:
        return self.pool.run(_rows)

    def settled(self, states: frozenset[str] = frozenset({"delivered", "expired"})) -> Deferred[bool]:
        """Whether every SMS is in one of `states` (one cheap query: it is polled)."""
        return self.pool.run(
            lambda s: not s.scalar(select(func.count()).where(SmsMessage.state.not_in(sorted(states))))
        )

    def run(self, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        return self.pool.run(fn, *args)


def _rows(s: Any) -> dict[int, Row]:
    parts: dict[int, list[str]] = {}
    for sms_id, message_id in s.execute(select(SmsPart.sms_id, SmsPart.message_id).order_by(SmsPart.id)):
        parts.setdefault(sms_id, []).append(message_id)
    return {
        m.id: Row(
            m.id,
            m.destination,
            m.state,
            m.resends,
            m.in_doubt,
            m.claimed_by,
            m.expires_at,
            tuple(parts.get(m.id, [])),
        )
        for m in s.scalars(select(SmsMessage))
    }


# ---- daemons ----------------------------------------------------------------------------------------------


class InProcess:
    """What one daemon holds of the core, in this process: its DB pool (one thread on SQLite, as the
    daemon), Core and CoreSmsOutbox, and the SMPP services started on it."""

    def __init__(self, url: str, config: Config, clock: Callable[[], dt.datetime] = utcnow) -> None:
        threads = 1 if url.startswith("sqlite") else 4  # SQLite takes one writer at a time
        self.pool = DBPool(reactor, make_engine(url, pool_size=threads), threads)  # type: ignore[arg-type]
        self.pool.start()
        self.rules = core_rules(config, clock)
        self.core = Core(reactor, self.pool, self.rules)  # type: ignore[arg-type]
        self.outbox = CoreSmsOutbox(self.core)
        self.services: list[SmppService] = []

    def smpp(
        self,
        smsc: NodeSmsc,
        worker: str = "in-process",
        outbox: Any = None,
        response_timeout: float = 5.0,
        **bind: Any,
    ) -> SmppService:
        """makeSmppService bound to `smsc` (reconnecting after 1 s), started."""
        settings: dict[str, Any] = {"max_tps": 5000.0, "window": 20, **bind}
        config = SmppConfig(
            binds=(
                SmppBindConfig(
                    name="node", endpoint=smsc.endpoint, system_id="test", password="secret", **settings
                ),
            ),
            response_timeout=response_timeout,
            poll_interval=0.1,
            reconnect_max_delay=1.0,
        )
        service = makeSmppService(config, outbox or self.outbox, worker, reactor, jitter=lambda: 0.0)
        if outbox is None:
            self.core.sms_taker = service.worker  # payments created here go to it, as in the daemon
        service.startService()
        self.services.append(service)
        return service

    async def stop(self) -> None:
        for service in self.services:
            if service.running:
                await service.stopService()
        self.pool.stop()


class DaemonProcess:
    """One `idtronic-tel run`, on a fixed loopback HTTP port; its worker name is the default, host:pid."""

    def __init__(self, tmp_path: Path, name: str, config_file: Path, data_dir: Path) -> None:
        self.name = name
        self.config_file = config_file
        self.data_dir = data_dir
        self.port = free_port()
        self.agi_port = free_port()
        self.log = tmp_path / f"{name}.log"
        self.cwd = tmp_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {
            **clean_environ(),
            "IDTRONIC_HTTP_LISTEN": f"tcp:{self.port}:interface=127.0.0.1",
            "IDTRONIC_AGI_LISTEN": f"tcp:{self.agi_port}:interface=127.0.0.1",
            "IDTRONIC_HTTP_METRICS_LISTEN": "tcp:0:interface=127.0.0.1",
        }
        self.starts += 1
        with self.log.open("ab") as out:
            out.write(f"---- start {self.starts}\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                [str(DAEMON), "--config", str(self.config_file), "--data-dir", str(self.data_dir), "run"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
            )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    async def ready(self) -> None:
        async def healthy() -> bool:
            if not self.alive:
                pytest.fail(
                    f"daemon {self.name} exited with {self.proc and self.proc.returncode}:\n{self.tail()}"
                )
            return await threads.deferToThread(self.health) == 200

        await wait_for(healthy, f"daemon {self.name} to answer /healthz", READY_WITHIN)

    def health(self) -> int:
        try:
            conn = http.client.HTTPConnection(self.url, timeout=5)
            try:
                conn.request("GET", "/healthz")
                response = conn.getresponse()
                response.read()
                return response.status
            finally:
                conn.close()
        except OSError:
            return 0

    async def kill(self) -> None:
        """kill -9: no stop, no unbind, no last record."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        await threads.deferToThread(self.proc.wait, 10)

    async def stop(self) -> None:
        if self.alive:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)
            try:
                await threads.deferToThread(self.proc.wait, 30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                await threads.deferToThread(self.proc.wait, 10)


# ---- a private PostgreSQL cluster ------------------------------------------------------------------------


class PrivatePostgres:
    """initdb + pg_ctl on a free port in a temporary directory: this test's own server, which it may
    restart (the machine's PostgreSQL is shared with other test runs and is never touched). As root, the
    server runs as the `postgres` user (initdb refuses root)."""

    def __init__(self, base: Path) -> None:
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
        if not bins:
            message = "PostgreSQL server binaries (/usr/lib/postgresql/*/bin) are not installed"
            if ON_CI:
                pytest.fail(message)
            pytest.skip(message)
        self.bin = bins[-1].parent
        self.base = base
        self.data = base / "pgdata"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/idtronic"
        self._as_postgres = os.geteuid() == 0

    def _run(self, *args: str) -> None:
        command = [str(self.bin / args[0]), *args[1:]]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, timeout=60)
        if done.returncode:
            raise RuntimeError(
                f"{args[0]} failed ({done.returncode}): {done.stderr.decode(errors='replace')}"
            )

    def start(self) -> None:
        if self._as_postgres:
            shutil.chown(self.base, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        self._pg_ctl("start")
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "idtronic")

    def _pg_ctl(self, action: str) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.base}"
        log = str(self.base / "server.log")
        self._run("pg_ctl", action, "-D", str(self.data), "-o", options, "-l", log, "-w", "-m", "fast")

    def restart(self) -> None:
        self._pg_ctl("restart")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._pg_ctl("stop")


def private_postgres() -> Iterator[PrivatePostgres]:
    """For a fixture: a started PrivatePostgres, stopped and removed afterwards."""
    # Not under pytest's tmp_path: the server's user must be able to reach its directory.
    base = Path(tempfile.mkdtemp(prefix="idtronic-pg-"))
    server = PrivatePostgres(base)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
