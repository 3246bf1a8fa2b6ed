"""Housekeeping, run by the ticker's leader so the database stays bounded.

- Logs of jobs that finished more than ``RM_JOB_LOG_RETENTION_DAYS`` ago are removed in
  small batches (one short write transaction each, a pause between, a bound per pass), so
  no worker waits long on the write lock. The job row stays; ``log_purged_at`` says when
  its log went, and the job page and log.txt say so.
  A ``diff`` job's list of changes (``diff_entries``) goes with its log, in the same
  batches, and the job is marked only once both are gone.
- Commands to agents that are finished (acked, undeliverable, expired; never a queued or
  leased one) go ``COMMAND_KEEP`` after they were queued, with their sealed payloads.
- Agent event ids (kept so a resent event is acknowledged, not applied twice) go
  ``EVENT_KEEP`` after they arrived (``job.progress`` ones, the bulk, after a day): an agent
  resends an unacknowledged event at its next contact, so that is far more than the
  dedupe needs.
- Alerts resolved more than ``RM_ALERT_RETENTION_DAYS`` ago go with their notification
  rows (the delivery log); open alerts and the audit log are kept.
- Of an alert that stays open for long, reminders sent more than ``RM_ALERT_RETENTION_DAYS``
  ago go (once a day), all but the newest per channel (the next reminder counts from it).
- A host's repository size history keeps its newest ``REPO_STATS_PER_HOST`` rows (every
  backup adds one; the host page and the API read the newest 90).
- Expired sign-in sessions, invitation/reset links and old login failures are deleted
  (the ticker's own ``rpc.sweep`` forgets agent answers and download bytes after an hour).
- SQLite only, once a day: ``PRAGMA optimize``, and ``PRAGMA incremental_vacuum`` when the
  file uses ``auto_vacuum=INCREMENTAL`` (new files do; see docs/deployment.md for older ones).

Every purge deletes in batches (one short transaction each, a pause between, a bound per
pass) and is idempotent: a pass cut short continues at the next one.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Callable, Optional

from sqlalchemy import delete, exists, func, or_, select, text, tuple_, update
from sqlalchemy.orm import aliased

from app.extensions import db
from app.models import (
    AgentEvent,
    Alert,
    Command,
    DiffEntry,
    Host,
    Job,
    JobLog,
    LoginFailure,
    Notification,
    RepoStats,
    UserInvite,
    UserSession,
)

log = logging.getLogger("restic_manager.housekeeping")

BATCH_ROWS = 5_000  # log lines deleted per transaction
MAX_ROWS_PER_PASS = 50_000  # per ticker pass; the rest waits for the next one
BATCH_PAUSE_SECONDS = 0.05  # between two batches: other writers get the lock
MAX_BATCHES_PER_PASS = 20  # also bounds passes that only mark jobs which wrote nothing
JOBS_PER_BATCH = 1_000  # finished jobs looked at together (their lines fill one batch)
DAILY = timedelta(days=1)
SIGN_IN_GRACE = timedelta(days=1)  # expired sessions and links kept a day, then deleted
VACUUM_PAGES = 10_000  # pages returned to the file system per incremental_vacuum step
COMMAND_KEEP = timedelta(days=30)  # finished commands, counted from when they were queued
EVENT_KEEP = timedelta(days=30)  # agent event ids kept for dedupe, from their arrival
# job.progress ids: up to one a second of each running job, and harmless if applied twice
# (a finished job ignores progress; a lost one runs again, as a late report makes it).
PROGRESS_EVENT_KEEP = timedelta(days=1)
FINISHED_COMMAND_STATES = ("acked", "undeliverable", "expired")  # never queued/leased
ALERTS_PER_BATCH = 500  # resolved alerts deleted together (with their notification rows)
# Repository size history: a row per backup, prune and forget; pages and the API read the
# newest 90 of a host. Older rows beyond this many per host go.
REPO_STATS_PER_HOST = 1_000
HOSTS_PER_PASS = 100  # hosts whose size history one pass looks at (a cursor goes round)
# Commands and agent event ids carry three indexes each: 1,000 rows take about as long to
# delete as 5,000 log lines (~50 ms on SQLite), so the write lock is held as briefly.
PURGE_BATCH_ROWS = 1_000


@dataclass
class Report:
    log_rows: int = 0
    log_jobs: int = 0
    diff_rows: int = 0
    batches: int = 0
    commands: int = 0
    agent_events: int = 0
    alerts: int = 0
    notifications: int = 0
    reminders: int = 0
    repo_stats: int = 0
    purge_batches: int = 0  # transactions of the purges other than the job logs
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
    ``max_batches`` transactions per call. A ``diff`` job's changes go in the same
    batches. Jobs whose lines (and changes) are all gone, or that wrote none, get
    ``log_purged_at = now``. Idempotent: a pass cut short (bound, crash, new leader)
    continues where it stopped."""
    report = report or Report()
    if retention_days <= 0:
        return report
    cutoff = now - timedelta(days=retention_days)
    due = (Job.log_purged_at.is_(None), Job.finished_at < cutoff)
    # A diff job keeps its list of changes until this purge removes it with the log.
    with_output = or_(Job.log_committed_seq > 0, Job.kind == "diff")
    while report.log_rows + report.diff_rows < max_rows and report.batches < max_batches:
        # Jobs that wrote nothing are only marked, up to batch_rows at a time.
        silent = select(Job.id).where(*due, ~with_output).limit(batch_rows).scalar_subquery()
        marked = db.session.execute(
            update(Job).where(Job.id.in_(silent)).values(log_purged_at=now),
            execution_options={"synchronize_session": False},
        ).rowcount
        # The oldest jobs with lines, as many as about one batch of lines.
        job_ids, diff_ids, lines = [], [], 0
        for job_id, count, kind in db.session.execute(
            select(Job.id, Job.log_committed_seq, Job.kind)
            .where(*due, with_output)
            .order_by(Job.finished_at)
            .limit(JOBS_PER_BATCH)
        ):
            if job_ids and lines + count > batch_rows:
                break
            job_ids.append(job_id)
            lines += count
            if kind == "diff":
                diff_ids.append(job_id)
        if not job_ids and not marked:
            commit()  # ends the write transaction the update began (SQLite's lock)
            break
        deleted = changes = 0
        if job_ids:
            batch = select(JobLog.id).where(JobLog.job_id.in_(job_ids)).limit(batch_rows)
            deleted = db.session.execute(
                delete(JobLog).where(JobLog.id.in_(batch)),
                execution_options={"synchronize_session": False},
            ).rowcount
            if diff_ids:
                entries = (
                    select(DiffEntry.job_id, DiffEntry.seq)
                    .where(DiffEntry.job_id.in_(diff_ids))
                    .limit(batch_rows)
                )
                changes = db.session.execute(
                    delete(DiffEntry).where(tuple_(DiffEntry.job_id, DiffEntry.seq).in_(entries)),
                    execution_options={"synchronize_session": False},
                ).rowcount
            # These jobs have nothing left: say so on each.
            if deleted < batch_rows and changes < batch_rows:
                marked += db.session.execute(
                    update(Job).where(Job.id.in_(job_ids), *due).values(log_purged_at=now),
                    execution_options={"synchronize_session": False},
                ).rowcount
        report.log_rows += deleted
        report.diff_rows += changes
        report.log_jobs += marked
        report.batches += 1
        commit()
        if pause:
            time.sleep(pause)
    return report


