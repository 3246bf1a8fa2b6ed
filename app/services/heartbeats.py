"""Agent heartbeats written behind: ``last_seen_at`` without a write transaction per poll.

An idle agent polls every ``RM_POLL_WAIT_SECONDS``; writing ``hosts.last_seen_at`` (and its
token's ``last_used_at``) in every one of them made each idle poll a write transaction. The
idle poll notes its heartbeat here instead, per worker process, and the first poll after
:data:`FLUSH_SECONDS` writes every noted heartbeat in a few small transactions: on SQLite
one executemany of at most :data:`CHUNK_ROWS` rows each, on PostgreSQL one statement of at
most :data:`PG_CHUNK_ROWS` rows each (the ids and times as two arrays). A host stays
``online`` as before because a heartbeat is only deferred while the stored value is fresh
enough that it cannot read as offline before the next flush or poll: see
:func:`defer_until`. A returning host (stored value old) is written at once.

Rows only move forward (``WHERE last_seen_at < :t``): several workers, or a flush racing a
synchronous write, never set a host back in time. A worker that stops loses at most its
unflushed heartbeats: those hosts look a few seconds older, never offline early.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime
from typing import Callable, Optional

from sqlalchemy import bindparam, or_, text
from sqlalchemy.exc import SQLAlchemyError

from app.extensions import db
from app.models import AgentToken, Host

log = logging.getLogger("restic_manager.heartbeats")

FLUSH_SECONDS = 5.0
CHUNK_ROWS = 100  # rows a transaction on SQLite (a few ms, holding the file's write lock)
# On PostgreSQL: rows a statement and transaction. The executemany took 40 ms of a worker's
# CPU for the 1,500 hosts and 1,500 tokens a 7,500-agent worker notes in 5 s, in which the
# worker's other requests waited their turn (every 5 s the API's p99 showed it); one
# array-driven statement a table takes 14-16 ms (docs/performance.md).
PG_CHUNK_ROWS = 1000
_MARGIN_SECONDS = 5  # room for a flush that comes late


def defer_until(offline_after_seconds: int, poll_wait_seconds: int) -> float:
    """How old a stored ``last_seen_at`` may be for this poll's heartbeat to be deferred.

    The next poll comes within ``poll_wait_seconds`` (the hold) of this one; a deferred
    value is written by then. So a stored value younger than ``offline_after - hold -
    margin`` is never older than ``offline_after`` while its agent keeps polling. With a
    hold close to the offline window, nothing is deferred (the old synchronous write).
    """
    return max(0.0, offline_after_seconds - poll_wait_seconds - _MARGIN_SECONDS)


class Heartbeats:
    """This worker's heartbeats not written yet (host id -> newest time seen)."""

    def __init__(self, flush_seconds: float = FLUSH_SECONDS):
        self._lock = threading.Lock()
        self._hosts: dict[int, datetime] = {}
        self._tokens: dict[int, datetime] = {}
        self._flush_seconds = flush_seconds
        self._last_flush = time.monotonic()

    def note(self, host_id: int, now: datetime, *, token_id: Optional[int] = None) -> None:
        with self._lock:
            self._hosts[host_id] = now
            if token_id is not None:
                self._tokens[token_id] = now

    def pending(self) -> int:
        with self._lock:
            return len(self._hosts)

    def due(self) -> bool:
        return bool(self._hosts) and time.monotonic() - self._last_flush >= self._flush_seconds

    def flush(self, commit: Callable[[], None]) -> int:
        """Write every noted heartbeat; returns the hosts written.

        In transactions of at most :data:`CHUNK_ROWS` rows, with a pause between them
        (``time.sleep(0)``: a greenlet switch under gevent): on SQLite a statement holds
        the whole worker, and one transaction of a 5,000-agent worker's 1,000 heartbeats
        stopped every other request for 40-80 ms every 5 s. Uses the scoped session and
        ends each transaction with ``commit`` (the door's ``commit_and_wake``); call it with
        no other work pending. A database error keeps what was not written for the next
        flush (logged, not raised: the poll that happened to flush is not the one to fail).
        """
        with self._lock:
            hosts, self._hosts = self._hosts, {}
            tokens, self._tokens = self._tokens, {}
            self._last_flush = time.monotonic()
        on_postgresql = db.engine.dialect.name == "postgresql"
        size = chunk_rows(db.engine)
        chunks = [("hosts", part) for part in _chunks(hosts, size)]
        chunks += [("tokens", part) for part in _chunks(tokens, size)]
        written = 0
        for index, (kind, rows) in enumerate(chunks):
            if index:
                time.sleep(0)  # let waiting requests run between two transactions
            try:
                if on_postgresql:
                    db.session.connection().execute(
                        _PG_FORWARD[kind],
                        {
                            "ids": [row["row_id"] for row in rows],
                            "ats": [row["at"] for row in rows],
                        },
                    )
                else:
                    db.session.connection().execute(_FORWARD[kind], rows)
                commit()
            except SQLAlchemyError as error:
                db.session.rollback()
                log.warning("heartbeats not written (kept for the next flush): %s", error)
                self._keep(chunks[index:])
                return written
            if kind == "hosts":
                written += len(rows)
        return written

    def _keep(self, chunks: list[tuple[str, list[dict]]]) -> None:
        """Put unwritten heartbeats back for the next flush; the newest value wins."""
        with self._lock:
            for kind, rows in chunks:
                pending = self._hosts if kind == "hosts" else self._tokens
                for row in rows:
                    key, value = row["row_id"], row["at"]
                    pending[key] = max(value, pending.get(key, value))


def _forward(table, column: str):
    target = table.c[column]
    return (
        table.update()
        .where(table.c.id == bindparam("row_id"), or_(target.is_(None), target < bindparam("at")))
        .values({column: bindparam("at")})
    )


_FORWARD = {
    "hosts": _forward(Host.__table__, "last_seen_at"),
    "tokens": _forward(AgentToken.__table__, "last_used_at"),
}


def _pg_forward(table, column: str):
    """PostgreSQL: a whole chunk in one statement (the ids and times as two arrays), its
    rows locked in id order first (two workers flushing the same host, an agent that moved
    between them, then wait for each other rather than deadlock), and, as
    :func:`_forward`, a value only ever moved forward. Names from the models, not input."""
    name, target = table.name, table.c[column].name
    return text(
        f"WITH beats AS (SELECT * FROM unnest(CAST(:ids AS integer[]), "  # noqa: S608
        f"CAST(:ats AS timestamptz[])) AS b(id, at)), "
        f"locked AS (SELECT t.id, beats.at FROM {name} AS t JOIN beats ON beats.id = t.id "
        f"WHERE t.{target} IS NULL OR t.{target} < beats.at ORDER BY t.id FOR UPDATE OF t) "
        f"UPDATE {name} AS t SET {target} = locked.at FROM locked WHERE t.id = locked.id "
        f"AND (t.{target} IS NULL OR t.{target} < locked.at)"
    )


_PG_FORWARD = {
    "hosts": _pg_forward(Host.__table__, "last_seen_at"),
    "tokens": _pg_forward(AgentToken.__table__, "last_used_at"),
}


def chunk_rows(engine) -> int:
    return PG_CHUNK_ROWS if engine.dialect.name == "postgresql" else CHUNK_ROWS


def _chunks(values: dict[int, datetime], size: int) -> list[list[dict]]:
    rows = [{"row_id": key, "at": value} for key, value in sorted(values.items())]
    return [rows[start : start + size] for start in range(0, len(rows), size)]
