"""Database engine and the thread pool that runs every database call off the reactor thread.

Modelled on buildbot's DBThreadPool: `run(fn, *args)` runs `fn(session, *args)` in a transaction on a
pool thread (core/dbexec.py) and returns a Deferred of its (plain) result.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, inspect, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import sessionmaker
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorThreads
from twisted.logger import Logger

from .dbexec import DBExecutor
from .errors import DomainError

T = TypeVar("T")

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
_RETRIES = 5

log = Logger()


class SchemaOutOfDate(Exception):
    pass


def make_engine(url: str, pool_size: int = 8) -> Engine:
    """An engine for SQLite (file, WAL, BEGIN IMMEDIATE so writers queue instead of failing) or
    PostgreSQL (psycopg 3)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            path = Path(parsed.database)
            path.parent.mkdir(parents=True, exist_ok=True)
            # Created 0600 before SQLite opens it: SQLite gives its -wal and -shm files the same mode.
            with suppress(FileExistsError):
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        engine = create_engine(
            parsed, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=pool_size
        )

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # let the "begin" hook below issue BEGIN itself
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            # A deferred transaction that later writes can fail with "database is locked" without
            # waiting; IMMEDIATE takes the write lock up front and honours the busy timeout.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    # No pool_pre_ping (it cost 10-25 % of the daemon's CPU on the API): a connection found dead is
    # invalidated with the pool, and DBPool.run_blocking runs the transaction again on a fresh one.
    return create_engine(parsed, pool_size=pool_size, max_overflow=0)


def alembic_config(url: str) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def migrate(url: str) -> str:
    """Bring the schema to the latest revision; returns it."""
    engine = make_engine(url, pool_size=1)
    try:
        with engine.begin() as conn:
            cfg = alembic_config(url)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    finally:
        engine.dispose()
    return head_revision()


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None
    return head


def is_empty(engine: Engine) -> bool:
    """No table at all: a database just created (SQLite creates the file on first connection)."""
    with engine.connect() as conn:
        return not inspect(conn).get_table_names()


def check_schema(engine: Engine) -> None:
    """Refuse to run on a schema that is not at the latest revision, naming the fix."""
    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    head = head_revision()
    if current != head:
        raise SchemaOutOfDate(
            f"database schema is at revision {current or 'none (empty database)'}, this version needs "
            f"{head}: run `idtronic-tel migrate` (same --config / --data-dir) and start again"
        )


def _retryable(exc: DBAPIError) -> bool:
    text = str(exc.orig).lower()
    return "deadlock detected" in text or "could not serialize" in text or "database is locked" in text


class DBPool:
    """Runs database work on its own threads. Call start() when the reactor runs, stop() on shutdown."""

    def __init__(self, reactor: IReactorThreads, engine: Engine, threads: int = 8) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._executor = DBExecutor(reactor, threads, "idtronic-db")

    def start(self) -> None:
        self._executor.start()

    def stop(self) -> None:
        """Runs the work already queued (its results reach the reactor later), then closes the engine."""
        self._executor.stop()
        self.engine.dispose()

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Deferred[T]:
        """`fn(session, *args, **kwargs)` in one transaction on a pool thread, retried on deadlock."""
        return self._executor.submit(self.run_blocking, fn, *args, **kwargs)

    def run_blocking(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """The same in the calling thread: for the command line and for tests, never on the reactor.

        Retried on deadlock / serialization failure, and on a connection that dropped before the
        commit was sent (the server rolled that transaction back; stale pooled connections after a
        database restart end here, since the engine does not ping before each checkout). A connection
        lost during the commit is not retried: whether it committed is unknown."""
        for attempt in range(1, _RETRIES + 1):
            committing = [False]
            try:
                return self._once(committing, fn, *args, **kwargs)
            except DBAPIError as exc:
                dropped = exc.connection_invalidated and not committing[0]
                if attempt == _RETRIES or not (dropped or _retryable(exc)):
                    raise
                if dropped:
                    log.info("database connection lost, retrying ({attempt})", attempt=attempt)
                else:
                    log.debug("database conflict, retrying ({attempt})", attempt=attempt)
        raise AssertionError("unreachable")

    def _once(self, committing: list[bool], fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        with self._sessions() as session:
            try:
                result = fn(session, *args, **kwargs)
            except DomainError as exc:
                # Some refusals still change state (a wrong token counts): commit those, roll back others.
                if exc.keep_changes:
                    committing[0] = True
                    session.commit()
                else:
                    session.rollback()
                raise
            except BaseException:
                session.rollback()
                raise
            committing[0] = True
            session.commit()
            return result


class InlinePool(DBPool):
    """Runs the work in the calling thread; `run` returns a Deferred that has already fired. The facade on
    it needs no running reactor: the command line goes through the facade this way."""

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Deferred[T]:
        return maybeDeferred(self.run_blocking, fn, *args, **kwargs)
