"""Single sign-on: /login/oidc sends the browser to the identity provider, the callback
signs the user in (app/services/oidc.py has the rules)."""

from __future__ import annotations

from flask import abort, current_app, redirect, render_template, request, session, url_for
from flask_login import current_user

from app.access import public
from app.authn import client_address
from app.extensions import db
from app.models.types import utcnow
from app.services import oidc
from app.services.errors import ServiceError
from app.transaction import commit_and_wake
from app.web.auth import bp
from app.web.auth.forms import LoginForm
from app.web.auth.routes import _safe_next, _sign_in

_ATTEMPT_KEY = "oidc_attempt"


def _settings() -> oidc.Settings:
    if not current_app.config.get("RM_OIDC_ISSUER"):
        abort(404)
    return oidc.Settings.from_config(current_app.config)


def _redirect_uri() -> str:
    base = current_app.config["RM_BASE_URL"] or request.host_url.rstrip("/")
    return base + url_for("auth.oidc_callback")


def _login_page(message: str, status: int):
    """The sign-in page with the problem next to the single sign-on button."""
    return render_template("auth/login.html", form=LoginForm(), oidc_error=message), status


@bp.route("/login/oidc")
@public
def oidc_start():
    settings = _settings()
    if current_user.is_authenticated:
        return redirect(_safe_next(request.args.get("next")))
    try:
        url, attempt = oidc.begin(settings, _redirect_uri())
    except ServiceError as problem:
        return _login_page(problem.message, problem.status)
    session[_ATTEMPT_KEY] = {
        "state": attempt.state,
        "nonce": attempt.nonce,
        "code_verifier": attempt.code_verifier,
        "next": _safe_next(request.args.get("next")),
    }
    return redirect(url)


@bp.route("/login/oidc/callback")
@public
def oidc_callback():
    settings = _settings()
    saved = session.pop(_ATTEMPT_KEY, None)
    if not isinstance(saved, dict):
        saved = {}
    attempt = oidc.Attempt(
        state=str(saved.get("state") or ""),
        nonce=str(saved.get("nonce") or ""),
        code_verifier=str(saved.get("code_verifier") or ""),
    )
    params = {key: request.args.get(key, "") for key in request.args}
    try:
        claims = oidc.finish(settings, attempt, params=params, redirect_uri=_redirect_uri())
    except ServiceError as problem:
        return _login_page(problem.message, problem.status)
    try:
        user = oidc.sign_in(settings, claims, now=utcnow(), client_address=client_address())
    except oidc.SignInRefused as refused:
        commit_and_wake()  # the refusal's audit row
        return _login_page(refused.message, refused.status)
    except ServiceError as problem:
        db.session.rollback()
        return _login_page(problem.message, problem.status)
    _sign_in(user)
    commit_and_wake()
    return redirect(_safe_next(saved.get("next")))
