"""Settings → Users (admin: invite, role, disable, delete, reset link) and Settings →
Account (everyone: own password and sessions)."""

from __future__ import annotations

from flask import current_app, flash, g, redirect, render_template, request, url_for
from flask_login import current_user
from flask_wtf import FlaskForm
from wtforms import PasswordField, SelectField, StringField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, EqualTo, Length

from app.access import Role, require_role
from app.authn import client_address, current_actor
from app.extensions import db
from app.models.types import utcnow
from app.security import PASSWORD_MAX_LENGTH, PASSWORD_RULES
from app.services import invites, users
from app.services.errors import ServiceError
from app.transaction import commit_and_wake
from app.web import once
from app.web.forms import place_refusal
from app.web.settings import bp

INVITED = "user_invited"  # session key: which page load created which user (app.web.once)
ROLE_CHOICES = [(role.value, role.value.capitalize()) for role in Role]  # the table's <select>


class InviteForm(FlaskForm):
    username = StringField(
        "Username",
        validators=[DataRequired(message="Give a username."), Length(max=64)],
        description=users.USERNAME_RULES,
    )
    role = SelectField(
        "Role",
        choices=[SelectChoice(value, label) for value, label in ROLE_CHOICES],
        default=Role.viewer.value,
        validate_choice=False,  # the service names a tampered value under the field
    )
    request_id = once.request_id_field()


class PasswordForm(FlaskForm):
    current_password = PasswordField(
        "Current password",
        validators=[DataRequired(message="Give your current password.")],
    )
    new_password = PasswordField(
        "New password",
        validators=[DataRequired(message="Choose a password."), Length(max=PASSWORD_MAX_LENGTH)],
        description=PASSWORD_RULES,
    )
    confirm = PasswordField(
        "Repeat new password",
        validators=[
            DataRequired(message="Type the new password again."),
            EqualTo("new_password", message="The two passwords differ."),
        ],
    )


def _base_url() -> str:
    return current_app.config["RM_BASE_URL"] or request.host_url.rstrip("/")


def _users_page(form, *, link=None, status=200, problem=None):
    now = utcnow()
    rows = [(user, invites.pending_link(user, now=now)) for user in users.list_users()]
    return render_template(
        "settings/users.html",
        form=form,
        rows=rows,
        link=link,
        problem=problem,
        roles=ROLE_CHOICES,
        page_url=url_for("settings.users_list") if link or status != 200 else None,
    ), status


@bp.get("/users")
@require_role(Role.admin)
def users_list():
    return _users_page(InviteForm())


@bp.post("/users")
@require_role(Role.admin)
def invite_user():
    form = InviteForm()
    request_id = form.request_id.data or ""
    if once.created_before(INVITED, request_id) is not None:
        flash("That user was already invited; the link was shown only once.", "info")
        return redirect(url_for("settings.users_list"), 303)
    if not form.validate_on_submit():
        return _users_page(form, status=422)
    try:
        user, link, token = invites.invite_user(
            form.username.data,
            form.role.data,
            actor=current_actor(),
            client_address=client_address(),
            now=utcnow(),
        )
    except ServiceError as refused:
        db.session.rollback()
        return _users_page(form, status=refused.status, problem=place_refusal(form, refused))
    commit_and_wake()
    once.remember_created(INVITED, request_id, user.id)
    shown = {
        "username": user.username,
        "url": invites.invite_url(_base_url(), token),
        "expires_at": link.expires_at,
        "purpose": "invite",
    }
    # Shown in this response only: never in a flash (the cookie is not secret).
    return _users_page(InviteForm(formdata=None), link=shown, status=201)


def _refused(refused: ServiceError):
    db.session.rollback()
    flash(refused.message, "error")
    return redirect(url_for("settings.users_list"))


@bp.post("/users/<int:user_id>/role")
@require_role(Role.admin)
def change_user_role(user_id: int):
    user = users.get_user(user_id)
    try:
        role = users.parse_role(request.form.get("role", ""))
        users.change_role(user, role, actor=current_actor(), client_address=client_address())
    except ServiceError as refused:
        return _refused(refused)
    commit_and_wake()
    flash(f"{user.username} is now {user.role}.", "success")
    return redirect(url_for("settings.users_list"))


