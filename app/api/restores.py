"""/api/v1 restores (a job with its own checks) and the result table of a diff job."""

from __future__ import annotations

from flask import current_app, jsonify, request

from app.access import Role, require_role
from app.api import bp
from app.api.serialize import job_json
from app.api.validation import json_body
from app.authn import client_address, current_actor
from app.bus import host_key
from app.extensions import db
from app.models import Job
from app.models.types import utcnow
from app.services import diffs, dispatch
from app.services.errors import NotFound, ValidationFailed
from app.services.hosts import get_host
from app.transaction import commit_and_wake


@bp.post("/hosts/<int:host_id>/restores")
@require_role(Role.operator)
def create_restore(host_id: int):
    host = get_host(host_id)
    job = dispatch.start_restore(
        current_app.extensions["secretbox"],
        host,
        json_body(),
        actor=current_actor(),
        client_address=client_address(),
        now=utcnow(),
        offline_after_seconds=current_app.config["RM_OFFLINE_AFTER_SECONDS"],
    )
    commit_and_wake(host_key(host.id))
    return jsonify(job_json(job)), 201


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
