"""Shared fixtures: a migrated database (SQLite file, or a fresh PostgreSQL database), the core's rules
with a controllable clock, and the PostgreSQL policy (skip when unreachable, fail on CI).

Under CI=true a skipped test fails the run: CI proves the whole suite, so nothing may quietly not run."""

from __future__ import annotations

import datetime as dt
import os
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from idtronic_tel.config_schema import Config, KeysConfig
from idtronic_tel.core import views
from idtronic_tel.core.db import DBPool, make_engine, migrate
from idtronic_tel.core.rules import Rules
from idtronic_tel.daemon import core_rules

PG_ADMIN_URL = os.environ.get("IDT_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
ON_CI = os.environ.get("CI") == "true"


class FakeClock:
    """Tuesday 10:00 Paris time by default: inside calling hours."""

    def __init__(self, start: dt.datetime | None = None) -> None:
        self.now = start or dt.datetime(2026, 11, 24, 9, 0, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


def test_config(**sections: object) -> Config:
    """A configuration with fresh keys (not a test: imported by test modules)."""
    config = Config(keys=KeysConfig(data_key=secrets.token_bytes(32), hmac_key=secrets.token_bytes(32)))
    return replace(config, **sections)  # type: ignore[arg-type]


test_config.__test__ = False  # type: ignore[attr-defined]


def make_rules(config: Config | None = None, clock: FakeClock | None = None) -> Rules:
    config = config or test_config()
    return core_rules(config, clock or FakeClock())


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path}/idtronic.db"
    migrate(url)
    return url


def _pg_reachable() -> str | None:
    try:
        engine = sa.create_engine(PG_ADMIN_URL.replace("postgresql://", "postgresql+psycopg://"))
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
        engine.dispose()
        return None
    except Exception as exc:  # any reason means "not here": say it in the skip message
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def fresh_pg_database() -> Iterator[str]:
    problem = _pg_reachable()
    if problem is not None:
        if ON_CI:
            pytest.fail(f"PostgreSQL at {PG_ADMIN_URL} is required on CI: {problem}")
        pytest.skip(f"PostgreSQL at {PG_ADMIN_URL} unreachable ({problem}); set IDT_TEST_PG")
    name = "idt_test_" + uuid.uuid4().hex[:12]
    admin = sa.create_engine(
        PG_ADMIN_URL.replace("postgresql://", "postgresql+psycopg://"), isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    migrate(url)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def pg_url() -> Iterator[str]:
    yield from fresh_pg_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/idtronic.db"
        migrate(url)
        yield url
    else:
        yield from fresh_pg_database()


_skipped_on_ci: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if ON_CI and report.skipped and not hasattr(report, "wasxfail"):
        _skipped_on_ci.append(f"{report.nodeid}: {_skip_reason(report)}")


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if ON_CI and report.skipped:
        _skipped_on_ci.append(f"{report.nodeid}: {_skip_reason(report)}")


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    return str(longrepr[2]) if isinstance(longrepr, tuple) else str(longrepr)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _skipped_on_ci and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _skipped_on_ci:
        terminalreporter.section("skipped under CI=true: the run fails", red=True)
        for line in _skipped_on_ci:
            terminalreporter.line(line)


def as_wire(result: Any) -> Any:
    if type(result).__module__ == views.__name__:
        return views.wire(result)
    if isinstance(result, tuple):
        return tuple(as_wire(item) for item in result)
    return result


class BlockingCore:
    """Runs domain functions in the test's thread (no reactor): for domain unit tests."""

    def __init__(self, url: str, rules: Rules) -> None:
        from twisted.internet import reactor

        self.rules = rules
        self.pool = DBPool(reactor, make_engine(url), 2)  # type: ignore[arg-type]

    def __call__(self, fn, *args, **kwargs):  # type: ignore[no-untyped-def]
        """The domain function's answer, its views (core/views.py) as their JSON answers."""
        return as_wire(self.pool.run_blocking(fn, self.rules, *args, **kwargs))

    def raw(self, fn, *args):  # type: ignore[no-untyped-def]
        return self.pool.run_blocking(fn, *args)

    def close(self) -> None:
        self.pool.engine.dispose()


@pytest.fixture
def core(db_url: str, clock: FakeClock) -> Iterator[BlockingCore]:
    blocking = BlockingCore(db_url, make_rules(clock=clock))
    yield blocking
    blocking.close()
