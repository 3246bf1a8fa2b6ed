"""Dashboard and the health endpoints for proxies and orchestrators."""

from __future__ import annotations

import hashlib
from dataclasses import astuple
from datetime import timedelta

from flask import current_app, jsonify, make_response, render_template, request, url_for
from flask_login import current_user
from sqlalchemy import text

from app.access import Role, public, require_role
from app.errors import RETRY_AFTER_SECONDS
from app.extensions import db
from app.formatting import FILTERS
from app.models.types import utcnow
from app.services import alerts, hosts
from app.web.dashboard import bp, fleet

# Alembic's one-row table exists wherever the schema does.
READINESS_WRITE = "UPDATE alembic_version SET version_num = version_num"

for _name, _function in FILTERS.items():
    bp.add_app_template_filter(_function, _name)


@bp.app_template_global()
def job_url(job_id: int) -> str:
    """The job page (served by the jobs blueprint)."""
    return f"{request.script_root}/jobs/{int(job_id)}"


def refresh_requested(region: str) -> bool:
    """app.js asks for its regions by id; answer with just the fragment then."""
    wanted = request.headers.get("X-Refresh-Regions", "")
    return region in {name.strip() for name in wanted.split(",")}


@bp.route("/")
@require_role(Role.viewer)
def dashboard():
    now = utcnow()
    offline_after = current_app.config["RM_OFFLINE_AFTER_SECONDS"]
    query = fleet.FleetQuery.from_args(request.args)
    cursor = {
        name: request.args.get(name, "")[: hosts.MAX_CURSOR_LENGTH] for name in ("after", "before")
    }
    page = fleet.load_page(query, now, offline_after, **cursor)
    page_ids = [row.host.id for row in page.rows]
    summary = fleet.load_summary(
        now, offline_after, fleet.job_counts_since(now - timedelta(hours=24))
    )
    alert_summary = alerts.open_summary(page_ids)
    fragment = refresh_requested("fleet")
    # The filter's tag list is outside the refreshed region: only the full page needs it.
    tags = [] if fragment else hosts.all_tags()
    chips = sorted({tag for row in page.rows for tag in (row.host.tags or [])})
    etag = None
    if fragment:
        # The refresh asks every 5 s: answer 304 unless something it shows changed.
        etag = fleet_etag(query, cursor, now, page, summary, alert_summary)
        if etag in request.if_none_match:
            response = make_response("", 304)
            response.set_etag(etag)
            response.vary.add("X-Refresh-Regions")
            return response
    page_args = {name: value for name, value in cursor.items() if value}  # stay on this page
    context = {
        "now": now,
        "query": query,
        "page": page,
        "rows": page.rows,
        "fleet_size": summary.hosts,
        "summary": summary,
        "tags": tags,
        "return_to": url_for("web.dashboard", **query.args(), **page_args),
        "next_url": page.next_cursor
        and url_for("web.dashboard", **query.args(), after=page.next_cursor),
        "prev_url": page.prev_cursor
        and url_for("web.dashboard", **query.args(), before=page.prev_cursor),
        # built once, not per row
        "host_prefix": f"{request.script_root}/hosts/",
        # the rows' tag chips link to the table filtered by that tag
        "tag_urls": {tag: url_for("web.dashboard", **query.args(tag=tag)) for tag in chips},
        # open alerts per host on this page, one aggregate
        "alert_summary": alert_summary,
        "alerts_prefix": f"{request.script_root}/alerts?host_id=",
    }
    if fragment:
        response = make_response(render_template("_fleet.html", **context))
        response.set_etag(etag)
    else:
        response = make_response(render_template("dashboard.html", **context))
    response.vary.add("X-Refresh-Regions")
    return response


def fleet_etag(query, cursor, now, page, summary, alert_summary) -> str:
    """A digest of everything the fleet fragment shows, without rendering it: the page's rows
    as displayed (a host's status, not its last_seen_at, which every poll moves), the tiles,
    the alerts, who asks (roles change the buttons) and the minute (the
    "5 min ago" texts)."""
    rows = []
    for row in page.rows:
        host = row.host
        rows.append(
            (
                host.id,
                host.hostname,
                host.tags,
                host.os,
                host.arch,
                host.repo_status,
                host.repo_status_reason,
                host.repo_size_bytes,
                host.snapshot_count,
                host.last_backup_job_id,
                host.last_backup_status,
                str(host.last_backup_at),
                host.last_successful_backup_job_id,
                str(host.last_successful_backup_at),
                row.status,
                str(host.last_seen_at) if row.status == "offline" else "",
                row.active_backup_job_id,
                str(row.next_run),
            )
        )
    state = (
        current_user.get_id(),
        current_user.has_role(Role.operator),
        current_user.has_role(Role.admin),
        request.script_root,
        sorted(query.args().items()),
        sorted(cursor.items()),
        now.replace(second=0, microsecond=0).isoformat(),
        rows,
        (page.start, page.matches, page.next_cursor, page.prev_cursor),
        astuple(summary),
        sorted(alert_summary.items()),
    )
    digest = hashlib.blake2b(repr(state).encode(), digest_size=16).hexdigest()
    return f"fleet-{digest}"


@bp.route("/api/docs")
@require_role(Role.viewer)
def api_docs():
    """The API reference: Swagger UI on /api/v1/openapi.json (docs/api.md)."""
    return render_template("api_docs.html")


@bp.route("/healthz")
@public
def healthz():
    """The process is alive and serving requests (no database check: see /readyz)."""
    return jsonify({"status": "ok"})


@bp.route("/readyz")
@public
def readyz():
    """Ready for traffic: the database answers and accepts a write (rolled back)."""
    stage = "unreachable"
    try:
        db.session.execute(text("SELECT 1"))
        stage = "not writable"
        if db.engine.dialect.name == "postgresql":
            # A held lock should make the probe fail, not hang it.
            db.session.execute(text("SET LOCAL lock_timeout = '2s'"))
        # A real write that changes nothing: it needs the write lock (SQLite), a row lock
        # and a read-write transaction (PostgreSQL) and is rolled back below.
        db.session.execute(text(READINESS_WRITE))
    except Exception as error:  # any failure means not ready; say which kind, not details
        current_app.logger.warning("readiness check failed (%s): %s", stage, type(error).__name__)
        response = jsonify({"status": "unavailable", "database": stage})
        response.status_code = 503
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response
    finally:
        db.session.remove()  # closing rolls the write back and returns the connection
    return jsonify({"status": "ready", "database": "ok"})
