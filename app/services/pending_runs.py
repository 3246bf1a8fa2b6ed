"""Runs that could not reach an offline host: queued, dispatched once it is back.

A row is dispatched when its agent says hello and by the periodic tick. Each tick that
finds the host still offline counts an attempt and backs off exponentially (the group's
``retry_backoff_seconds``, doubling, capped at 30 minutes); past the group's ``retry_max``,
or when its schedule or group is gone, the row is abandoned and audited. A row is claimed
with a conditional UPDATE before its job is created, so two callers never both dispatch it.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Optional

from sqlalchemy import select, update

from app.extensions import db
from app.models import Host, Job, PendingRun, Schedule, SourceGroup
from app.secretbox import SecretBox
from app.services import audit, job_params
from app.services.audit import Actor
from app.services.errors import ValidationFailed

log = logging.getLogger("restic_manager.pending_runs")

MAX_BACKOFF = timedelta(minutes=30)
ACTOR = Actor.system("pending runs")


def enqueue(
    host: Host,
    schedule: Schedule,
    group: SourceGroup,
    due_at: datetime,
    *,
    now: Optional[datetime] = None,
) -> PendingRun:
    """Queue a backup of ``group`` that ``schedule`` wanted at ``due_at``."""
    now = now or due_at
    row = PendingRun(
        host_id=host.id,
        schedule_id=schedule.id,
        source_group_id=group.id,
        kind="backup",
        state="pending",
        attempts=0,
        due_at=due_at,
        next_attempt_at=due_at,
        created_at=now,
        updated_at=now,
    )
    db.session.add(row)
    db.session.flush()
    return row


def backoff(group: SourceGroup, attempts: int) -> timedelta:
    """Wait after the ``attempts``-th failed attempt: base * 2^(attempts-1), at most 30 min."""
    base = max(1, group.retry_backoff_seconds or 1)
    exponent = min(max(attempts - 1, 0), 20)  # 2^20 seconds is already far past the cap
    return min(timedelta(seconds=base * 2**exponent), MAX_BACKOFF)


def _gone(row: PendingRun) -> Optional[str]:
    """Why the row can no longer run, or None."""
    schedule = db.session.get(Schedule, row.schedule_id) if row.schedule_id else None
    group = db.session.get(SourceGroup, row.source_group_id) if row.source_group_id else None
    if schedule is None:
        return "its schedule was deleted"
    if group is None:
        return "its source group was deleted"
    if group.id not in {member.id for member in schedule.source_groups}:
        return f"source group {group.name!r} is no longer in the schedule"
    return None


def _abandon(row: PendingRun, host: Host, reason: str, now: datetime) -> None:
    row.state = "abandoned"
    row.reason = reason[:1000]
    row.updated_at = now
    audit.record(
        ACTOR,
        "pending_run.abandoned",
        target_type="pending_run",
        target_id=row.id,
        payload={
            "host": host.hostname,
            "schedule_id": row.schedule_id,
            "source_group_id": row.source_group_id,
            "due_at": row.due_at.isoformat(),
            "attempts": row.attempts,
            "reason": row.reason,
        },
    )
    log.info("%s: pending run %s abandoned: %s", host.hostname, row.id, reason)


def claim(row: PendingRun, state: str, now: datetime) -> bool:
    """pending → ``state``, only if nobody else got there first; reloads the row."""
    result = db.session.execute(
        update(PendingRun)
        .where(PendingRun.id == row.id, PendingRun.state == "pending")
        .values(state=state, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    db.session.refresh(row)
    return result.rowcount == 1


def dispatch(box: SecretBox, row: PendingRun, host: Host, now: datetime) -> Optional[Job]:
    """Claim the row and queue its backup; None when it was claimed elsewhere or abandoned."""
    from app.services.jobs import create_job

    reason = _gone(row)
    if reason is None:
        group = db.session.get(SourceGroup, row.source_group_id)
        try:
            kind, params = job_params.validate(host, row.kind, {"group": group.name})
        except ValidationFailed as refused:
            reason = refused.message
    if reason is not None:
        if claim(row, "abandoned", now):
            _abandon(row, host, reason, now)
        return None
    if not claim(row, "dispatched", now):
        return None
    job = create_job(box, host, kind, params=params, actor=ACTOR, now=now)
    job.schedule_id = row.schedule_id
    row.job_id = job.id
    db.session.flush()
    log.info("%s: pending run %s dispatched as job %s", host.hostname, row.id, job.id)
    return job


def dispatch_for_host(box: SecretBox, host: Host, *, now: datetime) -> list[Job]:
    """The host is back: every pending row runs now, whatever its back-off said."""
    rows = db.session.scalars(
        select(PendingRun)
        .where(PendingRun.host_id == host.id, PendingRun.state == "pending")
        .order_by(PendingRun.due_at, PendingRun.id)
    )
    return [job for row in list(rows) if (job := dispatch(box, row, host, now)) is not None]


def run_due(box: SecretBox, now: datetime, *, offline_after_seconds: int) -> list[Job]:
    """The periodic pass: dispatch rows whose host is online; back off or give up otherwise."""
    dispatched = []
    rows = db.session.scalars(
        select(PendingRun)
        .where(PendingRun.state == "pending", PendingRun.next_attempt_at <= now)
        .order_by(PendingRun.next_attempt_at, PendingRun.id)
    )
    for row in list(rows):
        host = db.session.get(Host, row.host_id)
        if host.status(now, offline_after_seconds) == "online":
            job = dispatch(box, row, host, now)
            if job is not None:
                dispatched.append(job)
            continue
        _missed(row, host, now)
    return dispatched


def _missed(row: PendingRun, host: Host, now: datetime) -> None:
    """The host is still offline: count the attempt, then back off or abandon."""
    reason = _gone(row)
    group = db.session.get(SourceGroup, row.source_group_id) if row.source_group_id else None
    row.attempts += 1
    row.updated_at = now
    if reason is None and row.attempts > group.retry_max:
        reason = (
            f"{host.hostname} stayed offline through {group.retry_max} "
            f"retr{'y' if group.retry_max == 1 else 'ies'}"
        )
    if reason is not None:
        if claim(row, "abandoned", now):
            _abandon(row, host, reason, now)
        return
    row.next_attempt_at = now + backoff(group, row.attempts)
    db.session.flush()
