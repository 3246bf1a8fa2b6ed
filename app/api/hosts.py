from __future__ import annotations

from flask import current_app, jsonify, request
from flask_login import current_user
from sqlalchemy import select

from app.access import Role, require_role
from app.api import bp
from app.api.serialize import host_json, iso, repo_stats_json, snapshot_json
from app.api.validation import json_body
from app.authn import client_address
from app.bus import host_key
from app.extensions import db
from app.models import Host
from app.models.types import utcnow
from app.services import audit, repository
from app.services.audit import Actor
from app.services.enrollment import redact_url
from app.services.errors import NotFound


def get_host_or_404(host_id: int) -> Host:
    host = db.session.get(Host, host_id)
    if host is None:
        raise NotFound(f"No host with id {host_id}.")
    return host


@bp.get("/hosts")
@require_role(Role.viewer)
def list_hosts():
    now = utcnow()
    offline_after = current_app.config["RM_OFFLINE_AFTER_SECONDS"]
    hosts = db.session.scalars(select(Host).order_by(Host.hostname))
    return jsonify({"items": [host_json(h, h.status(now, offline_after)) for h in hosts]})


@bp.get("/hosts/<int:host_id>")
@require_role(Role.viewer)
def get_host(host_id: int):
    host = get_host_or_404(host_id)
    status = host.status(utcnow(), current_app.config["RM_OFFLINE_AFTER_SECONDS"])
    return jsonify(host_json(host, status))


@bp.get("/hosts/<int:host_id>/snapshots")
@require_role(Role.viewer)
def list_snapshots(host_id: int):
    host = get_host_or_404(host_id)
    tag = request.args.get("tag") or None
    snapshots = repository.snapshots_of(host, tag=tag)
    return jsonify({"items": [snapshot_json(snapshot) for snapshot in snapshots]})


@bp.get("/hosts/<int:host_id>/repo-stats")
@require_role(Role.viewer)
def list_repo_stats(host_id: int):
    host = get_host_or_404(host_id)
    return jsonify({"items": [repo_stats_json(row) for row in repository.size_history(host)]})


@bp.get("/hosts/<int:host_id>/repository")
@require_role(Role.viewer)
def get_repository(host_id: int):
    host = get_host_or_404(host_id)
    return jsonify(repository_json(host))


@bp.put("/hosts/<int:host_id>/repository")
@require_role(Role.admin)
def put_repository(host_id: int):
    """New everyday credentials; the repository is checked again (and initialised if new)."""
    host = get_host_or_404(host_id)
    body = json_body()
    save_repository(host, body.get("url"), body.get("username"), body.get("password"))
    return jsonify(repository_json(host))


def repository_json(host: Host) -> dict:
    credential = repository.credential_of(host)
    return {
        "url": redact_url(credential.repo_url) if credential else None,
        "username": credential.username if credential else None,
        "password_set": bool(credential and credential.sealed_password),
        "admin_set": repository.credential_of(host, "admin") is not None,
        "updated_at": iso(credential.updated_at) if credential else None,
        "repo_status": host.repo_status,
        "repo_status_reason": host.repo_status_reason,
    }


def save_repository(host: Host, url, username, password) -> None:
    """Save, audit, commit, then probe at once when the agent is online."""
    box = current_app.extensions["secretbox"]
    now = utcnow()
    credential = repository.save_credentials(
        box, host, url=url, username=username, password=password, now=now
    )
    actor = Actor.for_user(current_user)
    audit.record(
        actor,
        "host.repository_updated",
        target_type="host",
        target_id=host.id,
        payload={"url": redact_url(credential.repo_url), "username": credential.username},
        client_address=client_address(),
    )
    if host.status(now, current_app.config["RM_OFFLINE_AFTER_SECONDS"]) == "online":
        repository.dispatch_probe(box, host, actor=actor, now=now)
    db.session.commit()
    current_app.extensions["bus"].publish(host_key(host.id))
