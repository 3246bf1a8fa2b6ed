"""Dashboard and the health endpoints for proxies and orchestrators."""

from __future__ import annotations

from datetime import timedelta

from flask import current_app, jsonify, make_response, render_template, request, url_for
from sqlalchemy import text

from app.access import Role, public, require_role
from app.extensions import db
from app.formatting import FILTERS
from app.models.types import utcnow
from app.web.dashboard import bp, fleet

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
    """Ready for traffic: the database answers."""
    try:
        db.session.execute(text("SELECT 1"))
    except Exception as error:  # any failure means not ready; say which kind, not details
        current_app.logger.warning("readiness check failed: %s", type(error).__name__)
        db.session.rollback()
        return jsonify({"status": "unavailable", "database": "unreachable"}), 503
    finally:
        db.session.remove()
    return jsonify({"status": "ready", "database": "ok"})
