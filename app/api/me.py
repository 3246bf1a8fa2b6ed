from __future__ import annotations

from flask import g, jsonify
from flask_login import current_user

from app.access import Role, require_role
from app.api import bp
from app.api.serialize import user_json


@bp.get("/me")
@require_role(Role.viewer)
def me():
    """Who the caller is, and how they authenticated (token or session)."""
    body = user_json(current_user)
    body["auth"] = "token" if getattr(g, "api_token_id", None) else "session"
    return jsonify(body)
