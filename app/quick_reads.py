"""Single-statement reads for the hot path (the idle long poll), on an engine of their own.

Flask-SQLAlchemy's engine pings every connection it hands out (``pool_pre_ping``) and runs
each unit of work in a transaction; on PostgreSQL a one-row read then costs four round
trips (BEGIN, the ping, the query, ROLLBACK), and an idle agent's poll makes two such reads
every 25 s. This engine runs in autocommit mode (each statement sees what is committed at
that moment; nothing to roll back) and does not ping: a connection the server closed (a
restart, a failover) fails its statement, is thrown away, and the read is tried once more
on a fresh connection. So a read is one round trip.

A small pool per process, :data:`POOL_SIZE` connections kept and none beyond: the reads are
short, and a request that finds them all busy waits its turn, at most
:data:`POOL_TIMEOUT_SECONDS` (an overflow connection would be opened and closed again for
every read: measured, that churn cost more than the reads).
docs/deployment.md counts these connections into PostgreSQL's ``max_connections``.
"""

from __future__ import annotations

from typing import Any, Optional

from flask import current_app
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine, Row
from sqlalchemy.exc import DBAPIError

from app.extensions import db

POOL_SIZE = 8
MAX_OVERFLOW = 0
# A read waits this long for a free connection (SQLAlchemy's default is 30 s). Only an
# overloaded worker waits at all; an idle poll that cannot read passes to the view, which
# waits once more and answers 503 with Retry-After, well inside the agent's read timeout
# (the hold + 15 s) instead of after it.
POOL_TIMEOUT_SECONDS = 5.0


class Prepared:
    """A Core ``select`` compiled once for the engine's dialect, run on the bare DBAPI
    cursor: its SQL, how to order and convert its parameters (the column types' own bind
    processors) and how to convert each result column (their result processors). Skips
    SQLAlchemy's per-execution work (compile cache lookup, execution context, result
    object): on the idle poll's one read that was most of its cost, not the database."""

    def __init__(self, statement, dialect):
        compiled = statement.compile(dialect=dialect)
        self.sql = compiled.string
        self.order = compiled.positiontup  # None: named parameters (pyformat)
        self.fixed = {k: v for k, v in compiled.params.items() if v is not None}
        self.binds = {
            name: processor
            for name, bind in compiled.binds.items()
            if (processor := bind.type.dialect_impl(dialect).bind_processor(dialect)) is not None
        }
        self.results = [
            column.type.dialect_impl(dialect).result_processor(dialect, None)
            for column in statement.selected_columns
        ]

    def parameters(self, params: dict[str, Any]):
        values = {**self.fixed, **params}
        for name, processor in self.binds.items():
            if name in values:
                values[name] = processor(values[name])
        if self.order is None:
            return values
        return tuple(values[name] for name in self.order)

    def row(self, raw) -> tuple:
        return tuple(
            value if convert is None else convert(value)
            for value, convert in zip(raw, self.results)
        )


class QuickReads:
    def __init__(self, engine: Engine):
        self.engine = engine
        self._prepared: dict[Any, Prepared] = {}  # statement (hashed by identity) -> compiled

    def first_row(self, statement, params: dict[str, Any]) -> Optional[tuple]:
        """Like :meth:`first` as a plain tuple, on the DBAPI cursor (:class:`Prepared`).
        For the hottest reads only: a statement here is compiled once and kept."""
        prepared = self._prepared.get(statement)
        if prepared is None:
            prepared = self._prepared[statement] = Prepared(statement, self.engine.dialect)
        parameters = prepared.parameters(params)
        dbapi_error = self.engine.dialect.loaded_dbapi.Error
        for attempt in (1, 2):
            connection = self.engine.raw_connection()
            try:
                cursor = connection.cursor()
                try:
                    cursor.execute(prepared.sql, parameters)
                    raw = cursor.fetchone()
                finally:
                    cursor.close()
            except dbapi_error as error:
                dropped = self.engine.dialect.is_disconnect(error, connection, None)
                if dropped:
                    connection.invalidate()  # thrown away, not back into the pool
                if attempt == 2 or not dropped:
                    raise
                continue
            finally:
                connection.close()  # back to the pool (a no-op after invalidate)
            return None if raw is None else prepared.row(raw)
        raise AssertionError("unreachable")

    def first(self, statement, params: dict[str, Any]) -> Optional[Row]:
        """The first row of ``statement`` (or None), retried once on a dropped connection."""
        for attempt in (1, 2):
            try:
                with self.engine.connect() as connection:
                    return connection.execute(statement, params).first()
            except DBAPIError as error:
                if attempt == 2 or not error.connection_invalidated:
                    raise
        raise AssertionError("unreachable")

    def dispose(self) -> None:
        self.engine.dispose()


def quick_reads() -> QuickReads:
    """This app's reader, made on first use (inside an app context)."""
    reader = current_app.extensions.get("quick_reads")
    if reader is None:
        options = dict(current_app.config.get("SQLALCHEMY_ENGINE_OPTIONS", {}))
        options.pop("pool_pre_ping", None)
        options.update(
            isolation_level="AUTOCOMMIT",
            pool_size=POOL_SIZE,
            max_overflow=MAX_OVERFLOW,
            pool_timeout=POOL_TIMEOUT_SECONDS,
        )
        reader = QuickReads(create_engine(db.engine.url, **options))
        reader = current_app.extensions.setdefault("quick_reads", reader)
    return reader
