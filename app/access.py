"""Who may reach which route.

Every view declares the least role it needs with one decorator. ``enforce_access`` runs
before every request and refuses anything a route did not declare (deny by default), so a
forgotten decorator fails closed and the URL-map test names the culprit.

State-changing methods need at least ``operator`` whatever a view declares, unless the view
is marked ``self_service`` (signing out, managing one's own API tokens).
"""

from __future__ import annotations

from functools import wraps

from flask import current_app, g, redirect, request, url_for
from flask_login import current_user

from app.errors import forbidden, is_api_request, unauthenticated
from app.models import Role

PUBLIC = "public"
AGENT = "agent"  # the agent API checks its own bearer tokens
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_ALWAYS_PUBLIC_ENDPOINTS = frozenset({"static"})


def _mark(view, access, self_service=False):
    view._rm_access = access
    view._rm_self_service = self_service
    return view


def require_role(role: Role, *, self_service: bool = False):
    """Least role needed; ``self_service`` lets a viewer change only their own things."""

    def decorate(view):
        @wraps(view)
        def wrapper(*args, **kwargs):
            return view(*args, **kwargs)

        return _mark(wrapper, role, self_service)

    return decorate


def public(view):
    """Reachable without signing in (login, setup, health checks)."""
    return _mark(view, PUBLIC)


def agent_endpoint(view):
    """Authenticated by the agent's own bearer token, not a user."""
    return _mark(view, AGENT)


def declared_access(view):
    return getattr(view, "_rm_access", None)


def enforce_access():
    """before_request hook: deny unless the route's declaration allows this caller."""
    endpoint = request.endpoint
    if endpoint is None or endpoint in _ALWAYS_PUBLIC_ENDPOINTS:
        return None  # unknown URLs become 404s; static files are public
    view = current_app.view_functions[endpoint]
    access = declared_access(view)
    if access in (PUBLIC, AGENT):
        return None
    if access is None:
        current_app.logger.error("route %s declares no access level: refused", endpoint)
        return forbidden("This page is not available.")
    if not current_user.is_authenticated:
        if is_api_request():
            return unauthenticated()
        return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
    needed = access
    if request.method not in SAFE_METHODS and not view._rm_self_service:
        needed = max(needed, Role.operator, key=lambda role: role.rank)
    if not current_user.has_role(needed):
        return forbidden(
            f"This needs the {needed.value} role; you are signed in as "
            f"{current_user.username} ({current_user.role})."
        )
    g.access_role = needed
    return None
