"""Repository: connection, bandwidth, maintenance."""

from __future__ import annotations

from flask import render_template

from app.access import Role, require_role
from app.api.hosts import get_host_or_404
from app.hosts import bp


@bp.get("/<int:host_id>/repo")
@require_role(Role.viewer)
def repo(host_id: int):
    host = get_host_or_404(host_id)
    return render_template("hosts/tab_stub.html", host=host, tab="repo")
