"""/api/v1 source groups of a host, and the retention preview."""

from __future__ import annotations

from flask import current_app, jsonify, request
from flask_login import current_user

from app.access import Role, require_role
from app.api import bp
from app.api.validation import json_body
from app.authn import client_address, current_actor
from app.bus import host_key
from app.formatting import iso
from app.models import SourceGroup
from app.models.types import utcnow
from app.services import source_groups
from app.services.hosts import get_host
from app.transaction import commit_and_wake


def source_group_json(group: SourceGroup) -> dict:
    return {
        "id": group.id,
        "name": group.name,
        "includes": list(group.includes or []),
        "excludes": list(group.excludes or []),
        "retention": dict(group.retention or {}),
        "retry_max": group.retry_max,
        "retry_backoff_seconds": group.retry_backoff_seconds,
        "pre_hook_set": source_groups.hook_set(group, "pre_hook"),
        "post_hook_set": source_groups.hook_set(group, "post_hook"),
        "schedules": [schedule.name for schedule in source_groups.schedules_using(group)],
        "created_at": iso(group.created_at),
        "updated_at": iso(group.updated_at),
    }


def decision_json(decision) -> dict:
    snapshot = decision.snapshot
    return {
        "id": snapshot.snapshot_id,
        "short_id": snapshot.short_id,
        "time": iso(snapshot.time),
        "hostname": snapshot.hostname,
        "paths": list(snapshot.paths or []),
        "tags": list(snapshot.tags or []),
        "reasons": list(decision.reasons),
    }


def _change_arguments() -> dict:
    return {
        "actor": current_actor(),
        "now": utcnow(),
        "may_edit_hooks": current_user.has_role(Role.admin),
        "client_address": client_address(),
    }


@bp.get("/hosts/<int:host_id>/source-groups")
@require_role(Role.viewer)
def list_source_groups(host_id: int):
    host = get_host(host_id)
    return jsonify({"items": [source_group_json(g) for g in source_groups.groups_of(host)]})


@bp.post("/hosts/<int:host_id>/source-groups")
@require_role(Role.operator)
def create_source_group(host_id: int):
    host = get_host(host_id)
    box = current_app.extensions["secretbox"]
    group = source_groups.create(box, host, json_body(), **_change_arguments())
    commit_and_wake(host_key(host.id))
    return jsonify(source_group_json(group)), 201


@bp.get("/hosts/<int:host_id>/source-groups/<int:group_id>")
@require_role(Role.viewer)
def get_source_group(host_id: int, group_id: int):
    group = source_groups.get_group(get_host(host_id), group_id)
    return jsonify(source_group_json(group))


@bp.put("/hosts/<int:host_id>/source-groups/<int:group_id>")
@require_role(Role.operator)
def update_source_group(host_id: int, group_id: int):
    group = source_groups.get_group(get_host(host_id), group_id)
    box = current_app.extensions["secretbox"]
    source_groups.update(box, group, json_body(), **_change_arguments())
    commit_and_wake(host_key(host_id))
    return jsonify(source_group_json(group))


@bp.delete("/hosts/<int:host_id>/source-groups/<int:group_id>")
@require_role(Role.operator)
def delete_source_group(host_id: int, group_id: int):
    group = source_groups.get_group(get_host(host_id), group_id)
    arguments = _change_arguments()
    del arguments["may_edit_hooks"]
    source_groups.delete(current_app.extensions["secretbox"], group, **arguments)
    commit_and_wake(host_key(host_id))
    return "", 204


# A POST that changes nothing: viewers may preview (self_service lets them past the
# "writes need operator" rule; the view only reads).
@bp.post("/hosts/<int:host_id>/source-groups/<int:group_id>/retention-preview")
@require_role(Role.viewer, self_service=True)
def preview_source_group_retention(host_id: int, group_id: int):
    group = source_groups.get_group(get_host(host_id), group_id)
    body = json_body() if request.get_data() else {}
    policy = body.get("retention")
    if policy is None:
        policy = dict(group.retention or {})
    preview = source_groups.preview_retention(group.host, group.name, policy)
    return jsonify(
        {
            "retention": preview["retention"],
            "description": preview["description"],
            "keep": [decision_json(d) for d in preview["keep"]],
            "remove": [decision_json(d) for d in preview["remove"]],
        }
    )


@bp.get("/hosts/<int:host_id>/hooks")
@require_role(Role.viewer)
def get_host_hooks(host_id: int):
    """Whether the host has default hooks (their text is never returned)."""
    return jsonify(source_groups.host_hooks_set(get_host(host_id)))


@bp.put("/hosts/<int:host_id>/hooks")
@require_role(Role.admin)
def put_host_hooks(host_id: int):
    """The host's default hooks: groups without their own run these (admin only)."""
    host = get_host(host_id)
    source_groups.save_host_hooks(
        current_app.extensions["secretbox"],
        host,
        json_body(),
        actor=current_actor(),
        now=utcnow(),
    )
    commit_and_wake(host_key(host.id))
    return jsonify(source_groups.host_hooks_set(host))
