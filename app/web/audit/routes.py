"""/audit: who did what, newest first, filtered and paged "before id" like the API."""

from __future__ import annotations

import json
from typing import Optional

from flask import current_app, render_template, request, url_for
from sqlalchemy import select

from app.access import Role, require_role
from app.extensions import db
from app.models import Alert, AuditLog, EnrollmentToken, Host, Job
from app.services import audit_log
from app.services.errors import ValidationFailed
from app.web.audit import bp

PAGE_SIZE = 50
FILTER_NAMES = ("actor", "action", "target_type", "target_id", "host_id", "since", "until", "q")
# Targets whose page is one list (the users page lists every user; no page per user).
_LIST_PAGES = {
    "channel": ("settings.notifications",),
    "silence": ("alerts.silences",),
    "alert_rule": ("alerts.rules",),
    "user": ("settings.users_list",),
}


def _existing(model, ids: set[int]) -> set[int]:
    if not ids:
        return set()
    return set(db.session.scalars(select(model.id).where(model.id.in_(ids))))


def _number(text) -> Optional[int]:
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    if isinstance(text, str) and text.isdigit() and len(text) <= 10:
        return int(text)
    return None


def _ids(rows: list[AuditLog], target_type: str) -> set[int]:
    found = {_number(row.target_id) for row in rows if row.target_type == target_type}
    return {number for number in found if number is not None}


def _first_endpoint(names: tuple[str, ...]) -> Optional[str]:
    return next((name for name in names if name in current_app.view_functions), None)


def target_links(rows: list[AuditLog]) -> dict[int, str]:
    """Row id → the page of its target, for targets that still exist (one query per kind)."""
    hosts = _existing(Host, _ids(rows, "host"))
    jobs = _existing(Job, _ids(rows, "job"))
    alerts = _existing(Alert, _ids(rows, "alert"))
    enrollments = _existing(EnrollmentToken, _ids(rows, "enrollment_token"))
    payload_hosts = {
        _number((row.payload or {}).get("host_id"))
        for row in rows
        if row.target_type in ("schedule", "source_group")
    }
    hosts |= _existing(Host, {number for number in payload_hosts if number is not None})
    links = {}
    for row in rows:
        number = _number(row.target_id)
        kind = row.target_type
        if kind == "host" and number in hosts:
            links[row.id] = url_for("hosts.show", host_id=number)
        elif kind == "job" and number in jobs:
            links[row.id] = url_for("jobs.show", job_id=number)
        elif kind == "alert" and number in alerts:
            links[row.id] = url_for("alerts.show", alert_id=number)
        elif kind == "enrollment_token" and number in enrollments:
            links[row.id] = url_for("hosts.enrollment_token", token_id=number)
        elif kind in ("schedule", "source_group"):
            host_id = _number((row.payload or {}).get("host_id"))
            if host_id in hosts:
                page = "hosts.schedules" if kind == "schedule" else "hosts.sources"
                links[row.id] = url_for(page, host_id=host_id)
        elif kind in _LIST_PAGES:
            endpoint = _first_endpoint(_LIST_PAGES[kind])
            if endpoint:
                links[row.id] = url_for(endpoint)
    return links


def pretty(payload) -> str:
    return json.dumps(payload or {}, indent=2, ensure_ascii=False, sort_keys=True)


def compact(payload, limit: int = 90) -> str:
    """The payload on one line, cut to ``limit`` characters (the details hold all of it)."""
    if not payload:
        return ""
    text = ", ".join(
        f"{key}={json.dumps(value, ensure_ascii=False)}" for key, value in payload.items()
    )
    return text if len(text) <= limit else text[: limit - 1] + "…"


@bp.get("/audit")
@require_role(Role.admin)
def index():
    values = {name: request.args.get(name, "").strip() for name in FILTER_NAMES}
    kept = {name: value for name, value in values.items() if value}
    errors: dict[str, list[str]] = {}
    rows, next_cursor = [], None
    filters = audit_log.AuditFilters()
    before = request.args.get("cursor", "").strip()
    try:
        filters = audit_log.parse_filters(request.args)
        before_id = audit_log.decode_cursor(before)
        rows, next_cursor = audit_log.page(filters, before_id=before_id, limit=PAGE_SIZE)
    except ValidationFailed as refused:
        errors = refused.fields
    hosts = db.session.execute(select(Host.id, Host.hostname).order_by(Host.hostname)).all()
    actions = audit_log.known_actions()
    prefixes = sorted({action.split(".", 1)[0] + "." for action in actions if "." in action})
    return render_template(
        "audit/index.html",
        values=values,
        kept=kept,
        errors=errors,
        rows=rows,
        links=target_links(rows),
        hostnames=dict(hosts),
        hosts=hosts,
        actions=actions,
        action_prefixes=prefixes,
        target_types=audit_log.known_target_types(),
        filtered=bool(kept),
        paged=bool(before) and not errors,
        older_args={**kept, "cursor": next_cursor} if next_cursor else None,
        pretty=pretty,
        compact=compact,
    ), (422 if errors else 200)