def _delete_in_batches(
    model,
    key,
    where: tuple,
    *,
    batch_rows: int,
    max_rows: int,
    max_batches: int,
    pause: float,
    commit: Callable[[], None],
    report: Report,
) -> int:
    """Delete ``model`` rows matching ``where``, ``batch_rows`` (by the primary key ``key``)
    per committed transaction, at most about ``max_rows`` and ``max_batches`` per call."""
    total = batches = 0
    while total < max_rows and batches < max_batches:
        batch = select(key).where(*where).limit(batch_rows).scalar_subquery()
        deleted = db.session.execute(
            delete(model).where(key.in_(batch)),
            execution_options={"synchronize_session": False},
        ).rowcount
        commit()  # even after deleting nothing: the statement began a write transaction
        if not deleted:
            break
        total += deleted
        batches += 1
        report.purge_batches += 1
        if deleted < batch_rows:
            break
        if pause:
            time.sleep(pause)
    return total


def purge_commands(
    now: datetime,
    *,
    batch_rows: int = PURGE_BATCH_ROWS,
    max_rows: int = MAX_ROWS_PER_PASS,
    max_batches: int = MAX_BATCHES_PER_PASS,
    pause: float = BATCH_PAUSE_SECONDS,
    commit: Callable[[], None],
    report: Optional[Report] = None,
) -> Report:
    """Remove commands queued over ``COMMAND_KEEP`` ago that are finished (acked,
    undeliverable, expired); a queued or leased one stays whatever its age. Nothing reads
    a finished command again: an agent's late ack of a removed one is ignored, and the
    job's own row keeps its outcome."""
    report = report or Report()
    report.commands += _delete_in_batches(
        Command,
        Command.id,
        (Command.created_at < now - COMMAND_KEEP, Command.state.in_(FINISHED_COMMAND_STATES)),
        batch_rows=batch_rows,
        max_rows=max_rows,
        max_batches=max_batches,
        pause=pause,
        commit=commit,
        report=report,
    )
    return report


