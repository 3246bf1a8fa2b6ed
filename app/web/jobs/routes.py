"""Job pages: recent jobs with filters, one job (live log, progress, cancel)."""

from __future__ import annotations

from flask import current_app, flash, redirect, render_template, request, url_for
from sqlalchemy import select
from werkzeug.routing import BuildError

from app import MAX_ID
from app.access import Role, require_role
from app.authn import client_address, current_actor
from app.bus import host_key, job_key
from app.extensions import db
from app.formatting import log_notes
from app.models import Host, Job, JobLog, Snapshot
from app.models.types import utcnow
from app.services import dispatch, hosts, jobs
from app.services.diffs import diff_page
from app.services.errors import Conflict, ValidationFailed
from app.transaction import commit_and_wake
from app.web.jobs import bp, display

PAGE_LOG_LINES = 2000  # the page shows the last lines; the downloads have them all
LIST_LIMIT = 200
DIFF_PAGE_SIZE = 100


def host_url(host_id: int) -> str | None:
    """The host's page, once the hosts blueprint has one."""
    try:
        return url_for("hosts.show", host_id=host_id)
    except BuildError:
        return None


@bp.app_template_global()
def latest_backup_of(host: Host) -> Job | None:
    """The host's latest backup job, for the result line on the host page."""
    return db.session.get(Job, host.last_backup_job_id) if host.last_backup_job_id else None


def _filters() -> tuple[dict, dict]:
    """host_id, kind, status and tag from the query string, and the tag's error: a tag that
    is no tag is said so (the page shows no rows rather than everything unfiltered); other
    unusable values are ignored."""
    chosen, errors = {}, {}
    host_id = request.args.get("host_id", "").strip()
    if host_id.isdigit() and int(host_id) <= MAX_ID:
        chosen["host_id"] = int(host_id)
    for name in ("kind", "status"):
        value = request.args.get(name, "").strip()
        if value and len(value) <= 32:
            chosen[name] = value
    tag = request.args.get("tag", "").strip()
    if tag:
        try:
            chosen["tag"] = hosts.parse_tag_filter(tag)
        except ValidationFailed as refused:
            errors = refused.fields
    return chosen, errors


def _before() -> int | None:
    """The keyset cursor of the "Older jobs" link (the last id shown)."""
    value = request.args.get("before", "").strip()
    return int(value) if value.isdigit() and 0 < int(value) <= MAX_ID else None


@bp.get("/")
@require_role(Role.viewer)
def index():
    chosen, errors = _filters()
    before = _before()
    found = [] if errors else jobs.list_jobs(**chosen, before_id=before, limit=LIST_LIMIT)
    host_rows = db.session.execute(
        select(Host.id, Host.hostname, Host.tags).order_by(Host.hostname)
    ).all()
    tags_of = {host_id: list(tags or []) for host_id, _, tags in host_rows}
    names = {host_id: hostname for host_id, hostname, _ in host_rows}
    kinds = db.session.scalars(select(Job.kind).distinct().order_by(Job.kind)).all()
    return render_template(
        "jobs/index.html",
        rows=[(job, names.get(job.host_id, f"host {job.host_id}")) for job in found],
        tags_of=tags_of,
        hosts=[(host_id, hostname) for host_id, hostname, _ in host_rows],
        tags=sorted({tag for tags in tags_of.values() for tag in tags}),
        kinds=kinds,
        statuses=display.STATUSES,
        chosen=chosen,
        errors=errors,
        requested_tag=request.args.get("tag", "").strip(),
        before=before,
        older=found[-1].id if len(found) == LIST_LIMIT else None,
        any_jobs=bool(found) or db.session.scalar(select(Job.id).limit(1)) is not None,
        limit=LIST_LIMIT,
        now=utcnow(),
        job_duration=display.job_duration,
        host_url=host_url,
    ), (422 if errors else 200)


@bp.get("/<int:job_id>")
@require_role(Role.viewer)
def show(job_id: int):
    job = jobs.get_job(job_id)
    host = db.session.get(Host, job.host_id)
    records = list(
        db.session.scalars(
            select(JobLog)
            .where(JobLog.job_id == job.id)
            .order_by(JobLog.seq.desc())
            .limit(PAGE_LOG_LINES)
        )
    )
    records.reverse()
    last_seq = records[-1].seq if records else 0
    now = utcnow()
    return render_template(
        "jobs/show.html",
        **_kind_context(job, host),
        job=job,
        host=host,
        host_link=host_url(host.id),
        records=records,
        last_seq=last_seq,
        hidden_lines=max(0, (records[0].seq - 1) if records else 0),
        notes=log_notes(job, current_app.config["RM_JOB_LOG_RETENTION_DAYS"]),
        status_words=display.status_words(job),
        stats=_stats(job),
        progress=display.progress_view(job.progress),
        duration=display.job_duration(job, now),
        now=now,
    )


def _stats(job: Job) -> list:
    """The Results card; a diff's are in its own table, a restore's target is shown above."""
    if not job.is_terminal or job.kind == "diff":
        return []
    hide = ("target", "in_place") if job.kind == "restore" else ()
    return display.stats_rows(job.stats, hide=hide)


def _snapshots_named(host: Host, *ids) -> dict:
    """The host's stored snapshots by full id, for the short id and time next to an id."""
    wanted = [value for value in ids if isinstance(value, str) and value]
    if not wanted:
        return {}
    rows = db.session.scalars(
        select(Snapshot).where(Snapshot.host_id == host.id, Snapshot.snapshot_id.in_(wanted))
    )
    return {row.snapshot_id: row for row in rows}


def _page_arguments() -> tuple[str | None, int]:
    modifier = request.args.get("modifier")
    if modifier not in {letter for letter, _ in display.DIFF_FILTERS}:
        modifier = None
    offset = request.args.get("offset", "")
    return modifier, int(offset) if offset.isdigit() else 0


def _kind_context(job: Job, host: Host) -> dict:
    """What the restore and diff variants of the page show above the log."""
    params = job.params or {}
    if job.kind == "restore":
        return {"snapshots": _snapshots_named(host, params.get("snapshot_id"))}
    if job.kind != "diff":
        return {}
    context = {
        "snapshots": _snapshots_named(host, params.get("snapshot_a"), params.get("snapshot_b")),
        "diff": None,
    }
    if job.is_terminal:
        modifier, offset = _page_arguments()
        context["diff"] = diff_page(job, modifier=modifier, limit=DIFF_PAGE_SIZE, offset=offset)
        context["diff_modifier"] = modifier
        context["diff_offset"] = offset
        context["diff_limit"] = DIFF_PAGE_SIZE
        context["diff_summary"] = display.diff_summary(job.stats)
        context["change_view"] = display.change_view
        context["diff_filters"] = display.DIFF_FILTERS
    return context


@bp.post("/<int:job_id>/cancel")
@require_role(Role.operator)
def cancel(job_id: int):
    job = jobs.get_job(job_id)
    try:
        host = dispatch.cancel_job(
            current_app.extensions["secretbox"],
            job,
            actor=current_actor(),
            client_address=client_address(),
            now=utcnow(),
        )
    except Conflict as refused:
        db.session.rollback()
        flash(refused.message, "warning")
        return redirect(url_for("jobs.show", job_id=job_id))
    commit_and_wake(host_key(host.id), job_key(job.id))
    if job.status == "cancelled":
        flash("Job cancelled before it started.", "success")
    else:
        flash(
            "Cancel requested: the agent stops restic within a few seconds "
            "(a backup in progress leaves no snapshot).",
            "success",
        )
    return redirect(url_for("jobs.show", job_id=job_id))
