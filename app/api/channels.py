"""/api/v1 notification channels: where alerts are delivered (secrets are never echoed)."""

from __future__ import annotations

from flask import current_app, jsonify

from app.access import Role, require_role
from app.api import bp
from app.api.validation import json_body
from app.authn import client_address, current_actor
from app.models.types import utcnow
from app.services import notifications
from app.transaction import commit_and_wake


def _box():
    return current_app.extensions["secretbox"]


def _by_caller() -> dict:
    return {"actor": current_actor(), "client_address": client_address(), "now": utcnow()}


@bp.get("/channels")
@require_role(Role.admin)  # where alerts go (topics, addresses) is the admins' business
def list_channels():
    return jsonify(
        {"items": [notifications.channel_view(item) for item in notifications.list_channels()]}
    )


@bp.post("/channels")
@require_role(Role.admin)
def create_channel():
    channel = notifications.create_channel(_box(), json_body(), **_by_caller())
    commit_and_wake()
    return jsonify(notifications.channel_view(channel)), 201


@bp.get("/channels/<int:channel_id>")
@require_role(Role.admin)
def get_channel(channel_id: int):
    return jsonify(notifications.channel_view(notifications.get_channel(channel_id)))


@bp.patch("/channels/<int:channel_id>")
@require_role(Role.admin)
def update_channel(channel_id: int):
    channel = notifications.get_channel(channel_id)
    notifications.update_channel(_box(), channel, json_body(), **_by_caller())
    commit_and_wake()
    return jsonify(notifications.channel_view(channel))


@bp.delete("/channels/<int:channel_id>")
@require_role(Role.admin)
def delete_channel(channel_id: int):
    notifications.delete_channel(notifications.get_channel(channel_id), **_by_caller())
    commit_and_wake()
    return "", 204


@bp.post("/channels/<int:channel_id>/test")
@require_role(Role.admin)
def test_channel(channel_id: int):
    """Send a real test notification now; 200 with ok false when it did not go out."""
    channel = notifications.get_channel(channel_id)
    result = notifications.send_test(
        _box(), channel, base_url=current_app.config["RM_BASE_URL"], **_by_caller()
    )
    commit_and_wake()  # the audit row of the test
    return jsonify({"ok": result.ok, "detail": result.detail})
