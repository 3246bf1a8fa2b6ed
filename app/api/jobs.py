"""/api/v1 jobs: start one on a host, list and read them."""

from __future__ import annotations

from flask import current_app, jsonify, request

from app import MAX_ID
from app.access import Role, require_role
from app.api import bp
from app.api.serialize import job_json
from app.api.validation import json_body, query_integer
from app.authn import client_address, current_actor
from app.bus import host_key, job_key
from app.models.types import utcnow
from app.services import dispatch, hosts, jobs
from app.services.errors import ValidationFailed
from app.services.hosts import get_host
from app.services.validate import unstorable
from app.transaction import commit_and_wake


@bp.post("/hosts/<int:host_id>/jobs")
@require_role(Role.operator)
def start_job(host_id: int):
    host = get_host(host_id)
    body = json_body()
    job = dispatch.start_job(
        current_app.extensions["secretbox"],
        host,
        body.get("kind"),
        body.get("params"),
        actor=current_actor(),
        client_address=client_address(),
        now=utcnow(),
        offline_after_seconds=current_app.config["RM_OFFLINE_AFTER_SECONDS"],
    )
    answer = job_json(job)  # before the commit, which would expire (and reload) the job
    commit_and_wake(host_key(host.id))
    return jsonify(answer), 201


@bp.get("/jobs")
@require_role(Role.viewer)
def list_jobs():
    """Newest first; ``next_before`` is the ``before`` of the next page (null: the last)."""
    filters = {}
    for name in ("kind", "status"):
        value = request.args.get(name)
        if value:
            reason = unstorable(value)
            if reason:
                raise ValidationFailed(f"'{name}' {reason}.", fields={name: [reason]})
            filters[name] = value
    if request.args.get("tag", "").strip():
        filters["tag"] = hosts.parse_tag_filter(request.args["tag"].strip())
    for parameter, name in (("host_id", "host_id"), ("before", "before_id")):
        if request.args.get(parameter, "").strip():
            filters[name] = query_integer(parameter, request.args[parameter], 1, MAX_ID)
    limit = jobs.MAX_PAGE
    if request.args.get("limit", "").strip():
        limit = query_integer("limit", request.args["limit"], 1, jobs.MAX_PAGE)
    items = jobs.list_jobs(**filters, limit=limit)
    return jsonify(
        {
            "items": [job_json(job) for job in items],
            "next_before": items[-1].id if len(items) == limit else None,
        }
    )


@bp.get("/jobs/<int:job_id>")
@require_role(Role.viewer)
def get_job(job_id: int):
    return jsonify(job_json(jobs.get_job(job_id)))


@bp.post("/jobs/<int:job_id>/cancel")
@require_role(Role.operator)
def cancel_job(job_id: int):
    job = jobs.get_job(job_id)
    host = dispatch.cancel_job(
        current_app.extensions["secretbox"],
        job,
        actor=current_actor(),
        client_address=client_address(),
        now=utcnow(),
    )
    # The agent's parked poll picks up job.cancel at once; the job's viewers see it too.
    commit_and_wake(host_key(host.id), job_key(job.id))
    return jsonify(job_json(job)), 202
