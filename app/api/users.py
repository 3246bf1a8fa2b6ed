"""/api/v1/users (admin): invite, list, change role, disable, delete, reset links;
/api/v1/me/password and /api/v1/me/sessions for every user."""

from __future__ import annotations

from flask import current_app, g, jsonify, request
from flask_login import current_user

from app.access import Role, require_role
from app.api import bp
from app.api.serialize import iso
from app.api.validation import json_body, string_field
from app.authn import client_address, current_actor
from app.models.types import utcnow
from app.services import invites, users
from app.services.errors import ValidationFailed
from app.services.validate import echo
from app.transaction import commit_and_wake


def _base_url() -> str:
    return current_app.config["RM_BASE_URL"] or request.host_url.rstrip("/")


def _only(body: dict, allowed: tuple[str, ...]) -> None:
    unknown = sorted(key for key in body if key not in allowed)
    if unknown:
        raise ValidationFailed(
            f"Unknown field {echo(unknown[0])!r}: send only {', '.join(allowed)}.",
            fields={echo(key): ["Unknown field."] for key in unknown[:5]},
        )


def _user_json(user, now) -> dict:
    link = invites.pending_link(user, now=now)
    return {
        "id": user.id,
        "username": user.username,
        "role": user.role,
        "disabled": not user.is_active,
        "auth_source": user.auth_source,
        "has_password": user.password_hash is not None,
        "last_login_at": iso(user.last_login_at),
        "created_at": iso(user.created_at),
        "invite_pending": link is not None,
        "invite_expires_at": iso(link.expires_at) if link else None,
    }


@bp.get("/users")
@require_role(Role.admin)
def list_users():
    now = utcnow()
    return jsonify({"items": [_user_json(user, now) for user in users.list_users()]})


@bp.post("/users")
@require_role(Role.admin)
def create_user():
    body = json_body()
    _only(body, ("username", "role"))
    user, link, token = invites.invite_user(
        string_field(body, "username", max_length=64),
        string_field(body, "role", max_length=16),
        actor=current_actor(),
        client_address=client_address(),
        now=utcnow(),
    )
    commit_and_wake()
    answer = {
        "id": user.id,
        "username": user.username,
        "role": user.role,
        "disabled": False,
        "invite_url": invites.invite_url(_base_url(), token),
        "invite_expires_at": iso(link.expires_at),
    }
    return jsonify(answer), 201


@bp.get("/users/<int:user_id>")
@require_role(Role.admin)
def get_user(user_id: int):
    return jsonify(_user_json(users.get_user(user_id), utcnow()))


@bp.patch("/users/<int:user_id>")
@require_role(Role.admin)
def update_user(user_id: int):
    body = json_body()
    _only(body, ("role", "disabled"))
    user = users.get_user(user_id)
    role = users.parse_role(body["role"]) if "role" in body else None
    disabled = body.get("disabled")
    if "disabled" in body and not isinstance(disabled, bool):
        raise ValidationFailed(
            "'disabled' must be true or false.", fields={"disabled": ["true or false"]}
        )
    now = utcnow()
    if role is not None:
        users.change_role(user, role, actor=current_actor(), client_address=client_address())
    if disabled is not None:
        users.set_disabled(
            user, disabled, actor=current_actor(), client_address=client_address(), now=now
        )
    commit_and_wake()
    return jsonify(_user_json(user, now))


@bp.delete("/users/<int:user_id>")
@require_role(Role.admin)
def delete_user(user_id: int):
    user = users.get_user(user_id)
    users.delete_user(user, actor=current_actor(), client_address=client_address())
    commit_and_wake()
    return "", 204


@bp.post("/users/<int:user_id>/reset")
@require_role(Role.admin)
def reset_user(user_id: int):
    user = users.get_user(user_id)
    link, token = invites.reset_link(
        user, actor=current_actor(), client_address=client_address(), now=utcnow()
    )
    commit_and_wake()
    return jsonify(
        {
            "invite_url": invites.invite_url(_base_url(), token),
            "invite_expires_at": iso(link.expires_at),
        }
    )


# --- self-service --------------------------------------------------------------------------


@bp.put("/me/password")
@require_role(Role.viewer, self_service=True)
def change_password():
    body = json_body()
    _only(body, ("current_password", "new_password"))
    users.change_password(
        current_user,
        string_field(body, "current_password", max_length=1024),
        string_field(body, "new_password", max_length=1024),
        keep_session_id=getattr(g, "user_session_id", None),
        client_address=client_address(),
        now=utcnow(),
    )
    commit_and_wake()
    return "", 204


def _session_json(row) -> dict:
    return {
        "id": row.id,
        "created_at": iso(row.created_at),
        "last_seen_at": iso(row.last_seen_at),
        "expires_at": iso(row.expires_at),
        "client_address": row.client_address,
        "user_agent": row.user_agent,
        "current": row.id == getattr(g, "user_session_id", None),
    }


@bp.get("/me/sessions")
@require_role(Role.viewer)
def my_sessions():
    rows = users.active_sessions(current_user, now=utcnow())
    return jsonify({"items": [_session_json(row) for row in rows]})


@bp.delete("/me/sessions/<int:session_id>")
@require_role(Role.viewer, self_service=True)
def end_my_session(session_id: int):
    users.end_own_session(current_user, session_id, client_address=client_address(), now=utcnow())
    commit_and_wake()
    return "", 204
