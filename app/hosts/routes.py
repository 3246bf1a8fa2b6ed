"""Add host: mint, list, regenerate and revoke enrollment tokens."""

from __future__ import annotations

from flask import current_app, flash, redirect, render_template, url_for
from flask_login import current_user

from app.access import Role, require_role
from app.authn import client_address
from app.extensions import db
from app.hosts import bp
from app.hosts.forms import AddHostForm
from app.hosts.install import agent_command, install_command
from app.models.types import utcnow
from app.services import audit, enrollment
from app.services.audit import Actor
from app.services.errors import ValidationFailed


def _render(form: AddHostForm, *, token=None, plain=None, status=200):
    return render_template(
        "hosts/new.html",
        form=form,
        token=token,
        plain=plain,
        install_command=install_command(plain) if plain else None,
        agent_command=agent_command(plain) if plain else None,
        outstanding=enrollment.outstanding_tokens(utcnow()),
        now=utcnow(),
    ), status


def _audit(action: str, token) -> None:
    audit.record(
        Actor.for_user(current_user),
        action,
        target_type="enrollment_token",
        target_id=token.id,
        payload={"hostname": token.hostname, "repo_url": token.repo_url_redacted},
        client_address=client_address(),
    )


@bp.get("/new")
@require_role(Role.admin)
def new():
    return _render(AddHostForm())


@bp.post("/new")
@require_role(Role.admin)
def create():
    form = AddHostForm()
    if not form.validate_on_submit():
        return _render(form, status=422)
    try:
        token, plain = enrollment.mint_token(
            current_app.extensions["secretbox"],
            created_by=current_user,
            hostname=form.hostname.data,
            repo_url=form.repo_url.data,
            repo_username=form.repo_username.data,
            repo_password=form.repo_password.data,
            paths=form.paths.data,
            now=utcnow(),
        )
    except ValidationFailed as refused:
        db.session.rollback()
        for field_name, messages in refused.fields.items():
            getattr(form, field_name).errors = list(messages)
        return _render(form, status=422)
    audit.record(
        Actor.for_user(current_user),
        "enrollment_token.created",
        target_type="enrollment_token",
        target_id=token.id,
        payload={
            "hostname": token.hostname,
            "repo_url": token.repo_url_redacted,
            "paths": token.paths,
        },
        client_address=client_address(),
    )
    db.session.commit()
    return _render(AddHostForm(formdata=None), token=token, plain=plain, status=201)


@bp.post("/enrollment-tokens/<int:token_id>/regenerate")
@require_role(Role.admin)
def regenerate_token(token_id: int):
    token = enrollment.get_outstanding(token_id, utcnow())
    plain = enrollment.regenerate(token, now=utcnow())
    _audit("enrollment_token.regenerated", token)
    db.session.commit()
    return _render(AddHostForm(formdata=None), token=token, plain=plain, status=201)


@bp.post("/enrollment-tokens/<int:token_id>/revoke")
@require_role(Role.admin)
def revoke_token(token_id: int):
    token = enrollment.get_outstanding(token_id, utcnow())
    enrollment.revoke(token, now=utcnow())
    _audit("enrollment_token.revoked", token)
    db.session.commit()
    flash("Enrollment token revoked: the install command no longer works.", "success")
    return redirect(url_for("hosts.new"))
