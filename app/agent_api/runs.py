"""POST /api/agent/v1/runs: jobs the agent started on its own (a schedule fired).

Not audited per run: a schedule firing every 15 minutes would bury the audit log, and the
job row itself records who started it (actor "schedule"). Changes to schedules are audited.
"""

from __future__ import annotations

from flask import jsonify

from app.access import agent_endpoint
from app.agent_api import bp, parse
from app.agent_api.routes import _authenticated_host
from app.models.types import utcnow
from app.services import jobs
from app.transaction import commit_and_wake

MAX_PATHS = 1000
MAX_PATH_LENGTH = 4096


def _string_list(params: dict, field: str, *, absolute: bool = False) -> list[str]:
    value = params.get(field, [])
    where = f"params.{field}"
    if not isinstance(value, list) or len(value) > MAX_PATHS:
        parse.invalid(where, f"must be a list of at most {MAX_PATHS} strings")
    for index, item in enumerate(value):
        if not isinstance(item, str) or not item or len(item) > MAX_PATH_LENGTH:
            parse.invalid(f"{where}[{index}]", "must be a non-empty string")
        if absolute and not item.startswith("/"):
            parse.invalid(f"{where}[{index}]", "must be an absolute path")
    return list(value)


def _limit(params: dict, field: str):
    value = params.get(field)
    return None if value is None else parse.positive_int(value, f"params.{field}")


def _params(data: dict) -> dict:
    """The backup's params as the agent ran them; hook bodies are dropped, never stored."""
    params = data.get("params")
    if not isinstance(params, dict):
        parse.invalid("params", "must be an object")
    return {
        "group": parse.short_string(params, "group", max_length=64, required=True),
        "paths": _string_list(params, "paths", absolute=True),
        "excludes": _string_list(params, "excludes"),
        "tags": _string_list(params, "tags"),
        "limit_upload_kib": _limit(params, "limit_upload_kib"),
        "limit_download_kib": _limit(params, "limit_download_kib"),
    }


@bp.post("/runs")
@agent_endpoint
def register_run():
    host = _authenticated_host()
    data = parse.body()
    run_id = parse.short_string(data, "run_id", max_length=64, required=True)
    schedule_id = data.get("schedule_id")
    if schedule_id is not None:
        schedule_id = parse.positive_int(schedule_id, "schedule_id")
    if data.get("schedule_version") is not None:
        parse.positive_int(data["schedule_version"], "schedule_version")
    if data.get("kind") != "backup":
        parse.invalid("kind", "must be backup (only backups run on a schedule)")
    params = _params(data)
    fired_at = parse.timestamp(data.get("fired_at"), "fired_at")

    job, created = jobs.register_scheduled_run(
        host,
        run_id=run_id,
        schedule_id=schedule_id,
        params=params,
        fired_at=fired_at,
        now=utcnow(),
    )
    commit_and_wake()  # the job, or only the token's last use for a run registered before
    return jsonify({"job_id": job.id, "attempt_id": job.attempt_id}), 201 if created else 200
