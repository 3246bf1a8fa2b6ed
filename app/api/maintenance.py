"""/api/v1 repository maintenance, bandwidth and admin credential of a host."""

from __future__ import annotations

from datetime import datetime

from flask import current_app, jsonify

from app.access import Role, require_role
from app.api import bp
from app.api.validation import json_body
from app.authn import client_address, current_actor
from app.bus import host_key
from app.formatting import iso
from app.models import Host
from app.models.types import utcnow
from app.services import maintenance, repo_settings, repository, schedules
from app.services.errors import NotFound
from app.services.hosts import get_host
from app.transaction import commit_and_wake


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
    return repo_settings.bandwidth_of(host)


def admin_credential_json(host: Host) -> dict:
    credential = repository.credential_of(host, "admin")
    return {
        "admin_set": credential is not None,
        "username": credential.username if credential else None,
        "updated_at": iso(credential.updated_at) if credential else None,
    }


def _by_caller() -> dict:
    return {"actor": current_actor(), "client_address": client_address(), "now": utcnow()}


# --- routes --------------------------------------------------------------------------------


@bp.get("/hosts/<int:host_id>/repo-maintenance")
@require_role(Role.viewer)
def get_repo_maintenance(host_id: int):
    host = get_host(host_id)
    return jsonify(maintenance_json(host, utcnow()))


@bp.put("/hosts/<int:host_id>/repo-maintenance")
@require_role(Role.operator)
def put_repo_maintenance(host_id: int):
    host = get_host(host_id)
    repo_settings.update_maintenance(host, json_body(), **_by_caller())
    commit_and_wake(host_key(host.id))
    return jsonify(maintenance_json(host, utcnow()))


@bp.get("/hosts/<int:host_id>/bandwidth")
@require_role(Role.viewer)
def get_bandwidth(host_id: int):
    return jsonify(bandwidth_json(get_host(host_id)))


@bp.put("/hosts/<int:host_id>/bandwidth")
@require_role(Role.operator)
def put_bandwidth(host_id: int):
    host = get_host(host_id)
    body = json_body()
    repo_settings.update_bandwidth(
        _box(), host, body.get("upload_kib"), body.get("download_kib"), **_by_caller()
    )
    commit_and_wake(host_key(host.id))
    return jsonify(bandwidth_json(host))


@bp.put("/hosts/<int:host_id>/admin-credential")
@require_role(Role.admin)
def put_admin_credential(host_id: int):
    host = get_host(host_id)
    body = json_body()
    repo_settings.set_admin_credential(
        _box(), host, body.get("username"), body.get("password"), **_by_caller()
    )
    commit_and_wake(host_key(host.id))
    return jsonify(admin_credential_json(host))


@bp.delete("/hosts/<int:host_id>/admin-credential")
@require_role(Role.admin)
def delete_admin_credential(host_id: int):
    host = get_host(host_id)
    if not repo_settings.unset_admin_credential(_box(), host, **_by_caller()):
        raise NotFound(f"{host.hostname} has no admin credential.", code="no_admin_credential")
    commit_and_wake(host_key(host.id))
    return "", 204


def _box():
    return current_app.extensions["secretbox"]
