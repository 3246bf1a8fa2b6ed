"""/api/v1 jobs: start one on a host, list and read them."""

from __future__ import annotations

from flask import current_app, jsonify, request
from flask_login import current_user
from sqlalchemy import select

from app.access import Role, require_role
from app.api import bp
from app.api.hosts import get_host_or_404
from app.api.serialize import job_json
from app.api.validation import json_body
from app.authn import client_address
from app.bus import host_key
from app.extensions import db
from app.models import Host, Job
from app.models.types import utcnow
from app.services import audit, job_params, jobs, repository
from app.services.audit import Actor
from app.services.errors import Conflict, NotFound, ValidationFailed


@bp.post("/hosts/<int:host_id>/jobs")
@require_role(Role.operator)
def start_job(host_id: int):
    host = get_host_or_404(host_id)
    body = json_body()
    job = start_host_job(host, body.get("kind"), body.get("params"))
    return jsonify(job_json(job)), 201


def start_host_job(host: Host, kind, params) -> Job:
    """Validate, refuse offline hosts, queue, audit, commit and wake the agent."""
    kind, params = job_params.validate(host, kind, params)
    now = utcnow()
    require_online(host, now, "the job")
    actor = Actor.for_user(current_user)
    if kind == "probe":
        running = repository.active_job(host, repository.BRING_UP_KINDS)
        if running is not None:
            return running  # one bring-up at a time: the running one answers the question
        job = repository.dispatch_probe(
            current_app.extensions["secretbox"], host, actor=actor, now=now
        )
    else:
        box = current_app.extensions["secretbox"]
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
        client_address=client_address(),
    )
    db.session.commit()
    current_app.extensions["bus"].publish(host_key(host.id))
    return job


def require_online(host: Host, now, what: str) -> None:
    """409 ``host_offline`` unless the host's agent polled recently."""
    status = host.status(now, current_app.config["RM_OFFLINE_AFTER_SECONDS"])
    if status != "online":
        raise Conflict(
            f"{host.hostname} is {status.replace('_', ' ')}: its agent has not polled the "
            f"server recently, so {what} could not start. Check the agent on the host.",
            code="host_offline",
        )


@bp.get("/jobs")
@require_role(Role.viewer)
def list_jobs():
    query = select(Job).order_by(Job.id.desc()).limit(200)
    for name in ("host_id",):
        if request.args.get(name):
            try:
                query = query.where(Job.host_id == int(request.args[name]))
            except ValueError:
                raise ValidationFailed("host_id must be a number.") from None
    for name in ("kind", "status"):
        if request.args.get(name):
            query = query.where(getattr(Job, name) == request.args[name])
    return jsonify({"items": [job_json(job) for job in db.session.scalars(query)]})


@bp.get("/jobs/<int:job_id>")
@require_role(Role.viewer)
def get_job(job_id: int):
    job = db.session.get(Job, job_id)
    if job is None:
        raise NotFound(f"No job with id {job_id}.")
    return jsonify(job_json(job))
