"""/invite/<token>: a one-time link (invitation or password reset) to choose a password.

The link comes from Settings → Users, ``POST /api/v1/users`` or ``restic-manager
create-user``; after the form the user is signed in.
"""

from __future__ import annotations

from flask import flash, redirect, render_template, url_for
from flask_login import logout_user

from app.access import public
from app.authn import client_address
from app.extensions import db
from app.models import User
from app.models.types import utcnow
from app.services import invites
from app.services.errors import ServiceError
from app.transaction import commit_and_wake
from app.web.auth import bp
from app.web.auth.forms import InviteForm
from app.web.auth.routes import _sign_in
from app.web.forms import place_refusal


def _page(form, link, user, status=200, problem=None):
    return render_template(
        "auth/invite.html", form=form, link=link, user=user, problem=problem
    ), status


@bp.route("/invite/<token>", methods=["GET", "POST"])
@public
def invite(token: str):
    now = utcnow()
    link = invites.find_link(token, now=now)
    if link is None:
        return _page(None, None, None, 404, invites.INVALID_LINK)
    user = db.session.get(User, link.user_id)
    form = InviteForm()
    if not form.validate_on_submit():
        return _page(form, link, user, 422 if form.is_submitted() else 200)
    try:
        user = invites.accept(
            token, form.password.data, client_address=client_address(), now=utcnow()
        )
    except ServiceError as refused:
        db.session.rollback()
        problem = place_refusal(form, refused)
        link = invites.find_link(token, now=utcnow())
        if link is None:
            return _page(None, None, None, 404, invites.INVALID_LINK)
        return _page(form, link, user, refused.status, problem)
    logout_user()
    _sign_in(user)
    commit_and_wake()
    flash(f"Welcome, {user.username}. Your password is set and you are signed in.", "success")
    return redirect(url_for("web.dashboard"))