def purge_agent_events(
    now: datetime,
    *,
    batch_rows: int = PURGE_BATCH_ROWS,
    max_rows: int = MAX_ROWS_PER_PASS,
    max_batches: int = MAX_BATCHES_PER_PASS,
    pause: float = BATCH_PAUSE_SECONDS,
    commit: Callable[[], None],
    report: Optional[Report] = None,
) -> Report:
    """Forget event ids that arrived over ``EVENT_KEEP`` ago, ``job.progress`` ones over
    ``PROGRESS_EVENT_KEEP`` ago. They only serve to acknowledge a resent event without
    applying it again, and an agent resends an unacknowledged event at its next contact."""
    report = report or Report()
    for where in (
        # A literal, not a parameter: the planner then uses the partial index.
        (
            text("agent_events.type = 'job.progress'"),
            AgentEvent.received_at < now - PROGRESS_EVENT_KEEP,
        ),
        (AgentEvent.received_at < now - EVENT_KEEP,),
    ):
        report.agent_events += _delete_in_batches(
            AgentEvent,
            AgentEvent.event_id,
            where,
            batch_rows=batch_rows,
            max_rows=max_rows,
            max_batches=max_batches,
            pause=pause,
            commit=commit,
            report=report,
        )
    return report


def purge_resolved_alerts(
    now: datetime,
    *,
    retention_days: int,
    batch_alerts: int = ALERTS_PER_BATCH,
    max_batches: int = MAX_BATCHES_PER_PASS,
    pause: float = BATCH_PAUSE_SECONDS,
    commit: Callable[[], None],
    report: Optional[Report] = None,
) -> Report:
    """Remove alerts resolved before ``now - retention_days`` (0: keep forever) and their
    notification rows, ``batch_alerts`` alerts per committed transaction. Open (firing or
    acknowledged) alerts stay, whatever their age."""
    report = report or Report()
    if retention_days <= 0:
        return report
    cutoff = now - timedelta(days=retention_days)
    # resolved_at < cutoff implies fired_at < cutoff: ix_alerts_state_fired_at finds them.
    old = (Alert.state == "resolved", Alert.fired_at < cutoff, Alert.resolved_at < cutoff)
    for _ in range(max_batches):
        ids = list(db.session.scalars(select(Alert.id).where(*old).limit(batch_alerts)))
        if not ids:
            break
        report.notifications += db.session.execute(
            delete(Notification).where(Notification.alert_id.in_(ids)),
            execution_options={"synchronize_session": False},
        ).rowcount
        report.alerts += db.session.execute(
            delete(Alert).where(Alert.id.in_(ids)),
            execution_options={"synchronize_session": False},
        ).rowcount
        report.purge_batches += 1
        commit()
        if len(ids) < batch_alerts:
            break
        if pause:
            time.sleep(pause)
    return report


def purge_old_reminders(
    now: datetime,
    *,
    retention_days: int,
    batch_rows: int = PURGE_BATCH_ROWS,
    max_rows: int = MAX_ROWS_PER_PASS,
    max_batches: int = MAX_BATCHES_PER_PASS,
    pause: float = BATCH_PAUSE_SECONDS,
    commit: Callable[[], None],
    report: Optional[Report] = None,
) -> Report:
    """Remove reminder notifications (sent or failed) created before ``now -
    retention_days`` (0: keep them) that a newer reminder of the same alert to the same
    channel follows: an alert open for a year keeps its first notification, its newest
    reminder per channel and the recent ones. Resolved alerts go whole
    (:func:`purge_resolved_alerts`)."""
    report = report or Report()
    if retention_days <= 0:
        return report
    newer = aliased(Notification)
    report.reminders += _delete_in_batches(
        Notification,
        Notification.id,
        (
            Notification.event == "reminder",
            Notification.state.in_(("sent", "failed")),
            Notification.created_at < now - timedelta(days=retention_days),
            exists().where(
                newer.alert_id == Notification.alert_id,
                newer.channel_id == Notification.channel_id,
                newer.event == "reminder",
                newer.id > Notification.id,
            ),
        ),
        batch_rows=batch_rows,
        max_rows=max_rows,
        max_batches=max_batches,
        pause=pause,
        commit=commit,
        report=report,
    )
    return report


