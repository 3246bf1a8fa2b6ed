"""Sign in, sign out and first-run setup."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import current_app, flash, redirect, render_template, request, session, url_for
from flask_login import current_user, login_user, logout_user

from app.access import Role, public, require_role
from app.authn import SESSION_KEY, client_address, current_actor
from app.extensions import db
from app.models.types import utcnow
from app.security import password_problems
from app.services import users
from app.services.errors import RateLimited, ServiceError
from app.transaction import commit_and_wake
from app.web.auth import bp
from app.web.auth.forms import LoginForm, SetupForm


def _safe_next(target: str | None) -> str:
    """Only same-site relative paths, so ?next= cannot bounce a user to another site."""
    if not target:
        return url_for("web.dashboard")
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return url_for("web.dashboard")
    return target


def _sign_in(user) -> None:
    token = users.start_session(
        user,
        now=utcnow(),
        hours=current_app.config["RM_SESSION_HOURS"],
        client_address=client_address(),
        user_agent=request.headers.get("User-Agent", ""),
    )
    session.clear()  # no fixation: a fresh cookie for a fresh session
    session[SESSION_KEY] = token
    session.permanent = True
    login_user(user)


@bp.route("/login", methods=["GET", "POST"])
@public
def login():
    if users.user_count() == 0:
        return _setup_page(SetupForm(token=request.args.get("setup_token", "")))
    if current_user.is_authenticated:
        return redirect(_safe_next(request.args.get("next")))
    form = LoginForm()
    status = 200
    if request.method == "POST" and current_app.config.get("RM_OIDC_ONLY"):
        flash("Password sign-in is turned off here (RM_OIDC_ONLY): use single sign-on.", "error")
        return render_template("auth/login.html", form=form), 403
    if form.validate_on_submit():
        config = current_app.config
        try:
            user = users.authenticate(
                form.username.data,
                form.password.data,
                client_address=client_address(),
                now=utcnow(),
                max_per_user=config["RM_LOGIN_MAX_FAILURES_PER_USER"],
                max_per_address=config["RM_LOGIN_MAX_FAILURES_PER_ADDRESS"],
                window_seconds=config["RM_LOGIN_WINDOW_SECONDS"],
            )
        except RateLimited as refused:
            db.session.rollback()
            flash(refused.message, "error")
            response = current_app.make_response(
                (render_template("auth/login.html", form=form), 429)
            )
            response.headers["Retry-After"] = str(refused.retry_after)
            return response
        if user is None:
            commit_and_wake()  # the failure counts towards the limits and is audited
            flash("Wrong username or password, or the account is disabled.", "error")
            status = 401
        else:
            _sign_in(user)
            commit_and_wake()
            return redirect(_safe_next(request.args.get("next")))
    return render_template("auth/login.html", form=form), status


def _setup_page(form: SetupForm, status: int = 200):
    return render_template("auth/setup.html", form=form), status


def _add_rule_problems(form: SetupForm) -> None:
    """The service's username and password rules, next to the form's own complaints."""
    username = users.normalize_username(form.username.data)
    if username and not form.username.errors:
        form.username.errors = list(users.username_problems(username))
    if form.password.data and not form.password.errors:
        form.password.errors = list(password_problems(form.password.data, username))


@bp.route("/setup", methods=["GET", "POST"])
@public
def setup():
    if users.user_count() > 0:
        if request.method == "POST":
            flash("Setup is already complete. Sign in instead.", "info")
        return redirect(url_for("auth.login"))
    form = SetupForm()
    if request.method == "GET":
        return redirect(url_for("auth.login", setup_token=request.args.get("setup_token", "")))
    form.validate_on_submit()
    _add_rule_problems(form)
    if any(field.errors for field in form):  # every problem at once, the token's last
        return _setup_page(form, 422)
    try:
        user = users.complete_setup(
            form.token.data,
            form.username.data,
            form.password.data,
            client_address=client_address(),
            now=utcnow(),
        )
    except ServiceError as refused:
        db.session.rollback()
        for field_name, messages in refused.fields.items():
            getattr(form, field_name).errors = list(messages) or [refused.message]
        if not refused.fields:
            flash(refused.message, "error")
        return _setup_page(form, refused.status)
    _sign_in(user)
    commit_and_wake()
    flash(f"Welcome, {user.username}. You are the administrator of this server.", "success")
    return redirect(url_for("web.dashboard"))


@bp.route("/logout", methods=["POST"])
@require_role(Role.viewer, self_service=True)
def logout():
    users.end_session(
        session.get(SESSION_KEY, ""),
        actor=current_actor(),
        client_address=client_address(),
        now=utcnow(),
    )
    commit_and_wake()
    logout_user()
    session.clear()
    flash("You are signed out.", "info")
    return redirect(url_for("auth.login"))
