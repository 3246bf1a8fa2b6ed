"""Repository maintenance driven by the server's ticker: forget, prune and check on cadence.

The last run of each task is read from the jobs table (queued and running jobs count): a
prune that is still queued or running suppresses the next one, slots missed meanwhile are
caught up once, and a tick repeated within the same cron slot dispatches nothing.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Optional

from croniter import croniter
from sqlalchemy import select

from app.extensions import db
from app.models import Host, Job, RepoMaintenance, SourceGroup
from app.secretbox import SecretBox
from app.services import job_params
from app.services.audit import Actor
from app.services.errors import ValidationFailed
from app.services.jobs import create_job

log = logging.getLogger("restic_manager.maintenance")

TASKS = ("forget", "prune", "check")
ACTOR = Actor.system("maintenance")


def settings_of(host: Host) -> Optional[RepoMaintenance]:
    return db.session.get(RepoMaintenance, host.id)


def last_job(host: Host, kind: str) -> Optional[Job]:
    """The newest job of this kind on the host, whatever its status."""
    return db.session.scalar(
        select(Job)
        .where(Job.host_id == host.id, Job.kind == kind)
        .order_by(Job.created_at.desc(), Job.id.desc())
        .limit(1)
    )


def cron_of(settings: RepoMaintenance, task: str) -> Optional[str]:
    return getattr(settings, f"{task}_cron")


def previous_fire(cron: str, now: datetime) -> datetime:
    return croniter(cron, now).get_prev(datetime)


def next_fire(cron: str, now: datetime) -> datetime:
    return croniter(cron, now).get_next(datetime)


def is_due(settings: RepoMaintenance, task: str, host: Host, now: datetime) -> bool:
    """Due when the cron fired after the last such job was created and none is active.

    With no job yet, the anchor is when the cadence was last saved: turning maintenance on
    waits for the first slot instead of pruning at once.
    """
    cron = cron_of(settings, task)
    if not cron:
        return False
    latest = last_job(host, task)
    if latest is not None and latest.status in ("queued", "running"):
        return False  # a long prune is not joined by a second one
    anchor = latest.created_at if latest is not None else settings.updated_at
    return previous_fire(cron, now) > anchor


def forget_params(host: Host) -> Optional[dict]:
    """One forget job for every source group with a retention policy, each on its own tag."""
    groups = []
    for group in db.session.scalars(
        select(SourceGroup).where(SourceGroup.host_id == host.id).order_by(SourceGroup.name)
    ):
        if not group.retention:
            continue
        try:
            _, checked = job_params.validate(
                host, "forget", {"policy": dict(group.retention), "tags": [group.name]}
            )
        except ValidationFailed as refused:
            log.warning(
                "%s: source group %r has an unusable retention policy (%s); not forgotten",
                host.hostname,
                group.name,
                refused.message,
            )
            continue
        groups.append({"tag": group.name, "policy": checked["policy"]})
    if not groups:
        return None
    return {"groups": groups, "group_by": "host,paths", "dry_run": False}


def task_params(host: Host, settings: RepoMaintenance, task: str) -> Optional[dict]:
    """The job's params, or None when there is nothing to do (forget without retention)."""
    if task == "forget":
        return forget_params(host)
    if task == "check":
        percent = settings.check_subset_percent
        return {"read_data_subset": f"{percent:g}%" if percent else None}
    return {}


def run_due(box: SecretBox, now: datetime, *, offline_after_seconds: int) -> list[Job]:
    """Dispatch every maintenance task whose slot has come; offline hosts are skipped."""
    dispatched = []
    rows = db.session.execute(
        select(RepoMaintenance, Host)
        .join(Host, Host.id == RepoMaintenance.host_id)
        .where(RepoMaintenance.enabled.is_(True))
        .order_by(Host.id)
    )
    for settings, host in rows:
        due = [task for task in TASKS if is_due(settings, task, host, now)]
        if not due:
            continue
        status = host.status(now, offline_after_seconds)
        if status != "online":
            # Every tick while the host is away: not worth a line at the default level.
            log.debug("%s is %s: maintenance (%s) skipped", host.hostname, status, ", ".join(due))
            continue
        for task in due:
            params = task_params(host, settings, task)
            if params is None:
                log.debug("%s: no source group has a retention policy", host.hostname)
                continue
            job = create_job(box, host, task, params=params, actor=ACTOR, now=now)
            log.info("%s: maintenance %s dispatched as job %s", host.hostname, task, job.id)
            dispatched.append(job)
    return dispatched
