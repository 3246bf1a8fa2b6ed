"""Job lifecycle as reported by agents: creation, events, log records, cancel."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Callable, Optional

from sqlalchemy import insert, select

from app.extensions import db
from app.models import AgentEvent, Host, Job, JobLog
from app.secretbox import SecretBox
from app.services import commands, diffs, repository, schedules
from app.services.audit import Actor
from app.services.errors import Conflict, NotFound, ServiceError

FINISHED_STATUSES = frozenset({"succeeded", "warning", "failed", "cancelled"})
LOG_STREAMS = frozenset({"stdout", "stderr", "agent"})
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
MAX_LOG_TEXT = 16 * 1024


class LogGap(ServiceError):
    status = 416
    code = "log_gap"

    def __init__(self, committed_seq: int):
        super().__init__(
            f"Log records are missing: the server has up to seq {committed_seq}; "
            f"resend from {committed_seq + 1}."
        )
        self.committed_seq = committed_seq


class StaleAttempt(ServiceError):
    status = 409
    code = "stale_attempt"


def create_job(
    box: SecretBox,
    host: Host,
    kind: str,
    *,
    params: dict,
    actor: Actor,
    now: datetime,
    secret_params: Optional[dict] = None,
    complete_params: Optional[Callable[[Job], dict]] = None,
) -> Job:
    """Queue a job and the job.run command that carries it to the agent.

    ``complete_params`` fills in what depends on the job's id (a restore's default target).

    ``secret_params`` (a backup's hooks) reach the agent merged into ``params`` on delivery
    only: they are sealed in the command, never stored in the job.
    """
    job = Job(
        host_id=host.id,
        kind=kind,
        status="queued",
        attempt_id=uuid.uuid4().hex,
        actor_type=actor.type,
        actor_label=actor.label,
        params=params,
        created_at=now,
    )
    db.session.add(job)
    db.session.flush()
    if complete_params is not None:
        params = job.params = complete_params(job)
    commands.enqueue(
        box,
        host,
        "job.run",
        payload={"kind": kind, "params": params},
        secret_payload={"params": secret_params} if secret_params else None,
        job=job,
        now=now,
    )
    return job


def request_cancel(box: SecretBox, job: Job, host: Host, *, now: datetime) -> None:
    """Ask the agent to stop the job; a queued job that never started is cancelled at once."""
    if job.is_terminal:
        raise Conflict(f"Job {job.id} already ended ({job.status}).", code="job_finished")
    if job.cancel_requested_at is None:
        job.cancel_requested_at = now
        commands.enqueue(box, host, "job.cancel", payload={}, job=job, now=now)
    if job.status == "queued":
        _finish(job, "cancelled", now, error="Cancelled before it started.")
        repository.note_backup_finished(host, job)
    db.session.flush()


def job_state(job: Job) -> str:
    """What the agent is told about a job on log/event answers."""
    if job.cancel_requested_at is not None and not job.is_terminal:
        return "cancelling"
    return job.status


def _finish(job: Job, status: str, now: datetime, *, error: Optional[str] = None) -> None:
    job.status = status
    job.finished_at = now
    if error is not None:
        job.error = error[:2000]


# --- events --------------------------------------------------------------------------------


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
) -> Optional[tuple[str, str]]:
    """Store and apply one event once. Returns (error code, message) when it is refused.

    ``box`` lets an event queue follow-up jobs (a missing repository gets an init job).
    """
    if db.session.get(AgentEvent, event.event_id) is not None:
        return None  # seen before: acknowledged again, applied once
    refusal = _apply(host, event, now, box)
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
    return refusal


def _job_of(host: Host, event: Event) -> Job | tuple[str, str]:
    job = db.session.get(Job, event.job_id, with_for_update=True) if event.job_id else None
    if job is None or job.host_id != host.id:
        return ("unknown_job", f"Job {event.job_id} does not exist on this host.")
    if job.attempt_id != event.attempt_id:
        return ("stale_attempt", f"Attempt {event.attempt_id} is not job {job.id}'s current one.")
    return job


def _spool_dropped(host: Host, event: Event) -> None:
    from app.services import audit

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


def _apply(
    host: Host, event: Event, now: datetime, box: Optional[SecretBox]
) -> Optional[tuple[str, str]]:
    if event.type == "agent.spool_dropped":
        _spool_dropped(host, event)
        return None
    if event.type == "schedule.applied":
        return schedules.apply_ack(host, event.data)
    if event.type not in JOB_EVENT_TYPES:
        return ("invalid_event", f"Unknown event type {event.type!r}.")
    job = _job_of(host, event)
    if isinstance(job, tuple):
        return job
    if event.type == "repo.status":
        status = event.data.get("status")
        reason = event.data.get("reason")
        return repository.apply_status(
            box, host, job, str(status)[:32], reason if isinstance(reason, str) else None, now
        )
    if event.type == "snapshots.report":
        return repository.replace_snapshots(host, event.data, now=now)
    if event.type == "repo.stats":
        return repository.record_stats(host, job, event.data, now=event.ts)
    if event.type == "diff.report":
        return diffs.record_batch(job, event.data)
    if event.type == "job.started":
        if job.status == "queued":
            job.status = "running"
            job.started_at = event.ts
            job.boot_id = host.boot_id
        return None
    if event.type == "job.progress":
        if not job.is_terminal:
            job.progress = _progress(event.data)
        return None
    return _job_finished(host, job, event)


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


def _job_finished(host: Host, job: Job, event: Event) -> Optional[tuple[str, str]]:
    status = event.data.get("status")
    if status not in FINISHED_STATUSES:
        return ("invalid_event", f"Unknown job status {status!r}.")
    if job.is_terminal and job.status != "lost":
        return None  # first terminal status wins; a real result replaces a "lost" guess
    job.started_at = job.started_at or event.ts
    error = event.data.get("error")
    _finish(job, status, event.ts, error=error if isinstance(error, str) and error else None)
    if status != "failed" and job.error and not event.data.get("error"):
        job.error = None
    exit_code = event.data.get("exit_code")
    job.exit_code = (
        exit_code if isinstance(exit_code, int) and not isinstance(exit_code, bool) else None
    )
    stats = event.data.get("stats")
    job.stats = stats if isinstance(stats, dict) else {}
    job.lines_dropped = _non_negative(event.data.get("lines_dropped"))
    repository.note_backup_finished(host, job)
    return None


# --- log records ---------------------------------------------------------------------------


def get_job_for_agent(host: Host, job_id: int) -> Job:
    job = db.session.get(Job, job_id, with_for_update=True)
    if job is None or job.host_id != host.id:
        raise NotFound(f"Job {job_id} does not exist on this host.", code="unknown_job")
    return job


def append_logs(
    job: Job, *, attempt_id: str, first_seq: int, records: list[dict], max_records: int
) -> dict:
    """Store a batch in order; overlap is skipped, a gap is refused with the committed seq."""
    if job.attempt_id != attempt_id:
        raise StaleAttempt(f"Attempt {attempt_id} is not job {job.id}'s current one.")
    committed = job.log_committed_seq
    if first_seq > committed + 1:
        raise LogGap(committed)
    fresh = records[committed + 1 - first_seq :]
    room = max(0, max_records - committed)
    if len(fresh) > room:
        fresh = fresh[:room]
        job.log_truncated = True
    if fresh:
        start = committed + 1
        db.session.execute(
            insert(JobLog),
            [
                {
                    "job_id": job.id,
                    "seq": start + offset,
                    "ts": record["ts"],
                    "stream": record["stream"],
                    "text": record["text"],
                }
                for offset, record in enumerate(fresh)
            ],
        )
        job.log_committed_seq = start + len(fresh) - 1
    db.session.flush()
    return {
        "committed_seq": job.log_committed_seq,
        "job_state": job_state(job),
        "truncated": job.log_truncated,
    }


def log_records(job: Job, after_seq: int = 0, limit: int = 1000) -> list[JobLog]:
    return list(
        db.session.scalars(
            select(JobLog)
            .where(JobLog.job_id == job.id, JobLog.seq > after_seq)
            .order_by(JobLog.seq)
            .limit(limit)
        )
    )
