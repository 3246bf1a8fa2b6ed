"""Restore wizard (pick a snapshot, tick files, choose where, run) and snapshot diff."""

from __future__ import annotations

from urllib.parse import unquote

from flask import current_app, redirect, render_template, request
from sqlalchemy import select
from werkzeug.datastructures import MultiDict

from app.access import Role, require_role
from app.authn import client_address, current_actor
from app.bus import host_key
from app.extensions import db
from app.models import Host, Job
from app.models.types import utcnow
from app.services import dispatch, repository, snapshot_sizes
from app.services.errors import ServiceError
from app.services.hosts import get_host
from app.transaction import commit_and_wake
from app.web.dashboard.routes import job_url
from app.web.forms import sort_refusal
from app.web.hosts import bp
from app.web.hosts.routes import _render_host, start_job

WIZARD_SNAPSHOT_LIMIT = 500
FIELDS = ("snapshot_id", "include", "target", "in_place", "confirm_hostname", "verify")


def latest_restore(host: Host) -> Job | None:
    """The host's most recent restore job (any status), for the line in the host header."""
    return db.session.scalar(
        select(Job)
        .where(Job.host_id == host.id, Job.kind == "restore")
        .order_by(Job.id.desc())
        .limit(1)
    )


@bp.context_processor
def _restore_helpers():
    # A callable, so only the pages that show the host header run the query.
    return {"latest_restore_of": latest_restore}


def _find_snapshot(snapshots, wanted: str):
    """The snapshot with this full id or unique id prefix; None when none or several match."""
    wanted = (wanted or "").strip().lower()
    if not wanted:
        return None
    matches = [snapshot for snapshot in snapshots if snapshot.snapshot_id.startswith(wanted)]
    return matches[0] if len(matches) == 1 else None


def _lines(text: str) -> list[str]:
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def _submitted(form) -> dict:
    """What the operator chose, as typed: re-rendered untouched when the restore is refused."""
    return {
        "snapshot_id": form.get("snapshot_id", "").strip(),
        # Ticked paths arrive percent-encoded (a newline in a file name would become CRLF).
        "ticked": list(
            dict.fromkeys(unquote(path) for path in form.getlist("include") if path.strip())
        ),
        "typed": form.get("paths", ""),
        "mode": "in_place" if form.get("mode") == "in_place" else "new",
        "target": form.get("target", "").strip(),
        "confirm_hostname": form.get("confirm_hostname", "").strip(),
        "verify": bool(form.get("verify")),
    }


def restore_body(values: dict) -> dict:
    """The restore API's body from the wizard's fields (ticked and typed paths merged)."""
    body = {
        "snapshot_id": values["snapshot_id"],
        "include": list(dict.fromkeys([*values["ticked"], *_lines(values["typed"])])),
        "in_place": values["mode"] == "in_place",
        "verify": values["verify"],
    }
    if values["mode"] == "new" and values["target"]:
        body["target"] = values["target"]
    if values["mode"] == "in_place":
        body["confirm_hostname"] = values["confirm_hostname"]
    return body


def _wizard_field(name: str) -> str | None:
    base = name.split("[", 1)[0].split(".", 1)[0]
    return base if base in FIELDS else None


def _render_wizard(host: Host, values: dict, *, errors=None, problem=None, status=200):
    now = utcnow()
    snapshots = repository.snapshots_of(host, limit=WIZARD_SNAPSHOT_LIMIT)
    chosen = _find_snapshot(snapshots, values["snapshot_id"])
    return render_template(
        "hosts/restore.html",
        host=host,
        now=now,
        status=host.status(now, current_app.config["RM_OFFLINE_AFTER_SECONDS"]),
        snapshots=snapshots,
        snapshot_sizes=snapshot_sizes.sizes_of(snapshots),
        more_snapshots=(host.snapshot_count or 0) > len(snapshots),
        chosen=chosen,
        values=values,
        errors=errors or {},
        problem=problem,
    ), status


@bp.get("/<int:host_id>/restore")
@require_role(Role.operator)
def restore(host_id: int):
    host = get_host(host_id)
    values = _submitted(MultiDict())
    values["snapshot_id"] = request.args.get("snapshot", "").strip()
    return _render_wizard(host, values)


@bp.post("/<int:host_id>/restore")
@require_role(Role.operator)
def start_restore_from_wizard(host_id: int):
    """Queue the restore; a refusal comes back with everything the operator chose."""
    host = get_host(host_id)
    values = _submitted(request.form)
    try:
        job = dispatch.start_restore(
            current_app.extensions["secretbox"],
            host,
            restore_body(values),
            actor=current_actor(),
            client_address=client_address(),
            now=utcnow(),
            offline_after_seconds=current_app.config["RM_OFFLINE_AFTER_SECONDS"],
        )
    except ServiceError as refused:
        db.session.rollback()
        errors, problem = sort_refusal(refused, _wizard_field)
        return _render_wizard(host, values, errors=errors, problem=problem, status=refused.status)
    commit_and_wake(host_key(host.id))
    return redirect(job_url(job.id) + "#job-head")


@bp.post("/<int:host_id>/diff")
@require_role(Role.operator)
def diff_snapshots(host_id: int):
    """Compare two snapshots: a diff job; refusals come back on the host page."""
    host = get_host(host_id)
    params = {
        "snapshot_a": request.form.get("snapshot_a", "").strip(),
        "snapshot_b": request.form.get("snapshot_b", "").strip(),
    }
    if params["snapshot_a"] and params["snapshot_a"] == params["snapshot_b"]:
        return _render_host(host, problem="Pick two different snapshots to compare.", status=422)
    try:
        job = start_job(host, "diff", params)
    except ServiceError as refused:
        db.session.rollback()
        messages = [m for value in (refused.fields or {}).values() for m in _as_list(value)]
        return _render_host(
            host, problem=" ".join(messages) or refused.message, status=refused.status
        )
    return redirect(job_url(job.id) + "#job-head")


def _as_list(value) -> list[str]:
    return [value] if isinstance(value, str) else list(value)
