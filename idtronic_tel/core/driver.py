"""Core statements run on the DBAPI cursor of the Session's connection (issue 11 §2): the payment hot
paths (payment_sql.py) pay no compile-cache lookup, result wrapping or type processing per execution.

Each statement is a Core construct (the schema stays in models.py), compiled once per dialect at first
use. Parameters go positionally; the only values converted are those whose stored form the driver would
not produce by itself: UTC datetimes, written on SQLite as the exact text SQLAlchemy writes, read back
as aware UTC datetimes, and booleans read from SQLite's integers. Any other type that has a SQLAlchemy
processor on the dialect keeps that processor. The statements run in the Session's transaction, so the
Session's commit or rollback governs them; driver errors are raised as SQLAlchemy's (IntegrityError,
DBAPIError with connection_invalidated), as Connection.execute raises them."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from sqlalchemy import Boolean, Connection
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.types import TypeEngine

from .models import UtcDateTime

Convert = Callable[[Any], Any]
_PYFORMAT = re.compile(r"%\(([^)]+)\)s")


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    """UtcDateTime.process_bind_param: aware values only, as UTC (what psycopg then sends)."""
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError("naive datetime given to a UTC column")
    return value.astimezone(dt.UTC)


def _sqlite_text(value: dt.datetime | None) -> str | None:
    """SQLAlchemy's SQLite DATETIME text of a UTC datetime ("2026-11-24 09:00:00.000000")."""
    utc = _utc(value)
    return None if utc is None else utc.replace(tzinfo=None).isoformat(" ", "microseconds")


def _from_sqlite_text(value: str | None) -> dt.datetime | None:
    return None if value is None else dt.datetime.fromisoformat(value).replace(tzinfo=dt.UTC)


def _as_utc(value: dt.datetime | None) -> dt.datetime | None:
    return None if value is None else value.astimezone(dt.UTC)


def _as_bool(value: int | None) -> bool | None:
    return None if value is None else bool(value)


def _bind_converter(type_: TypeEngine[Any], dialect: Dialect) -> Convert | None:
    if isinstance(type_, UtcDateTime):
        return _sqlite_text if dialect.name == "sqlite" else _utc
    if isinstance(type_, Boolean):
        return None  # sqlite3 and psycopg take Python booleans (SQLite stores 0 / 1, as SQLAlchemy does)
    return type_.dialect_impl(dialect).bind_processor(dialect)  # None for ints, strings, bytes


def _result_converter(type_: TypeEngine[Any], dialect: Dialect) -> Convert | None:
    sqlite = dialect.name == "sqlite"
    if isinstance(type_, UtcDateTime):
        return _from_sqlite_text if sqlite else _as_utc
    if isinstance(type_, Boolean):
        return _as_bool if sqlite else None
    return type_.dialect_impl(dialect).result_processor(dialect, None)


class _Compiled(NamedTuple):
    sql: str
    binds: tuple[tuple[str, Convert | None], ...]  # positional parameters: (name, converter)
    fixed: dict[str, Any]  # values bound in the construct itself (LIMIT 1, literal SET values)
    results: tuple[tuple[int, Convert], ...]  # (column index, converter) of the columns to convert


def _compile(stmt: ClauseElement, column_keys: Sequence[str] | None, dialect: Dialect) -> _Compiled:
    compiled = stmt.compile(dialect=dialect, column_keys=list(column_keys) if column_keys else None)
    assert isinstance(compiled, SQLCompiler)
    types = {name: bind.type for bind, name in compiled.bind_names.items()}
    if dialect.paramstyle == "qmark":
        sql, names = compiled.string, list(compiled.positiontup or ())
    elif dialect.paramstyle == "pyformat":
        assert "%%" not in compiled.string  # the rewrite below assumes no literal percent sign
        names = _PYFORMAT.findall(compiled.string)
        sql = _PYFORMAT.sub("%s", compiled.string)
    else:
        raise NotImplementedError(f"paramstyle {dialect.paramstyle}")
    binds = tuple((name, _bind_converter(types[name], dialect)) for name in names)
    fixed = {name: bind.effective_value for bind, name in compiled.bind_names.items() if not bind.required}
    results = []
    for index, column in enumerate(getattr(stmt, "selected_columns", ())):
        convert = _result_converter(column.type, dialect)
        if convert is not None:
            results.append((index, convert))
    for index, column in enumerate(compiled.effective_returning or ()):
        convert = _result_converter(column.type, dialect)
        if convert is not None:
            results.append((index, convert))
    return _Compiled(sql, binds, fixed, tuple(results))


class Statement:
    """A Core statement for the driver. `column_keys`: the columns an INSERT or UPDATE sets (the keys of
    its parameters), as Connection.execute derives them from the first parameter set."""

    def __init__(self, stmt: ClauseElement, column_keys: Sequence[str] | None = None) -> None:
        self._stmt = stmt
        self._column_keys = column_keys
        self._by_dialect: dict[str, _Compiled] = {}

    def _compiled(self, dialect: Dialect) -> _Compiled:
        compiled = self._by_dialect.get(dialect.name)
        if compiled is None:  # two threads may both compile: same result, either is kept
            compiled = self._by_dialect[dialect.name] = _compile(self._stmt, self._column_keys, dialect)
        return compiled

    def _run(self, conn: Connection, params: Mapping[str, Any]) -> tuple[Any, _Compiled]:
        compiled = self._compiled(conn.dialect)
        if compiled.fixed:
            params = {**compiled.fixed, **params}
        args = [
            params[name] if convert is None else convert(params[name]) for name, convert in compiled.binds
        ]
        raw = conn.connection.driver_connection
        assert raw is not None
        dbapi = conn.dialect.loaded_dbapi
        cursor = raw.cursor()
        try:
            if conn.dialect.name == "postgresql":
                cursor.execute(compiled.sql, args, prepare=True)  # a server-side prepared statement
            else:
                cursor.execute(compiled.sql, args)
        except dbapi.Error as exc:
            invalidated = conn.dialect.is_disconnect(exc, raw, cursor)
            if invalidated:
                conn.invalidate(exc)
            raise DBAPIError.instance(
                compiled.sql, args, exc, dbapi.Error, connection_invalidated=invalidated, dialect=conn.dialect
            ) from exc
        return cursor, compiled

    def execute(self, conn: Connection, params: Mapping[str, Any]) -> None:
        cursor, _ = self._run(conn, params)
        cursor.close()

    def first(self, conn: Connection, params: Mapping[str, Any]) -> list[Any] | None:
        """The first row's values, converted (the rest of the rows are not read)."""
        cursor, compiled = self._run(conn, params)
        try:
            row = cursor.fetchone()
        finally:
            cursor.close()
        if row is None:
            return None
        values = list(row)
        for index, convert in compiled.results:
            values[index] = convert(values[index])
        return values
