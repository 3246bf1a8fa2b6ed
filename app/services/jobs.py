"""Job lifecycle: creation, scheduled runs the agent registers, cancel, the end of a job
(lost jobs included), log records. Agent events are applied in ``events`` (above this
module)."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Callable, Optional

from sqlalchemy import insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from app.extensions import db
from app.formatting import duration_words
from app.models import Command, Host, Job, JobLog, Schedule, SourceGroup
from app.secretbox import SecretBox
from app.services import audit, commands, hosts
from app.services.audit import Actor
from app.services.errors import Conflict, NotFound, ServiceError

LOG_STREAMS = frozenset({"stdout", "stderr", "agent"})
SUCCESSFUL_BACKUP_STATUSES = frozenset({"succeeded", "warning"})  # a snapshot was saved
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


def _registered_run(host: Host, run_id: str) -> Optional[Job]:
    job = db.session.scalar(select(Job).where(Job.run_id == run_id))
    if job is not None and job.host_id != host.id:
        raise Conflict(f"Run {run_id} belongs to another host.", code="run_id_taken")
    return job


def register_scheduled_run(
    host: Host,
    *,
    run_id: str,
    schedule_id: Optional[int],
    params: dict,
    fired_at: datetime,
    now: datetime,
) -> tuple[Job, bool]:
    """The job of a backup the agent started on its own (a schedule fired), and whether it
    is new: the same ``run_id`` registered again answers with its job. A ``run_id`` of
    another host is a :class:`Conflict`. A schedule deleted since (or another host's) is
    named "deleted schedule".
    """
    job = _registered_run(host, run_id)
    if job is not None:
        return job, False
    schedule = db.session.get(Schedule, schedule_id) if schedule_id is not None else None
    if schedule is not None and schedule.host_id != host.id:
        schedule = None
    job = Job(
        host_id=host.id,
        kind="backup",
        status="queued",
        attempt_id=uuid.uuid4().hex,
        actor_type="schedule",
        actor_label=schedule.name if schedule else "deleted schedule",
        params=params,
        schedule_id=schedule.id if schedule else None,
        run_id=run_id,
        created_at=min(fired_at, now),  # when it really started; registration may come later
        boot_id=host.boot_id,  # the agent run that registered it (see agents.reconcile)
    )
    try:
        with db.session.begin_nested():
            db.session.add(job)
    except IntegrityError:
        # The same run registered concurrently (a retry racing the first try): answer with it.
        job = _registered_run(host, run_id)
        if job is None:
            raise
        return job, False
    return job, True


def request_cancel(box: SecretBox, job: Job, host: Host, *, now: datetime) -> None:
    """Ask the agent to stop the job; a queued job that never started is cancelled at once."""
    if job.is_terminal:
        raise Conflict(f"Job {job.id} already ended ({job.status}).", code="job_finished")
    if job.cancel_requested_at is None:
        job.cancel_requested_at = now
        commands.enqueue(box, host, "job.cancel", payload={}, job=job, now=now)
    if job.status == "queued":
        finish(job, "cancelled", now, error="Cancelled before it started.")
        note_backup_finished(host, job)
    db.session.flush()


def job_state(job: Job) -> str:
    """What the agent is told about a job on log/event answers."""
    if job.cancel_requested_at is not None and not job.is_terminal:
        return "cancelling"
    return job.status


def finish(job: Job, status: str, now: datetime, *, error: Optional[str] = None) -> None:
    """The job ended with ``status`` at ``now`` (an error message is kept short)."""
    job.status = status
    job.finished_at = now
    if error is not None:
        job.error = error[:2000]


def note_backup_finished(host: Host, job: Job) -> None:
    """The dashboard's "last backup" columns: the latest result, and the latest success.

    A ``warning`` counts as a success here: its snapshot exists and can be restored (the
    latest result still shows the warning).
    """
    if job.kind != "backup":
        return
    if (host.last_backup_job_id or 0) <= job.id:
        host.last_backup_job_id = job.id
        host.last_backup_status = job.status
        host.last_backup_at = job.finished_at
    if (
        job.status in SUCCESSFUL_BACKUP_STATUSES
        and (host.last_successful_backup_job_id or 0) <= job.id
    ):
        host.last_successful_backup_job_id = job.id
        host.last_successful_backup_at = job.finished_at
    if job.status in SUCCESSFUL_BACKUP_STATUSES and job.finished_at is not None:
        group = db.session.scalar(
            select(SourceGroup).where(
                SourceGroup.host_id == host.id,
                SourceGroup.name == ((job.params or {}).get("group") or "default"),
            )
        )
        if group is not None and (
            group.last_successful_backup_at is None
            or group.last_successful_backup_at < job.finished_at
        ):
            group.last_successful_backup_at = job.finished_at


# --- lost jobs ---------------------------------------------------------------------------

LOST_ACTOR = Actor.system("lost-job timeout")


def mark_lost(
    now: datetime,
    *,
    lost_after_seconds: int,
    offline_after_seconds: int,
    listening_since: Optional[datetime] = None,
) -> list[Job]:
    """End ``lost`` every queued or running job whose host has been silent too long.

    Silent: no poll or hello for ``lost_after_seconds`` (and at least the offline time), and
    the job is at least that old. Only silence the server heard counts: until it has been
    listening that long (``listening_since``, when its ticker started) nothing is lost, so
    a server that was down does not blame the agents for it. A queued job's undelivered or
    unacknowledged ``job.run`` is withdrawn, so it does not start hours later. Idempotent;
    returns the jobs it ended.
    """
    silence = timedelta(seconds=max(lost_after_seconds, offline_after_seconds))
    cutoff = now - silence
    if listening_since is not None and listening_since > cutoff:
        return []
    stuck = db.session.scalars(
        select(Job)
        .join(Host, Host.id == Job.host_id)
        .where(
            Job.status.in_(("queued", "running")),
            Job.created_at <= cutoff,
            or_(Host.last_seen_at.is_(None), Host.last_seen_at <= cutoff),
        )
        .order_by(Job.id)
        .with_for_update(of=Job, skip_locked=True)
    ).all()
    for job in stuck:
        host = db.session.get(Host, job.host_id)
        was = job.status
        if was == "queued":
            _withdraw_job_run(job)
        finish(job, "lost", now, error=lost_reason(host, was, now))
        note_backup_finished(host, job)
        audit.record(
            LOST_ACTOR,
            "job.lost",
            target_type="job",
            target_id=job.id,
            payload={
                "host_id": host.id,
                "hostname": host.hostname,
                "was": was,
                "last_seen_at": host.last_seen_at.isoformat() if host.last_seen_at else None,
            },
        )
    db.session.flush()
    return stuck


def lost_reason(host: Host, was: str, now: datetime) -> str:
    """The sentence a lost job shows: whose silence, since when, what happens next."""
    if host.last_seen_at is None:
        heard = f"The agent on {host.hostname} has never been heard from"
    else:
        silent = duration_words((now - host.last_seen_at).total_seconds())
        since = host.last_seen_at.strftime("%Y-%m-%d %H:%M UTC")
        heard = f"The agent on {host.hostname} has not been heard from for {silent} (since {since})"
    if was == "queued":
        return (
            f"{heard}, so the job never started: it was marked lost and is not sent again. "
            "If the agent already has it and reports it, its result is recorded."
        )
    return (
        f"{heard}: the job was marked lost. "
        "If the agent comes back and reports it, its result is recorded."
    )


def _withdraw_job_run(job: Job) -> None:
    """The agent has not acknowledged this job's ``job.run``: it is not delivered again."""
    db.session.execute(
        update(Command)
        .where(
            Command.job_id == job.id,
            Command.type == "job.run",
            Command.state.in_(("queued", "leased")),
        )
        .values(
            state="undeliverable",
            result="withdrawn: the job was marked lost",
            lease_expires_at=None,
        )
    )


def revive(job: Job, host: Host, *, started_at: Optional[datetime] = None) -> None:
    """A ``lost`` job its agent reports as running after all: it runs again (truth wins)."""
    if job.status != "lost":
        return
    job.status = "running"
    job.finished_at = None
    job.error = None
    job.started_at = job.started_at or started_at
    job.boot_id = host.boot_id


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


MAX_PAGE = 200


def list_jobs(
    *,
    host_id: Optional[int] = None,
    kind: Optional[str] = None,
    status: Optional[str] = None,
    tag: Optional[str] = None,
    before_id: Optional[int] = None,
    limit: int = MAX_PAGE,
) -> list[Job]:
    """Newest first, keyset-paged: ``before_id`` is the last id of the previous page, so a
    page never shifts when new jobs arrive. ``tag``: jobs of the hosts carrying it now."""
    query = select(Job).order_by(Job.id.desc())
    if host_id is not None:
        query = query.where(Job.host_id == host_id)
    if kind is not None:
        query = query.where(Job.kind == kind)
    if status is not None:
        query = query.where(Job.status == status)
    if tag is not None:
        query = query.where(Job.host_id.in_(hosts.tagged_host_ids(tag)))
    if before_id is not None:
        query = query.where(Job.id < before_id)
    return list(db.session.scalars(query.limit(max(1, min(limit, MAX_PAGE)))))


def get_job(job_id: int) -> Job:
    """The job with this id; :class:`NotFound` (404) when there is none."""
    job = db.session.get(Job, job_id)
    if job is None:
        raise NotFound(f"No job with id {job_id}.")
    return job