def purge_repo_stats(
    state: dict,
    *,
    keep: int = REPO_STATS_PER_HOST,
    hosts_per_pass: int = HOSTS_PER_PASS,
    batch_rows: int = BATCH_ROWS,
    max_rows: int = MAX_ROWS_PER_PASS,
    pause: float = BATCH_PAUSE_SECONDS,
    commit: Callable[[], None],
    report: Optional[Report] = None,
) -> Report:
    """Keep each host's newest ``keep`` size-history rows, looking at ``hosts_per_pass``
    hosts a call; ``state["repo_stats_after"]`` (the last host id done) carries the round
    over to the next call, which starts again from the first host after the last."""
    report = report or Report()
    after = state.get("repo_stats_after", 0)
    host_ids = list(
        db.session.scalars(
            select(Host.id).where(Host.id > after).order_by(Host.id).limit(hosts_per_pass)
        )
    )
    for host_id in host_ids:
        if report.repo_stats >= max_rows:
            return report  # this host again next time
        # When the newest row beyond the kept ones was taken, if there is one: the index on
        # (host_id, taken_at) alone answers it (an index-only scan on PostgreSQL), so a
        # host within the bound costs this one query.
        edge = db.session.scalar(
            select(RepoStats.taken_at)
            .where(RepoStats.host_id == host_id)
            .order_by(RepoStats.taken_at.desc())
            .offset(keep)
            .limit(1)
        )
        if edge is not None:
            mine = RepoStats.host_id == host_id
            report.repo_stats += _delete_in_batches(
                RepoStats,
                RepoStats.id,
                (mine, RepoStats.taken_at < edge),
                batch_rows=batch_rows,
                max_rows=max_rows - report.repo_stats,
                # max_rows binds first (BATCH_ROWS * MAX_BATCHES_PER_PASS > MAX_ROWS_PER_PASS)
                max_batches=MAX_BATCHES_PER_PASS,
                pause=pause,
                commit=commit,
                report=report,
            )
            if report.repo_stats >= max_rows:
                return report  # perhaps more of this host: again next time
            # Rows taken at the very moment of the edge: the lowest ids beyond ``keep`` go.
            surplus = (
                db.session.scalar(
                    select(func.count())
                    .select_from(RepoStats)
                    .where(mine, RepoStats.taken_at >= edge)
                )
                - keep
            )
            if surplus > 0:
                tied = (
                    select(RepoStats.id)
                    .where(mine, RepoStats.taken_at == edge)
                    .order_by(RepoStats.id)
                    .limit(surplus)
                    .scalar_subquery()
                )
                report.repo_stats += db.session.execute(
                    delete(RepoStats).where(RepoStats.id.in_(tied)),
                    execution_options={"synchronize_session": False},
                ).rowcount
                report.purge_batches += 1
                commit()
        state["repo_stats_after"] = host_id
    if len(host_ids) < hosts_per_pass:
        state["repo_stats_after"] = 0  # the round is done: the next call starts over
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
    purge_commands(now, pause=pause, report=report, commit=commit)
    purge_agent_events(now, pause=pause, report=report, commit=commit)
    purge_resolved_alerts(
        now,
        retention_days=config["RM_ALERT_RETENTION_DAYS"],
        pause=pause,
        report=report,
        commit=commit,
    )
    purge_repo_stats(state, pause=pause, report=report, commit=commit)
    sweep_sign_ins(now, login_window_seconds=config["RM_LOGIN_WINDOW_SECONDS"], report=report)
    commit()
    last = state.get("daily_at")
    if last is None or now - last >= DAILY:
        state["daily_at"] = now
        # No index serves this one (a scan of the notifications): once a day is enough.
        purge_old_reminders(
            now,
            retention_days=config["RM_ALERT_RETENTION_DAYS"],
            pause=pause,
            report=report,
            commit=commit,
        )
        report.sqlite = sqlite_maintenance(pause=pause)
    if report.log_rows or report.log_jobs or report.diff_rows:
        log.info(
            "housekeeping: removed %d log lines and %d diff changes of %d jobs finished"
            " over %d days ago",
            report.log_rows,
            report.diff_rows,
            report.log_jobs,
            config["RM_JOB_LOG_RETENTION_DAYS"],
        )
    if any(
        (report.commands, report.agent_events, report.alerts, report.reminders, report.repo_stats)
    ):
        log.info(
            "housekeeping: removed %d finished commands, %d agent event ids, %d resolved"
            " alerts with %d notifications, %d old reminders, %d old size-history rows",
            report.commands,
            report.agent_events,
            report.alerts,
            report.notifications,
            report.reminders,
            report.repo_stats,
        )
    return report
