"""Agent events (docs/protocol.md): each stored once and applied to jobs, the repository
state, snapshots, size history, diffs and schedules.

This module sits above ``jobs``, ``repository``, ``diffs`` and ``schedules`` and only the
agent door imports it, so none of those needs the others to apply what an agent reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Optional

from app.extensions import db
from app.models import AgentEvent, Host, Job
from app.secretbox import SecretBox
from app.services import alerts, audit, diffs, jobs, repo_locks, repository, schedules
from app.services.audit import Actor
from app.services.errors import EventRejected

FINISHED_STATUSES = frozenset({"succeeded", "warning", "failed", "cancelled"})
JOB_EVENT_TYPES = frozenset(
    {
        "job.started",
        "job.progress",
        "job.finished",
        "repo.status",
        "snapshots.report",
        "repo.stats",
        "diff.report",
    }
)


@dataclass
class Event:
    event_id: str
    type: str
    job_id: Optional[int]
    attempt_id: Optional[str]
    ts: datetime
    data: dict


def apply_event(
    host: Host, event: Event, *, now: datetime, box: Optional[SecretBox] = None
) -> None:
    """Store and apply one event once; raises :class:`EventRejected` when it is refused.

    A refused event is still recorded as seen: a resent copy is acknowledged, not refused
    again. ``box`` lets an event queue follow-up jobs (a missing repository gets an init job).
    """
    if db.session.get(AgentEvent, event.event_id) is not None:
        return  # seen before: acknowledged again, applied once
    try:
        _apply(host, event, now, box)
    except EventRejected:
        _record_seen(host, event, now)
        raise
    _record_seen(host, event, now)


def _record_seen(host: Host, event: Event, now: datetime) -> None:
    db.session.add(
        AgentEvent(
            event_id=event.event_id,
            host_id=host.id,
            type=event.type,
            job_id=event.job_id,
            ts=event.ts,
            received_at=now,
        )
    )
    db.session.flush()


def _job_of(host: Host, event: Event) -> Job:
    job = db.session.get(Job, event.job_id, with_for_update=True) if event.job_id else None
    if job is None or job.host_id != host.id:
        raise EventRejected("unknown_job", f"Job {event.job_id} does not exist on this host.")
    if job.attempt_id != event.attempt_id:
        raise EventRejected(
            "stale_attempt", f"Attempt {event.attempt_id} is not job {job.id}'s current one."
        )
    return job


def _spool_dropped(host: Host, event: Event) -> None:
    audit.record(
        Actor.for_agent(host),
        "agent.spool_dropped",
        target_type="host",
        target_id=host.id,
        payload={
            "events": _non_negative(event.data.get("events")),
            "log_records": _non_negative(event.data.get("log_records")),
        },
    )


def _non_negative(value) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _apply(host: Host, event: Event, now: datetime, box: Optional[SecretBox]) -> None:
    if event.type == "agent.spool_dropped":
        _spool_dropped(host, event)
        return
    if event.type == "schedule.applied":
        schedules.apply_ack(host, event.data)
        return
    if event.type not in JOB_EVENT_TYPES:
        raise EventRejected("invalid_event", f"Unknown event type {event.type!r}.")
    job = _job_of(host, event)
    if event.type == "repo.status":
        status = event.data.get("status")
        reason = event.data.get("reason")
        repository.apply_status(
            box, host, job, str(status)[:32], reason if isinstance(reason, str) else None, now
        )
        alerts.on_repo_status(host, job, now)
    elif event.type == "snapshots.report":
        repository.replace_snapshots(host, event.data, now=now)
    elif event.type == "repo.stats":
        repository.record_stats(host, job, event.data, now=event.ts)
    elif event.type == "diff.report":
        diffs.record_batch(job, event.data)
    elif event.type == "job.started":
        if job.status == "queued":
            job.status = "running"
            job.started_at = event.ts
            job.boot_id = host.boot_id
        jobs.revive(job, host, started_at=event.ts)  # a late start of a job marked lost
    elif event.type == "job.progress":
        jobs.revive(job, host, started_at=event.ts)
        if not job.is_terminal:
            job.progress = _progress(event.data)
    else:
        _job_finished(host, job, event, now)


def _progress(data: dict) -> dict:
    """Numbers and a few short paths; nothing else reaches the database."""
    progress = {}
    for key, value in data.items():
        if not isinstance(key, str) or len(key) > 32:
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            progress[key] = value
        elif key == "current_files" and isinstance(value, list):
            progress[key] = [item[:1024] for item in value[:4] if isinstance(item, str)]
    return progress


def _job_finished(host: Host, job: Job, event: Event, now: datetime) -> None:
    status = event.data.get("status")
    if status not in FINISHED_STATUSES:
        raise EventRejected("invalid_event", f"Unknown job status {status!r}.")
    if job.is_terminal and job.status != "lost":
        return  # first terminal status wins; a real result replaces a "lost" guess
    if job.status == "lost":
        job.error = None  # the guess's reason; the agent's own error (if any) follows
    job.started_at = job.started_at or event.ts
    error = event.data.get("error")
    jobs.finish(job, status, event.ts, error=error if isinstance(error, str) and error else None)
    if status != "failed" and job.error and not event.data.get("error"):
        job.error = None
    exit_code = event.data.get("exit_code")
    job.exit_code = (
        exit_code if isinstance(exit_code, int) and not isinstance(exit_code, bool) else None
    )
    stats = event.data.get("stats")
    job.stats = stats if isinstance(stats, dict) else {}
    job.lines_dropped = _non_negative(event.data.get("lines_dropped"))
    jobs.note_backup_finished(host, job)
    repo_locks.note_job_finished(host, job)
    alerts.on_job_finished(host, job, now)
