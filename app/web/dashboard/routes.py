"""Dashboard and the health endpoints for proxies and orchestrators."""

from __future__ import annotations

from datetime import timedelta

from flask import current_app, jsonify, make_response, render_template, request, url_for
from sqlalchemy import text

from app.access import Role, public, require_role
from app.errors import RETRY_AFTER_SECONDS
from app.extensions import db
from app.formatting import FILTERS
from app.models.types import utcnow
from app.services import alerts
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
    rows = fleet.load_rows(now, current_app.config["RM_OFFLINE_AFTER_SECONDS"])
    query = fleet.FleetQuery.from_args(request.args)
    tags = fleet.all_tags(rows)
    context = {
        "now": now,
        "query": query,
        "rows": fleet.apply(rows, query),
        "fleet_size": len(rows),
        "summary": fleet.summarize(rows, fleet.job_counts_since(now - timedelta(hours=24))),
        "tags": tags,
        "return_to": url_for("web.dashboard", **query.args()),
        # built once, not per row: the table may have thousands of rows
        "host_prefix": f"{request.script_root}/hosts/",
        "tag_urls": {tag: url_for("web.dashboard", **query.args(tag=tag)) for tag in tags},
        # open alerts per host, one aggregate for the whole table
        "alert_summary": alerts.open_summary(),
        "alerts_prefix": f"{request.script_root}/alerts?host_id=",
    }
    if refresh_requested("fleet"):
        response = make_response(render_template("_fleet.html", **context))
    else:
        response = make_response(render_template("dashboard.html", **context))
    response.vary.add("X-Refresh-Regions")
    return response


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
