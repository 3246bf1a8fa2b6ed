"""Dashboard and the health endpoints for proxies and orchestrators."""

from __future__ import annotations

from flask import current_app, jsonify, render_template
from sqlalchemy import select, text

from app.access import Role, public, require_role
from app.extensions import db
from app.models import Host
from app.models.types import utcnow
from app.web import bp


@bp.route("/")
@require_role(Role.viewer)
def dashboard():
    hosts = list(db.session.scalars(select(Host).order_by(Host.hostname)))
    now = utcnow()
    offline_after = current_app.config["RM_OFFLINE_AFTER_SECONDS"]
    rows = [(host, host.status(now, offline_after)) for host in hosts]
    return render_template("dashboard.html", rows=rows)


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
