"""/api/v1 restores (a job with its own checks) and the result table of a diff job."""

from __future__ import annotations

from flask import current_app, jsonify, request
from flask_login import current_user

from app.access import Role, require_role
from app.api import bp
from app.api.hosts import get_host_or_404
from app.api.jobs import require_online
from app.api.serialize import job_json
from app.api.validation import json_body
from app.authn import client_address
from app.bus import host_key
from app.extensions import db
from app.models import Host, Job
from app.models.types import utcnow
from app.services import audit, diffs, jobs, restores
from app.services.audit import Actor
from app.services.errors import NotFound, ValidationFailed


@bp.post("/hosts/<int:host_id>/restores")
@require_role(Role.operator)
def create_restore(host_id: int):
    host = get_host_or_404(host_id)
    job = start_restore(host, json_body())
    return jsonify(job_json(job)), 201


def start_restore(host: Host, body: dict) -> Job:
    """Validate, refuse offline hosts, queue the restore job, audit, commit, wake the agent."""
    params = restores.validate(host, body)
    now = utcnow()
    require_online(host, now, "the restore")
    actor = Actor.for_user(current_user)
    job = jobs.create_job(
        current_app.extensions["secretbox"],
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
        client_address=client_address(),
    )
    db.session.commit()
    current_app.extensions["bus"].publish(host_key(host.id))
    return job


@bp.get("/jobs/<int:job_id>/diff")
@require_role(Role.viewer)
def get_diff(job_id: int):
    job = db.session.get(Job, job_id)
    if job is None or job.kind != "diff":
        raise NotFound(f"No diff job with id {job_id}.")
    modifier = request.args.get("modifier") or None
    try:
        limit = int(request.args.get("limit", 100))
        offset = int(request.args.get("offset", 0))
    except ValueError:
        raise ValidationFailed("limit and offset must be whole numbers.") from None
    page = diffs.diff_page(job, modifier=modifier, limit=limit, offset=offset)
    return jsonify(
        {
            "summary": page["summary"],
            "counts": page["counts"],
            "sizes": page["sizes"],
            "items": [
                {
                    "path": entry.path,
                    "modifier": entry.modifier,
                    "change": diffs.describe(entry.modifier),
                    "type": entry.type,
                    "size_before": entry.size_before,
                    "size_after": entry.size_after,
                }
                for entry in page["items"]
            ],
            "total": page["total"],
            "next": page["next"],
        }
    )
