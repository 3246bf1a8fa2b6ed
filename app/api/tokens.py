"""/api/v1/tokens: automation can list, mint and revoke its owner's personal access tokens."""

from __future__ import annotations

from flask import jsonify
from flask_login import current_user

from app.access import Role, require_role
from app.api import bp
from app.api.serialize import token_json
from app.api.validation import json_body, string_field
from app.authn import client_address, current_actor
from app.models.types import utcnow
from app.services import api_tokens
from app.transaction import commit_and_wake


@bp.get("/tokens")
@require_role(Role.viewer)
def list_tokens():
    return jsonify({"items": [token_json(t) for t in api_tokens.tokens_of(current_user)]})


@bp.post("/tokens")
@require_role(Role.viewer, self_service=True)
def create_token():
    name = string_field(json_body(), "name", max_length=100)
    token, plain = api_tokens.issue_token(
        current_user, name, actor=current_actor(), client_address=client_address(), now=utcnow()
    )
    commit_and_wake()
    return jsonify({**token_json(token), "token": plain}), 201


@bp.delete("/tokens/<int:token_id>")
@require_role(Role.viewer, self_service=True)
def revoke_token(token_id: int):
    token = api_tokens.get_token_of(current_user, token_id)
    api_tokens.revoke_token(
        token, actor=current_actor(), client_address=client_address(), now=utcnow()
    )
    commit_and_wake()
    return "", 204
