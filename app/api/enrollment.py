"""/api/v1/enrollment-tokens: add hosts from automation."""

from __future__ import annotations

from flask import current_app, jsonify

from app.access import Role, require_role
from app.api import bp
from app.api.validation import json_body
from app.authn import client_address, current_actor
from app.formatting import iso
from app.install_commands import agent_command, install_command
from app.models.types import utcnow
from app.services import backends, enrollment
from app.transaction import commit_and_wake


def _token_json(token, plain: str | None = None) -> dict:
    body = {
        "id": token.id,
        "hostname": token.hostname,
        "repo_url": token.repo_url_redacted,
        "repo_backend": backends.backend_of(token.repo_url_redacted).key,
        "paths": list(token.paths or []),
        "created_at": iso(token.created_at),
        "expires_at": iso(token.expires_at),
        "expired": token.expires_at <= utcnow(),
        "used_at": iso(token.used_at),
        "revoked_at": iso(token.revoked_at),
        # The host it enrolled (the Add host page waits for this), null until it is used.
        "host": (
            {"id": token.used_by_host.id, "hostname": token.used_by_host.hostname}
            if token.used_by_host is not None
            else None
        ),
    }
    if plain:
        body.update(
            token=plain,
            install_command=install_command(plain),
            agent_command=agent_command(plain),
        )
    return body


@bp.get("/enrollment-tokens")
@require_role(Role.admin)
def list_enrollment_tokens():
    tokens = enrollment.outstanding_tokens(utcnow())
    return jsonify({"items": [_token_json(token) for token in tokens]})


@bp.post("/enrollment-tokens")
@require_role(Role.admin)
def create_enrollment_token():
    body = json_body()
    token, plain = enrollment.create_token(
        current_app.extensions["secretbox"],
        actor=current_actor(),
        client_address=client_address(),
        hostname=body.get("hostname"),
        repo_url=body.get("repo_url"),
        repo_username=body.get("repo_username"),
        repo_password=body.get("repo_password"),
        paths=body.get("paths"),
        now=utcnow(),
        backend=backends.backend_input(body),
    )
    commit_and_wake()
    return jsonify(_token_json(token, plain)), 201


@bp.get("/enrollment-tokens/<int:token_id>")
@require_role(Role.admin)
def get_enrollment_token(token_id: int):
    """One token, also once used or revoked: ``host`` names the host it enrolled."""
    return jsonify(_token_json(enrollment.get_token(token_id)))


@bp.post("/enrollment-tokens/<int:token_id>/regenerate")
@require_role(Role.admin)
def regenerate_enrollment_token(token_id: int):
    token = enrollment.get_outstanding(token_id, utcnow())
    plain = enrollment.regenerate_token(
        token, actor=current_actor(), client_address=client_address(), now=utcnow()
    )
    commit_and_wake()
    return jsonify(_token_json(token, plain)), 201


@bp.delete("/enrollment-tokens/<int:token_id>")
@require_role(Role.admin)
def revoke_enrollment_token(token_id: int):
    token = enrollment.get_outstanding(token_id, utcnow())
    enrollment.revoke_token(
        token, actor=current_actor(), client_address=client_address(), now=utcnow()
    )
    commit_and_wake()
    return "", 204
