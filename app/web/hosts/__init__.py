"""Host pages: Add host (enrollment tokens) and the host page."""

from flask import Blueprint

bp = Blueprint("hosts", __name__)

from app.web.hosts import alerts, manage, repo, restore, routes, schedules, sources  # noqa: E402,F401