@bp.post("/users/<int:user_id>/disable")
@require_role(Role.admin)
def disable_user(user_id: int):
    return _set_disabled(user_id, True)


@bp.post("/users/<int:user_id>/enable")
@require_role(Role.admin)
def enable_user(user_id: int):
    return _set_disabled(user_id, False)


def _set_disabled(user_id: int, disabled: bool):
    user = users.get_user(user_id)
    try:
        users.set_disabled(
            user, disabled, actor=current_actor(), client_address=client_address(), now=utcnow()
        )
    except ServiceError as refused:
        return _refused(refused)
    commit_and_wake()
    if disabled:
        flash(f"{user.username} is disabled: their sessions and API tokens stopped.", "success")
    else:
        flash(f"{user.username} is enabled again.", "success")
    return redirect(url_for("settings.users_list"))


@bp.post("/users/<int:user_id>/delete")
@require_role(Role.admin)
def delete_user(user_id: int):
    user = users.get_user(user_id)
    name = user.username
    try:
        users.delete_user(user, actor=current_actor(), client_address=client_address())
    except ServiceError as refused:
        return _refused(refused)
    commit_and_wake()
    flash(f"{name} is deleted. The audit log keeps their name.", "success")
    return redirect(url_for("settings.users_list"))


@bp.post("/users/<int:user_id>/reset")
@require_role(Role.admin)
def reset_user(user_id: int):
    user = users.get_user(user_id)
    try:
        link, token = invites.reset_link(
            user, actor=current_actor(), client_address=client_address(), now=utcnow()
        )
    except ServiceError as refused:
        return _refused(refused)
    commit_and_wake()
    shown = {
        "username": user.username,
        "url": invites.invite_url(_base_url(), token),
        "expires_at": link.expires_at,
        "purpose": link.purpose,
    }
    return _users_page(InviteForm(formdata=None), link=shown)


# --- Settings → Account --------------------------------------------------------------------


def _account_page(form, status=200, problem=None):
    return render_template(
        "settings/account.html",
        form=form,
        problem=problem,
        sessions=users.active_sessions(current_user, now=utcnow()),
        current_session_id=getattr(g, "user_session_id", None),
        page_url=url_for("settings.account") if status != 200 else None,
    ), status


@bp.get("/account")
@require_role(Role.viewer)
def account():
    return _account_page(PasswordForm())


@bp.post("/account/password")
@require_role(Role.viewer, self_service=True)
def change_password():
    form = PasswordForm()
    if not form.validate_on_submit():
        return _account_page(form, 422)
    try:
        users.change_password(
            current_user,
            form.current_password.data,
            form.new_password.data,
            keep_session_id=getattr(g, "user_session_id", None),
            client_address=client_address(),
            now=utcnow(),
        )
    except ServiceError as refused:
        db.session.rollback()
        return _account_page(form, refused.status, place_refusal(form, refused))
    commit_and_wake()
    flash("Your password is changed. Your other sessions are signed out.", "success")
    return redirect(url_for("settings.account"))


@bp.post("/account/sessions/<int:session_id>/end")
@require_role(Role.viewer, self_service=True)
def end_session(session_id: int):
    users.end_own_session(current_user, session_id, client_address=client_address(), now=utcnow())
    commit_and_wake()
    flash("That session is signed out.", "success")
    return redirect(url_for("settings.account"))


@bp.post("/account/sessions/end-others")
@require_role(Role.viewer, self_service=True)
def end_other_sessions():
    ended = users.end_other_sessions(
        current_user,
        getattr(g, "user_session_id", None),
        client_address=client_address(),
        now=utcnow(),
    )
    commit_and_wake()
    flash(f"{ended} other session{'s' if ended != 1 else ''} signed out.", "success")
    return redirect(url_for("settings.account"))
