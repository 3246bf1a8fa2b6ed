"""/api/v1 schedules of a host."""

from __future__ import annotations

from datetime import datetime
from typing import Optional

from flask import current_app, jsonify

from app.access import Role, require_role
from app.api import bp
from app.api.serialize import job_json
from app.api.validation import json_body
from app.authn import client_address, current_actor
from app.bus import host_key
from app.formatting import iso
from app.models import Host, Job, Schedule
from app.models.types import utcnow
from app.services import dispatch, schedules
from app.services.hosts import get_host
from app.services.schedules import NEXT_RUNS
from app.transaction import commit_and_wake


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
    host = get_host(host_id)
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
    host = get_host(host_id)
    return jsonify(_one_json(schedules.get_schedule_or_404(host, schedule_id)))


@bp.post("/hosts/<int:host_id>/schedules")
@require_role(Role.operator)
def create_schedule(host_id: int):
    host = get_host(host_id)
    schedule = schedules.create(_box(), host, json_body(), now=utcnow())
    _recorded(host, schedule, "schedule.created")
    return jsonify(_one_json(schedule)), 201


@bp.put("/hosts/<int:host_id>/schedules/<int:schedule_id>")
@require_role(Role.operator)
def update_schedule(host_id: int, schedule_id: int):
    host = get_host(host_id)
    schedule = schedules.get_schedule_or_404(host, schedule_id)
    schedules.update_schedule(_box(), host, schedule, json_body(), now=utcnow())
    _recorded(host, schedule, "schedule.updated")
    return jsonify(_one_json(schedule))


@bp.delete("/hosts/<int:host_id>/schedules/<int:schedule_id>")
@require_role(Role.operator)
def delete_schedule(host_id: int, schedule_id: int):
    host = get_host(host_id)
    schedule = schedules.get_schedule_or_404(host, schedule_id)
    payload = schedules.audit_payload(schedule)
    schedules.delete(_box(), host, schedule, now=utcnow())
    _recorded(host, None, "schedule.deleted", payload=payload, target_id=schedule_id)
    return "", 204


@bp.post("/hosts/<int:host_id>/schedules/<int:schedule_id>/run")
@require_role(Role.operator)
def run_schedule(host_id: int, schedule_id: int):
    """Run now: a backup job of each of the schedule's groups (a disabled one too)."""
    host = get_host(host_id)
    schedule = schedules.get_schedule_or_404(host, schedule_id)
    started = dispatch.run_schedule_now(
        _box(),
        host,
        schedule,
        actor=current_actor(),
        client_address=client_address(),
        now=utcnow(),
        offline_after_seconds=current_app.config["RM_OFFLINE_AFTER_SECONDS"],
    )
    commit_and_wake(host_key(host.id))
    return jsonify({"jobs": [job_json(job) for job in started]}), 202


def _box():
    return current_app.extensions["secretbox"]


def _recorded(host: Host, schedule: Optional[Schedule], action: str, **kwargs) -> None:
    """Audit, commit, and wake the agent's poll so the new set goes out at once."""
    schedules.record_change(
        host, schedule, action, actor=current_actor(), client_address=client_address(), **kwargs
    )
    commit_and_wake(host_key(host.id))
