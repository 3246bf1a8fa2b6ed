"""/api/v1 repository maintenance, bandwidth and admin credential of a host."""

from __future__ import annotations

from datetime import datetime

from flask import current_app, jsonify
from flask_login import current_user

from app.access import Role, require_role
from app.api import bp
from app.api.hosts import get_host_or_404
from app.api.serialize import iso
from app.api.validation import json_body
from app.authn import client_address
from app.bus import host_key
from app.extensions import db
from app.models import Host
from app.models.types import utcnow
from app.services import audit, maintenance, repo_settings, repository, schedules
from app.services.audit import Actor
from app.services.errors import NotFound


def maintenance_json(host: Host, now: datetime) -> dict:
    settings = repo_settings.maintenance_of(host)
    tasks = {}
    for task in maintenance.TASKS:
        cron = maintenance.cron_of(settings, task)
        last = maintenance.last_job(host, task)
        tasks[task] = {
            "cron": cron,
            "description": schedules.describe(cron) if cron else None,
            "next_run_at": iso(maintenance.next_fire(cron, now)) if cron else None,
            "last_job": (
                {
                    "id": last.id,
                    "status": last.status,
                    "created_at": iso(last.created_at),
                    "finished_at": iso(last.finished_at),
                }
                if last
                else None
            ),
        }
    return {
        "enabled": settings.enabled,
        "forget_cron": settings.forget_cron,
        "prune_cron": settings.prune_cron,
        "check_cron": settings.check_cron,
        "check_subset_percent": settings.check_subset_percent,
        "tasks": tasks,
    }


def bandwidth_json(host: Host) -> dict:
    return {"upload_kib": host.limit_upload_kib, "download_kib": host.limit_download_kib}


def admin_credential_json(host: Host) -> dict:
    credential = repository.credential_of(host, "admin")
    return {
        "admin_set": credential is not None,
        "username": credential.username if credential else None,
        "updated_at": iso(credential.updated_at) if credential else None,
    }


# --- shared with the Repository tab: change, audit, commit, wake the agent -----------------


def _done(host: Host, action: str, payload: dict) -> None:
    audit.record(
        Actor.for_user(current_user),
        action,
        target_type="host",
        target_id=host.id,
        payload={"host": host.hostname, **payload},
        client_address=client_address(),
    )
    db.session.commit()
    current_app.extensions["bus"].publish(host_key(host.id))


def update_maintenance(host: Host, data: dict) -> None:
    settings = repo_settings.save_maintenance(host, data, now=utcnow())
    _done(
        host,
        "host.maintenance_updated",
        {
            "enabled": settings.enabled,
            "forget_cron": settings.forget_cron,
            "prune_cron": settings.prune_cron,
            "check_cron": settings.check_cron,
            "check_subset_percent": settings.check_subset_percent,
        },
    )


def update_bandwidth(host: Host, upload_kib, download_kib) -> None:
    box = current_app.extensions["secretbox"]
    repo_settings.save_bandwidth(box, host, upload_kib, download_kib, now=utcnow())
    _done(host, "host.bandwidth_updated", bandwidth_json(host))


def set_admin_credential(host: Host, username, password) -> None:
    box = current_app.extensions["secretbox"]
    credential = repo_settings.save_admin_credential(box, host, username, password, now=utcnow())
    _done(host, "host.admin_credential_set", {"username": credential.username})


def remove_admin_credential(host: Host) -> bool:
    box = current_app.extensions["secretbox"]
    if not repo_settings.remove_admin_credential(box, host, now=utcnow()):
        return False
    _done(host, "host.admin_credential_removed", {})
    return True


# --- routes --------------------------------------------------------------------------------


@bp.get("/hosts/<int:host_id>/repo-maintenance")
@require_role(Role.viewer)
def get_repo_maintenance(host_id: int):
    host = get_host_or_404(host_id)
    return jsonify(maintenance_json(host, utcnow()))


@bp.put("/hosts/<int:host_id>/repo-maintenance")
@require_role(Role.operator)
def put_repo_maintenance(host_id: int):
    host = get_host_or_404(host_id)
    update_maintenance(host, json_body())
    return jsonify(maintenance_json(host, utcnow()))


@bp.get("/hosts/<int:host_id>/bandwidth")
@require_role(Role.viewer)
def get_bandwidth(host_id: int):
    return jsonify(bandwidth_json(get_host_or_404(host_id)))


@bp.put("/hosts/<int:host_id>/bandwidth")
@require_role(Role.operator)
def put_bandwidth(host_id: int):
    host = get_host_or_404(host_id)
    body = json_body()
    update_bandwidth(host, body.get("upload_kib"), body.get("download_kib"))
    return jsonify(bandwidth_json(host))


@bp.put("/hosts/<int:host_id>/admin-credential")
@require_role(Role.admin)
def put_admin_credential(host_id: int):
    host = get_host_or_404(host_id)
    body = json_body()
    set_admin_credential(host, body.get("username"), body.get("password"))
    return jsonify(admin_credential_json(host))


@bp.delete("/hosts/<int:host_id>/admin-credential")
@require_role(Role.admin)
def delete_admin_credential(host_id: int):
    host = get_host_or_404(host_id)
    if not remove_admin_credential(host):
        raise NotFound(f"{host.hostname} has no admin credential.", code="no_admin_credential")
    return "", 204
