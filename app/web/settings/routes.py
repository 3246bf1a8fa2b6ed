"""Settings → API tokens: mint, list and revoke personal access tokens."""

from __future__ import annotations

from flask import flash, redirect, render_template, url_for
from flask_login import current_user

from app.access import Role, require_role
from app.authn import client_address, current_actor
from app.models.types import utcnow
from app.services import api_tokens
from app.transaction import commit_and_wake
from app.web import once
from app.web.settings import bp
from app.web.settings.forms import NewTokenForm

MINTED = "api_token_minted"  # session key: which page load minted which token (app.web.once)


def _render(form: NewTokenForm, new_token: str | None = None, status: int = 200):
    return render_template(
        "settings/tokens.html",
        form=form,
        tokens=api_tokens.visible_tokens(current_user),
        new_token=new_token,
        # After a POST: a reload shows the list instead of asking to post again.
        page_url=url_for("settings.tokens") if new_token else None,
    ), status


@bp.get("/")
@require_role(Role.viewer)
def index():
    return redirect(url_for("settings.tokens"))


@bp.get("/tokens")
@require_role(Role.viewer)
def tokens():
    return _render(NewTokenForm())


@bp.post("/tokens")
@require_role(Role.viewer, self_service=True)
def create_token():
    form = NewTokenForm()
    request_id = form.request_id.data or ""
    if once.created_before(MINTED, request_id) is not None:
        flash("That token was already created; it was shown only once.", "info")
        return redirect(url_for("settings.tokens"), 303)
    if not form.validate_on_submit():
        return _render(form, status=422)
    token, plain = api_tokens.issue_token(
        current_user,
        form.name.data,
        actor=current_actor(),
        client_address=client_address(),
        now=utcnow(),
    )
    commit_and_wake()
    once.remember_created(MINTED, request_id, token.id)
    # Shown in this response only: never put the token in a flash (the cookie is not secret).
    return _render(NewTokenForm(formdata=None), new_token=plain, status=201)


@bp.post("/tokens/<int:token_id>/revoke")
@require_role(Role.viewer, self_service=True)
def revoke_token(token_id: int):
    token = api_tokens.get_token_of(current_user, token_id)
    api_tokens.revoke_token(
        token, actor=current_actor(), client_address=client_address(), now=utcnow()
    )
    commit_and_wake()
    flash(f"Token “{token.name}” revoked. Anything using it now gets 401.", "success")
    return redirect(url_for("settings.tokens"))
