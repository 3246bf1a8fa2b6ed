"""/api/v1 schedules of a host."""

from __future__ import annotations

from datetime import datetime
from typing import Optional

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
from app.models import Host, Job, Schedule
from app.models.types import utcnow
from app.services import audit, schedules
from app.services.audit import Actor

NEXT_RUNS = 3


def schedule_json(schedule: Schedule, last_run: Optional[Job], now: datetime) -> dict:
    return {
        "id": schedule.id,
        "name": schedule.name,
        "cron": schedule.cron,
        "cron_description": schedules.describe(schedule.cron),
        "enabled": schedule.enabled,
        "missed_policy": schedule.missed_policy,
        "source_groups": [group.name for group in schedule.source_groups],
        "next_runs": [iso(at) for at in schedules.next_runs(schedule.cron, NEXT_RUNS, after=now)],
        "last_run": None
        if last_run is None
        else {
            "job_id": last_run.id,
            "status": last_run.status,
            "finished_at": iso(last_run.finished_at),
        },
    }


def _one_json(schedule: Schedule) -> dict:
    last = schedules.last_runs([schedule.id]).get(schedule.id)
    return schedule_json(schedule, last, utcnow())


@bp.get("/hosts/<int:host_id>/schedules")
@require_role(Role.viewer)
def list_schedules(host_id: int):
    host = get_host_or_404(host_id)
    items = schedules.schedules_of(host)
    last = schedules.last_runs(schedule.id for schedule in items)
    now = utcnow()
    return jsonify(
        {
            "items": [schedule_json(item, last.get(item.id), now) for item in items],
            "schedule_version": host.schedule_version,
            "agent_schedule_version": host.agent_schedule_version,
            "in_sync": schedules.in_sync(host),
        }
    )


@bp.get("/hosts/<int:host_id>/schedules/<int:schedule_id>")
@require_role(Role.viewer)
def get_schedule(host_id: int, schedule_id: int):
    host = get_host_or_404(host_id)
    return jsonify(_one_json(schedules.get_schedule_or_404(host, schedule_id)))


@bp.post("/hosts/<int:host_id>/schedules")
@require_role(Role.operator)
def create_schedule(host_id: int):
    host = get_host_or_404(host_id)
    schedule = schedules.create(_box(), host, json_body(), now=utcnow())
    record_change(host, schedule, "schedule.created")
    return jsonify(_one_json(schedule)), 201


@bp.put("/hosts/<int:host_id>/schedules/<int:schedule_id>")
@require_role(Role.operator)
def update_schedule(host_id: int, schedule_id: int):
    host = get_host_or_404(host_id)
    schedule = schedules.get_schedule_or_404(host, schedule_id)
    schedules.update_schedule(_box(), host, schedule, json_body(), now=utcnow())
    record_change(host, schedule, "schedule.updated")
    return jsonify(_one_json(schedule))


@bp.delete("/hosts/<int:host_id>/schedules/<int:schedule_id>")
@require_role(Role.operator)
def delete_schedule(host_id: int, schedule_id: int):
    host = get_host_or_404(host_id)
    schedule = schedules.get_schedule_or_404(host, schedule_id)
    payload = _audit_payload(schedule)
    schedules.delete(_box(), host, schedule, now=utcnow())
    record_change(host, None, "schedule.deleted", payload=payload, target_id=schedule_id)
    return "", 204


def _box():
    return current_app.extensions["secretbox"]


def _audit_payload(schedule: Schedule) -> dict:
    return {
        "name": schedule.name,
        "cron": schedule.cron,
        "enabled": schedule.enabled,
        "missed_policy": schedule.missed_policy,
        "source_groups": [group.name for group in schedule.source_groups],
    }


def record_change(
    host: Host,
    schedule: Optional[Schedule],
    action: str,
    *,
    payload: Optional[dict] = None,
    target_id: Optional[int] = None,
) -> None:
    """Audit, commit, and wake the agent's poll so the new set goes out at once."""
    payload = dict(payload or _audit_payload(schedule))
    payload.update(host_id=host.id, schedule_version=host.schedule_version)
    audit.record(
        Actor.for_user(current_user),
        action,
        target_type="schedule",
        target_id=target_id if schedule is None else schedule.id,
        payload=payload,
        client_address=client_address(),
    )
    db.session.commit()
    current_app.extensions["bus"].publish(host_key(host.id))
