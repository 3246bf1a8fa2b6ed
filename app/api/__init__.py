"""/api/v1: the JSON API for people and automation (personal access token or session)."""

from flask import Blueprint, request

bp = Blueprint("api", __name__)

# A JSON request to /api/v1 is small: the largest (a restore's include list) stays under
# 300 KiB. The app-wide limit (MAX_CONTENT_LENGTH) also covers the agent's uploads.
MAX_BODY_BYTES = 1024 * 1024

from app.api import (  # noqa: E402,F401
    alerts,
    audit,
    channels,
    enrollment,
    hosts,
    job_stream,
    jobs,
    maintenance,
    me,
    openapi,
    repository_test,
    restores,
    schedules,
    snapshot_files,
    source_groups,
    tokens,
    users,
)
from app.api.validation import check_request  # noqa: E402


@bp.before_request
def check_input():
    """Types, NUL characters, 64-bit integers and body size, before any view runs."""
    request.max_content_length = MAX_BODY_BYTES
    check_request(openapi.OPERATIONS.get(request.endpoint), openapi.SCHEMAS)
