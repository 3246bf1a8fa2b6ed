"""Housekeeping, run by the ticker's leader so the database stays bounded.

- Logs of jobs that finished more than ``RM_JOB_LOG_RETENTION_DAYS`` ago are removed in
  small batches (one short write transaction each, a pause between, a bound per pass), so
  no worker waits long on the write lock. The job row stays; ``log_purged_at`` says when
  its log went, and the job page and log.txt say so.
- Expired sign-in sessions, invitation/reset links and old login failures are deleted
  (the ticker's own ``rpc.sweep`` forgets agent answers and download bytes after an hour).
- SQLite only, once a day: ``PRAGMA optimize``, and ``PRAGMA incremental_vacuum`` when the
  file uses ``auto_vacuum=INCREMENTAL`` (new files do; see docs/deployment.md for older ones).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Callable, Optional

from sqlalchemy import delete, or_, select, update

from app.extensions import db
from app.models import Job, JobLog, LoginFailure, UserInvite, UserSession

log = logging.getLogger("restic_manager.housekeeping")

BATCH_ROWS = 5_000  # log lines deleted per transaction
MAX_ROWS_PER_PASS = 50_000  # per ticker pass; the rest waits for the next one
BATCH_PAUSE_SECONDS = 0.05  # between two batches: other writers get the lock
MAX_BATCHES_PER_PASS = 20  # also bounds passes that only mark jobs which wrote nothing
JOBS_PER_BATCH = 1_000  # finished jobs looked at together (their lines fill one batch)
DAILY = timedelta(days=1)
SIGN_IN_GRACE = timedelta(days=1)  # expired sessions and links kept a day, then deleted
VACUUM_PAGES = 10_000  # pages returned to the file system per incremental_vacuum step


@dataclass
class Report:
    log_rows: int = 0
    log_jobs: int = 0
    batches: int = 0
    sessions: int = 0
    invites: int = 0
    login_failures: int = 0
    sqlite: dict = field(default_factory=dict)


def purge_job_logs(
    now: datetime,
    *,
    retention_days: int,
    batch_rows: int = BATCH_ROWS,
    max_rows: int = MAX_ROWS_PER_PASS,
    max_batches: int = MAX_BATCHES_PER_PASS,
    pause: float = BATCH_PAUSE_SECONDS,
    commit: Callable[[], None],
    report: Optional[Report] = None,
) -> Report:
    """Remove the logs of jobs finished before ``now - retention_days`` (0: keep forever),
    ``batch_rows`` lines per committed transaction, at most about ``max_rows`` lines and
    ``max_batches`` transactions per call. Jobs whose lines are all gone (or that wrote
    none) get ``log_purged_at = now``. Idempotent: a pass cut short
    (bound, crash, new leader) continues where it stopped."""
    report = report or Report()
    if retention_days <= 0:
        return report
    cutoff = now - timedelta(days=retention_days)
    due = (Job.log_purged_at.is_(None), Job.finished_at < cutoff)
    while report.log_rows < max_rows and report.batches < max_batches:
        # Jobs that wrote nothing are only marked, up to batch_rows at a time.
        silent = (
            select(Job.id)
            .where(*due, Job.log_committed_seq == 0)
            .limit(batch_rows)
            .scalar_subquery()
        )
        marked = db.session.execute(
            update(Job).where(Job.id.in_(silent)).values(log_purged_at=now),
            execution_options={"synchronize_session": False},
        ).rowcount
        # The oldest jobs with lines, as many as about one batch of lines.
        job_ids, lines = [], 0
        for job_id, count in db.session.execute(
            select(Job.id, Job.log_committed_seq)
            .where(*due, Job.log_committed_seq > 0)
            .order_by(Job.finished_at)
            .limit(JOBS_PER_BATCH)
        ):
            if job_ids and lines + count > batch_rows:
                break
            job_ids.append(job_id)
            lines += count
        if not job_ids and not marked:
            break
        deleted = 0
        if job_ids:
            batch = select(JobLog.id).where(JobLog.job_id.in_(job_ids)).limit(batch_rows)
            deleted = db.session.execute(
                delete(JobLog).where(JobLog.id.in_(batch)),
                execution_options={"synchronize_session": False},
            ).rowcount
            if deleted < batch_rows:  # these jobs have no lines left: say so on each
                marked += db.session.execute(
                    update(Job).where(Job.id.in_(job_ids), *due).values(log_purged_at=now),
                    execution_options={"synchronize_session": False},
                ).rowcount
        report.log_rows += deleted
        report.log_jobs += marked
        report.batches += 1
        commit()
        if pause:
            time.sleep(pause)
    return report


def sweep_sign_ins(now: datetime, *, login_window_seconds: int, report: Report) -> Report:
    """Delete sessions and links expired (or revoked) over a day ago and login failures
    older than the rate-limit window (the caller commits)."""
    old = now - SIGN_IN_GRACE
    report.sessions = db.session.execute(
        delete(UserSession).where(or_(UserSession.expires_at < old, UserSession.revoked_at < old)),
        execution_options={"synchronize_session": False},
    ).rowcount
    report.invites = db.session.execute(
        delete(UserInvite).where(or_(UserInvite.expires_at < old, UserInvite.revoked_at < old)),
        execution_options={"synchronize_session": False},
    ).rowcount
    report.login_failures = db.session.execute(
        delete(LoginFailure).where(
            LoginFailure.attempted_at < now - timedelta(seconds=login_window_seconds)
        ),
        execution_options={"synchronize_session": False},
    ).rowcount
    return report


def sqlite_maintenance(*, pause: float = BATCH_PAUSE_SECONDS) -> dict:
    """``PRAGMA optimize``; with auto_vacuum=INCREMENTAL, free pages handed back in steps.
    Nothing on PostgreSQL (autovacuum does that work there)."""
    if db.engine.dialect.name != "sqlite":
        return {}
    done: dict = {}
    raw = db.engine.raw_connection()
    try:
        sqlite = raw.driver_connection
        sqlite.execute("PRAGMA optimize").fetchall()
        done["optimize"] = True
        mode = sqlite.execute("PRAGMA auto_vacuum").fetchone()[0]
        done["auto_vacuum"] = {0: "none", 1: "full", 2: "incremental"}.get(mode, str(mode))
        if mode == 2:
            freed = 0
            while True:
                free = sqlite.execute("PRAGMA freelist_count").fetchone()[0]
                if free == 0:
                    break
                # executescript steps the pragma to its end (execute() frees one page); each
                # call is a short transaction of its own.
                sqlite.executescript(f"PRAGMA incremental_vacuum({VACUUM_PAGES})")
                freed += min(free, VACUUM_PAGES)
                if pause:
                    time.sleep(pause)
            done["pages_freed"] = freed
    finally:
        raw.close()
    return done


def run(
    config,
    now: datetime,
    state: dict,
    *,
    commit: Callable[[], None],
    pause: float = BATCH_PAUSE_SECONDS,
) -> Report:
    """One housekeeping pass (the leader calls it after each tick); ``commit`` ends each
    short transaction (the ticker's commit_and_wake). ``state`` survives between passes
    (when the daily work last ran)."""
    report = Report()
    purge_job_logs(
        now,
        retention_days=config["RM_JOB_LOG_RETENTION_DAYS"],
        pause=pause,
        report=report,
        commit=commit,
    )
    sweep_sign_ins(now, login_window_seconds=config["RM_LOGIN_WINDOW_SECONDS"], report=report)
    commit()
    last = state.get("daily_at")
    if last is None or now - last >= DAILY:
        state["daily_at"] = now
        report.sqlite = sqlite_maintenance(pause=pause)
    if report.log_rows or report.log_jobs:
        log.info(
            "housekeeping: removed %d log lines of %d jobs finished over %d days ago",
            report.log_rows,
            report.log_jobs,
            config["RM_JOB_LOG_RETENTION_DAYS"],
        )
    return report
