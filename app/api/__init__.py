"""/api/v1: the JSON API for people and automation (personal access token or session)."""

from flask import Blueprint

bp = Blueprint("api", __name__)

from app.api import (  # noqa: E402,F401
    enrollment,
    hosts,
    job_stream,
    jobs,
    maintenance,
    me,
    restores,
    schedules,
    snapshot_files,
    source_groups,
    tokens,
)
