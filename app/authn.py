"""How a request proves who it is: a server-side session row or a personal access token."""

from __future__ import annotations

import ipaddress

from flask import g, request, session
from flask.sessions import SecureCookieSessionInterface
from flask_login import current_user
from werkzeug.middleware.proxy_fix import ProxyFix

from app.extensions import db, login_manager
from app.models.types import utcnow
from app.services import api_tokens, users
from app.services.audit import Actor
from app.transaction import commit_and_wake

SESSION_KEY = "sid"


@login_manager.user_loader
def load_user_from_session(user_id: str):
    """Flask-Login's cookie names a user; the session row must still be live for it."""
    if is_token_request():
        return None  # a bearer token speaks for itself; never mix it with a cookie
    row = users.load_session(session.get(SESSION_KEY, ""), now=utcnow())
    if row is None or str(row.user_id) != user_id:
        return None
    if db.session.dirty:  # last_seen_at moved on
        commit_and_wake()
    g.user_session_id = row.id
    return row.user


@login_manager.request_loader
def load_user_from_bearer(req):
    """``Authorization: Bearer <personal access token>`` on /api/v1 (CSRF-exempt)."""
    if not req.path.startswith("/api/v1/"):
        return None
    token_value = bearer_token(req)
    if not token_value:
        return None
    token = api_tokens.authenticate_token(token_value, now=utcnow())
    if token is None:
        return None
    if db.session.dirty:  # last_used_at moved on
        commit_and_wake()
    g.api_token_id = token.id
    return token.user


def bearer_token(req) -> str:
    return bearer_from_header(req.headers.get("Authorization", ""))


def bearer_from_header(authorization: str) -> str:
    """The token of an ``Authorization: Bearer …`` header value, else ``""``."""
    scheme, _, value = authorization.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


def is_token_request() -> bool:
    """Requests carrying a bearer token never get (or need) a cookie or CSRF token."""
    return request.path.startswith("/api/") and bool(bearer_token(request))


def client_address() -> str:
    return request.remote_addr or "unknown"


def current_actor() -> Actor:
    """The signed-in user (session or token) as the services' explicit actor."""
    return Actor.for_user(current_user)


class SessionInterface(SecureCookieSessionInterface):
    """Flask's signed cookie holds only the session id; Secure follows the request scheme."""

    def get_cookie_secure(self, app):
        return request.is_secure

    def should_set_cookie(self, app, session_):
        if is_token_request():
            return False
        return super().should_set_cookie(app, session_)

    def save_session(self, app, session_, response):
        if is_token_request():
            return None
        return super().save_session(app, session_, response)


class TrustedProxyFix:
    """Believe X-Forwarded-* only from the reverse proxies listed in RM_TRUSTED_PROXIES."""

    def __init__(self, wsgi_app, networks):
        self.wsgi_app = wsgi_app
        self.networks = list(networks)
        self.fixed = ProxyFix(wsgi_app, x_for=1, x_proto=1, x_host=1, x_port=1, x_prefix=1)

    def _trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.networks)

    def __call__(self, environ, start_response):
        if self._trusted(environ.get("REMOTE_ADDR", "")):
            return self.fixed(environ, start_response)
        return self.wsgi_app(environ, start_response)
