"""Job pages: the list of recent jobs and one job's live page (log, progress, cancel)."""

from flask import Blueprint

bp = Blueprint("jobs", __name__)

from app.web.jobs import routes  # noqa: E402,F401
