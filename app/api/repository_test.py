"""``POST /api/v1/hosts/{id}/repository/test``: can the host's agent open this repository?

The body is what ``PUT …/repository`` takes; nothing is saved. The agent runs
``restic cat config`` with it and the answer is restic's own words.
"""

from __future__ import annotations

from flask import jsonify

from app import agent_calls
from app.access import Role, require_role
from app.api import bp
from app.api.validation import json_body
from app.services import backends
from app.services.hosts import get_host


@bp.post("/hosts/<int:host_id>/repository/test")
@require_role(Role.admin)
def test_repository(host_id: int):
    host = get_host(host_id)
    connection = backends.from_body(json_body())
    return jsonify(agent_calls.test_connection(host, connection))
