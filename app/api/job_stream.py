"""/api/v1 live view of one job: the SSE stream and the log downloads (engine: app.live)."""

from __future__ import annotations

from collections.abc import Iterator

from flask import Response, current_app, request

from app.access import Role, require_role
from app.api import bp
from app.api.validation import query_integer
from app.bus import host_key
from app.extensions import db
from app.formatting import iso, log_notes
from app.live import feeds, job_events, log_chunks, ndjson_line, text_line
from app.models import Host
from app.models.types import utcnow
from app.services import dispatch
from app.services.jobs import get_job
from app.services.validate import INT64_MAX
from app.transaction import commit_and_wake


def _resume_point() -> int:
    """Last-Event-ID (a reconnecting EventSource) wins over ?after= (the page's first open).

    A log sequence number is a 64-bit column: anything else is a 422 before the stream
    opens, never a stream cut short."""
    for name, raw in (
        ("Last-Event-ID", request.headers.get("Last-Event-ID")),
        ("after", request.args.get("after")),
    ):
        if raw is None or raw.strip() == "":
            continue
        return query_integer(name, raw, 0, INT64_MAX)
    return 0


@bp.get("/jobs/<int:job_id>/stream")
@require_role(Role.viewer)
def stream_job(job_id: int):
    job = get_job(job_id)
    after_seq = _resume_point()
    app = current_app._get_current_object()
    if job.status == "running" and not feeds(app).watched(job_id):
        # The first viewer of a running job: the agent flushes it every second from now on.
        host = dispatch.watch_job(app.extensions["secretbox"], job, now=utcnow())
        if host is not None:
            commit_and_wake(host_key(host.id))  # the parked long poll delivers it now
    # No stream_with_context: the request's session ends with the request, and each read
    # in job_events opens (and closes) its own, so nothing is held between reads.
    return Response(
        job_events(app, job_id, after_seq),
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _download(body: Iterator[str], mimetype: str, filename: str) -> Response:
    return Response(
        body,
        mimetype=mimetype,
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


@bp.get("/jobs/<int:job_id>/log.txt")
@require_role(Role.viewer)
def job_log_text(job_id: int):
    job = get_job(job_id)
    host = db.session.get(Host, job.host_id)
    head = (
        f"# job {job.id} · {job.kind} · host {host.hostname} · status {job.status}\n"
        f"# times are UTC; created {iso(job.created_at)}, started {iso(job.started_at) or '-'}, "
        f"finished {iso(job.finished_at) or '-'}\n"
    )
    notes = log_notes(job, current_app.config["RM_JOB_LOG_RETENTION_DAYS"])
    tail = "".join(f"# {note}\n" for note in notes)
    upto, app = job.log_committed_seq, current_app._get_current_object()

    def body():
        yield head
        yield from log_chunks(app, job_id, upto, text_line)
        if tail:
            yield tail

    return _download(body(), "text/plain", f"job-{job.id}.log.txt")


@bp.get("/jobs/<int:job_id>/log.ndjson")
@require_role(Role.viewer)
def job_log_ndjson(job_id: int):
    job = get_job(job_id)
    body = log_chunks(current_app._get_current_object(), job_id, job.log_committed_seq, ndjson_line)
    return _download(body, "application/x-ndjson", f"job-{job.id}.log.ndjson")
