"""Single-statement reads for the hot path (the idle long poll), on an engine of their own.

Flask-SQLAlchemy's engine pings every connection it hands out (``pool_pre_ping``) and runs
each unit of work in a transaction; on PostgreSQL a one-row read then costs four round
trips (BEGIN, the ping, the query, ROLLBACK), and an idle agent's poll makes two such reads
every 25 s. This engine runs in autocommit mode (each statement sees what is committed at
that moment; nothing to roll back) and does not ping: a connection the server closed (a
restart, a failover) fails its statement, is thrown away, and the read is tried once more
on a fresh connection. So a read is one round trip.

A small pool per process, :data:`POOL_SIZE` connections kept and none beyond: the reads are
short, and a request that finds them all busy waits its turn (an overflow connection would
be opened and closed again for every read: measured, that churn cost more than the reads).
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


class QuickReads:
    def __init__(self, engine: Engine):
        self.engine = engine

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
        options.update(isolation_level="AUTOCOMMIT", pool_size=POOL_SIZE, max_overflow=MAX_OVERFLOW)
        reader = QuickReads(create_engine(db.engine.url, **options))
        reader = current_app.extensions.setdefault("quick_reads", reader)
    return reader
