"""What fleet_views.py and jobs_million.py share: their sanity checks and the raw rows they
bulk-insert into the jobs table (DB-API, no ORM: hundreds of thousands of rows)."""

# ruff: noqa: S608 -- the SQL here is built from the benchmark's own names, never input

from __future__ import annotations

import sys
from datetime import datetime
from typing import Callable

JOB_COLUMNS = (
    "id",
    "host_id",
    "kind",
    "status",
    "attempt_id",
    "actor_type",
    "actor_label",
    "params",
    "stats",
    "progress",
    "log_committed_seq",
    "log_truncated",
    "lines_dropped",
    "created_at",
    "started_at",
    "finished_at",
)
JOB_INSERT = f"INSERT INTO jobs ({', '.join(JOB_COLUMNS)})"  # VALUES (or COPY) by the caller
BACKUP_STATS = '{"files_new": 12, "data_added": 4096}'


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Insane(AssertionError):
    """The benchmark's own numbers are impossible or its answers wrong."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise Insane(message)


def sqlite_time(value: datetime) -> str:
    """A UTC datetime as SQLAlchemy stores it in SQLite: naive text."""
    return value.replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


def time_stamper(dialect: str) -> Callable[[datetime], str]:
    """How raw SQL writes a datetime: ISO 8601 with its offset on PostgreSQL."""
    return (lambda value: value.isoformat()) if dialect == "postgresql" else sqlite_time


def job_row(
    dialect: str,
    job_id: int,
    host_id: int,
    kind: str,
    status: str,
    created: datetime,
    started: datetime,
    finished: datetime | None,
    *,
    log_lines: int = 0,
    attempt_id: str = "a" * 32,
    stats: str = BACKUP_STATS,
) -> tuple:
    """One row of ``JOB_COLUMNS``: a scheduled job with ``log_lines`` lines committed."""
    stamp = time_stamper(dialect)
    false = False if dialect == "postgresql" else 0
    return (
        job_id,
        host_id,
        kind,
        status,
        attempt_id,
        "schedule",
        "nightly",
        "{}",
        stats,
        "{}",
        log_lines,
        false,
        0,
        stamp(created),
        stamp(started),
        stamp(finished) if finished else None,
    )


def reset_sequences(cursor, dialect: str, tables: tuple[str, ...]) -> None:
    """After rows inserted with explicit ids, PostgreSQL's id sequences start past them."""
    if dialect != "postgresql":
        return
    for table in tables:
        cursor.execute(
            f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))"
        )
