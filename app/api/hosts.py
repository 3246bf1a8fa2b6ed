from __future__ import annotations

from flask import current_app, jsonify
from sqlalchemy import select

from app.access import Role, require_role
from app.api import bp
from app.api.serialize import host_json
from app.extensions import db
from app.models import Host
from app.models.types import utcnow
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
