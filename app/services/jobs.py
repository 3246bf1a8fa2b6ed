"""Job lifecycle as reported by agents: creation, events, log records, cancel."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Optional

from sqlalchemy import insert, select

from app.extensions import db
from app.models import AgentEvent, Host, Job, JobLog
from app.secretbox import SecretBox
from app.services import commands
from app.services.audit import Actor
from app.services.errors import Conflict, NotFound, ServiceError

FINISHED_STATUSES = frozenset({"succeeded", "warning", "failed", "cancelled"})
LOG_STREAMS = frozenset({"stdout", "stderr", "agent"})
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
    box: SecretBox, host: Host, kind: str, *, params: dict, actor: Actor, now: datetime
) -> Job:
    """Queue a job and the job.run command that carries it to the agent."""
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
    commands.enqueue(
        box, host, "job.run", payload={"kind": kind, "params": params}, job=job, now=now
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


def apply_event(host: Host, event: Event, *, now: datetime) -> Optional[tuple[str, str]]:
    """Store and apply one event once. Returns (error code, message) when it is refused."""
    if db.session.get(AgentEvent, event.event_id) is not None:
        return None  # seen before: acknowledged again, applied once
    refusal = _apply(host, event, now)
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


def _apply(host: Host, event: Event, now: datetime) -> Optional[tuple[str, str]]:
    if event.type == "repo.status":
        status = str(event.data.get("status", ""))[:32]
        if status not in {"ready", "missing", "error", "init_failed"}:
            return ("invalid_event", f"Unknown repository status {status!r}.")
        host.repo_status = status
        host.repo_status_reason = (str(event.data.get("reason") or "")[:1000]) or None
        return None
    if event.type == "agent.spool_dropped":
        from app.services import audit

        audit.record(
            Actor.for_agent(host),
            "agent.spool_dropped",
            target_type="host",
            target_id=host.id,
            payload={
                "events": int(event.data.get("events") or 0),
                "log_records": int(event.data.get("log_records") or 0),
            },
        )
        return None
    if not event.type.startswith("job."):
        return ("invalid_event", f"Unknown event type {event.type!r}.")
    job = _job_of(host, event)
    if isinstance(job, tuple):
        return job
    if event.type == "job.started":
        if job.status == "queued":
            job.status = "running"
            job.started_at = event.ts
            job.boot_id = host.boot_id
        return None
    if event.type == "job.progress":
        if not job.is_terminal:
            job.progress = {k: v for k, v in event.data.items() if isinstance(k, str)}
        return None
    if event.type == "job.finished":
        status = event.data.get("status")
        if status not in FINISHED_STATUSES:
            return ("invalid_event", f"Unknown job status {status!r}.")
        if job.is_terminal and job.status != "lost":
            return None  # first terminal status wins; a real result replaces a "lost" guess
        job.started_at = job.started_at or event.ts
        _finish(job, status, event.ts, error=event.data.get("error") or None)
        if status != "failed" and job.error and not event.data.get("error"):
            job.error = None
        exit_code = event.data.get("exit_code")
        job.exit_code = exit_code if isinstance(exit_code, int) else None
        stats = event.data.get("stats")
        job.stats = stats if isinstance(stats, dict) else {}
        dropped = event.data.get("lines_dropped")
        job.lines_dropped = dropped if isinstance(dropped, int) and dropped > 0 else 0
        return None
    return ("invalid_event", f"Unknown event type {event.type!r}.")


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
