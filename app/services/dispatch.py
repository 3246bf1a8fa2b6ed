"""Starting and stopping work on a host: every "Run now", restore and cancel passes here.

The HTML forms, the JSON API and (later) alerts and fleet actions call these with an
explicit actor and client address; the caller commits and wakes the host's poll.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Optional

from sqlalchemy import select

from app.extensions import db
from app.models import Command, Host, Job, Schedule
from app.secretbox import SecretBox
from app.services import audit, commands, job_params, jobs, repository, restores
from app.services.audit import Actor
from app.services.errors import Conflict
from app.services.hosts import require_online


def start_job(
    box: SecretBox,
    host: Host,
    kind: Any,
    params: Any,
    *,
    actor: Actor,
    client_address: Optional[str],
    now: datetime,
    offline_after_seconds: int,
) -> Job:
    """Validate, refuse an offline host, queue the job and audit it.

    A probe while a bring-up (probe or init) is already under way returns that job: one
    bring-up at a time, and the running one answers the question.
    """
    kind, params = job_params.validate(host, kind, params)
    require_online(host, "the job", now=now, offline_after_seconds=offline_after_seconds)
    if kind == "probe":
        running = repository.active_job(host, repository.BRING_UP_KINDS)
        if running is not None:
            return running
        job = repository.queue_probe(box, host, actor=actor, now=now)
    else:
        job = jobs.create_job(
            box,
            host,
            kind,
            params=params,
            actor=actor,
            now=now,
            secret_params=job_params.sealed_params(box, host, kind, params),
        )
    audit.record(
        actor,
        "job.started",
        target_type="job",
        target_id=job.id,
        payload={"host": host.hostname, "kind": kind, "params": params},
        client_address=client_address,
    )
    return job


def start_restore(
    box: SecretBox,
    host: Host,
    body: Any,
    *,
    actor: Actor,
    client_address: Optional[str],
    now: datetime,
    offline_after_seconds: int,
) -> Job:
    """Validate a restore request, refuse an offline host, queue the restore, audit it."""
    params = restores.validate(host, body)
    require_online(host, "the restore", now=now, offline_after_seconds=offline_after_seconds)
    job = jobs.create_job(
        box,
        host,
        "restore",
        params=params,
        actor=actor,
        now=now,
        complete_params=lambda job: (
            params if params.get("target") else dict(params, target=restores.default_target(job))
        ),
    )
    audit.record(
        actor,
        "host.restore",
        target_type="job",
        target_id=job.id,
        payload={
            "host": host.hostname,
            "snapshot": job.params["snapshot_id"][:8],
            "include": job.params["include"][:20],
            "include_count": len(job.params["include"]),
            "target": job.params["target"],
            "in_place": job.params["in_place"],
        },
        client_address=client_address,
    )
    return job


def cancel_job(
    box: SecretBox,
    job: Job,
    *,
    actor: Actor,
    client_address: Optional[str],
    now: datetime,
) -> Host:
    """Ask the agent to stop ``job`` (audited once, on the first request); returns its host.

    Raises Conflict (``job_finished``) when the job already ended.
    """
    host = db.session.get(Host, job.host_id)
    first_request = job.cancel_requested_at is None
    jobs.request_cancel(box, job, host, now=now)
    if first_request:
        audit.record(
            actor,
            "job.cancel_requested",
            target_type="job",
            target_id=job.id,
            payload={"host": host.hostname, "kind": job.kind, "status": job.status},
            client_address=client_address,
        )
    return host


def reinitialise(
    box: SecretBox,
    host: Host,
    *,
    actor: Actor,
    client_address: Optional[str],
    now: datetime,
    offline_after_seconds: int,
) -> Job:
    """Queue an init job (or return the one under way), audited as ``host.repo_reinit``.

    An existing repository is left as it is: restic refuses to initialise over it.
    """
    if host.status(now, offline_after_seconds) != "online":
        raise Conflict(
            f"{host.hostname} is offline: the agent must be connected to initialise.",
            code="host_offline",
        )
    job = repository.active_job(host, ("init",)) or jobs.create_job(
        box, host, "init", params={}, actor=actor, now=now
    )
    audit.record(
        actor,
        "host.repo_reinit",
        target_type="host",
        target_id=host.id,
        payload={"host": host.hostname, "job_id": job.id},
        client_address=client_address,
    )
    return job


def watch_job(box: SecretBox, job: Job, *, now: datetime) -> Optional[Host]:
    """Ask the agent to flush ``job`` every second (docs/protocol.md, "Watched jobs"):
    queues a ``job.watch`` unless one already waits; returns the host when it queued one."""
    pending = db.session.scalar(
        select(Command.id)
        .where(
            Command.job_id == job.id,
            Command.type == "job.watch",
            Command.state.in_(("queued", "leased")),
        )
        .limit(1)
    )
    if pending is not None:
        return None
    host = db.session.get(Host, job.host_id)
    commands.enqueue(box, host, "job.watch", payload={}, job=job, now=now)
    return host


def run_schedule_now(
    box: SecretBox,
    host: Host,
    schedule: Schedule,
    *,
    actor: Actor,
    client_address: Optional[str],
    now: datetime,
    offline_after_seconds: int,
) -> list[Job]:
    """A schedule's backups, now: one backup job per source group, in the schedule's order,
    each started like a manual "Run backup" (host-wide limits, the group's hooks) and
    counted as the schedule's run. A disabled schedule runs too: this is a manual run.

    Any refusal (an offline host, a group without paths) starts none of them; the caller
    rolls back. Audited as ``schedule.run_now`` (and each job as ``job.started``).
    """
    groups = list(schedule.source_groups)
    if not groups:
        raise Conflict(
            f"Schedule {schedule.name} has no source groups: there is nothing to back up.",
            code="schedule_empty",
        )
    started = []
    for group in groups:
        job = start_job(
            box,
            host,
            "backup",
            {"group": group.name},
            actor=actor,
            client_address=client_address,
            now=now,
            offline_after_seconds=offline_after_seconds,
        )
        job.schedule_id = schedule.id
        started.append(job)
    audit.record(
        actor,
        "schedule.run_now",
        target_type="schedule",
        target_id=schedule.id,
        payload={
            "host": host.hostname,
            "name": schedule.name,
            "enabled": schedule.enabled,
            "groups": [group.name for group in groups],
            "job_ids": [job.id for job in started],
        },
        client_address=client_address,
    )
    db.session.flush()
    return started
