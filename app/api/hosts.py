from __future__ import annotations

from flask import current_app, jsonify, request
from sqlalchemy import select

from app.access import Role, require_role
from app.api import bp
from app.api.serialize import host_json, repo_stats_json, snapshot_json
from app.api.validation import json_body
from app.authn import client_address, current_actor
from app.bus import host_key
from app.extensions import db
from app.formatting import iso
from app.models import Host
from app.models.types import utcnow
from app.services import hosts, repository
from app.transaction import commit_and_wake


@bp.get("/hosts")
@require_role(Role.viewer)
def list_hosts():
    now = utcnow()
    offline_after = current_app.config["RM_OFFLINE_AFTER_SECONDS"]
    rows = db.session.scalars(select(Host).order_by(Host.hostname))
    return jsonify({"items": [host_json(h, h.status(now, offline_after)) for h in rows]})


@bp.get("/hosts/<int:host_id>")
@require_role(Role.viewer)
def get_host(host_id: int):
    host = hosts.get_host(host_id)
    status = host.status(utcnow(), current_app.config["RM_OFFLINE_AFTER_SECONDS"])
    return jsonify(host_json(host, status))


@bp.get("/hosts/<int:host_id>/snapshots")
@require_role(Role.viewer)
def list_snapshots(host_id: int):
    host = hosts.get_host(host_id)
    tag = request.args.get("tag") or None
    snapshots = repository.snapshots_of(host, tag=tag)
    return jsonify({"items": [snapshot_json(snapshot) for snapshot in snapshots]})


@bp.get("/hosts/<int:host_id>/repo-stats")
@require_role(Role.viewer)
def list_repo_stats(host_id: int):
    host = hosts.get_host(host_id)
    return jsonify({"items": [repo_stats_json(row) for row in repository.size_history(host)]})


@bp.get("/hosts/<int:host_id>/repository")
@require_role(Role.viewer)
def get_repository(host_id: int):
    host = hosts.get_host(host_id)
    return jsonify(repository_json(host))


@bp.put("/hosts/<int:host_id>/repository")
@require_role(Role.admin)
def put_repository(host_id: int):
    """New everyday credentials; the repository is checked again (and initialised if new)."""
    host = hosts.get_host(host_id)
    body = json_body()
    repository.update_credentials(
        current_app.extensions["secretbox"],
        host,
        url=body.get("url"),
        username=body.get("username"),
        password=body.get("password"),
        actor=current_actor(),
        client_address=client_address(),
        now=utcnow(),
        offline_after_seconds=current_app.config["RM_OFFLINE_AFTER_SECONDS"],
    )
    commit_and_wake(host_key(host.id))
    return jsonify(repository_json(host))


def repository_json(host: Host) -> dict:
    credential = repository.credential_of(host)
    return {
        "url": credential.repo_url_redacted if credential else None,
        "username": credential.username if credential else None,
        "password_set": bool(credential and credential.sealed_password),
        "admin_set": repository.credential_of(host, "admin") is not None,
        "updated_at": iso(credential.updated_at) if credential else None,
        "repo_status": host.repo_status,
        "repo_status_reason": host.repo_status_reason,
    }
