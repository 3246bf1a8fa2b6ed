"""The host's Alerts tab: its open and recent alerts, and (admins) its own alert settings."""

from __future__ import annotations

from typing import Optional

from flask import current_app, flash, redirect, render_template, request, url_for
from wtforms.fields.choices import SelectChoice

from app.access import Role, require_role
from app.authn import client_address, current_actor
from app.extensions import db
from app.models import Host
from app.models.types import utcnow
from app.services import alerts
from app.services.errors import ValidationFailed
from app.services.hosts import get_host
from app.transaction import commit_and_wake
from app.web.alerts.forms import (
    HOST_NUMBERS,
    HostAlertForm,
    fill_host_form,
    host_field_of,
    host_form_values,
)
from app.web.hosts import bp

RECENT_RESOLVED = 10


def _render(host: Host, *, form=None, problem: Optional[str] = None, status: int = 200):
    now = utcnow()
    overrides = alerts.host_overrides(host)
    if form is None:
        form = HostAlertForm(formdata=None)
        fill_host_form(form, overrides)
    open_alerts = alerts.list_alerts(state="open", host_id=host.id, limit=100)
    resolved = alerts.list_alerts(state="resolved", host_id=host.id, limit=RECENT_RESOLVED)
    settings = alerts.Settings(host_ids=[host.id])
    for rule in alerts.RULES:  # say what "As the fleet" means today
        row = settings.fleet.get(rule)
        fleet_on = row.enabled if row is not None else True
        form[f"{rule}_enabled"].choices = [
            SelectChoice("", f"As the fleet ({'on' if fleet_on else 'off'})"),
            SelectChoice("on", "On"),
            SelectChoice("off", "Off"),
        ]
    return render_template(
        "hosts/alerts.html",
        host=host,
        tab="alerts",
        now=now,
        status=host.status(now, current_app.config["RM_OFFLINE_AFTER_SECONDS"]),
        open_alerts=open_alerts,
        resolved=resolved,
        muted=alerts.muted_by(open_alerts, {host.id: host}, now),
        rules=alerts.RULES,
        effective={rule: settings.of(rule, host.id) for rule in alerts.RULES},
        overrides=overrides,
        form=form,
        numbers=HOST_NUMBERS,
        problem=problem,
        error_count=sum(1 for field in form if field.errors),
        page_url=url_for("hosts.alerts", host_id=host.id) if request.method == "POST" else None,
    ), status


@bp.get("/<int:host_id>/alerts", endpoint="alerts")
@require_role(Role.viewer)
def alerts_page(host_id: int):
    return _render(get_host(host_id))


@bp.post("/<int:host_id>/alerts")
@require_role(Role.admin)
def update_alert_settings(host_id: int):
    """Save the host's own settings: only the rules whose values changed are written."""
    host = get_host(host_id)
    form = HostAlertForm(request.form)
    wanted = host_form_values(form)
    if wanted is None:
        return _render(host, form=form, status=422)
    current = alerts.host_overrides(host)
    changed = []
    try:
        for rule, values in wanted.items():
            mine = current.get(rule, {})
            if all(mine.get(name) == value for name, value in values.items()):
                continue
            alerts.set_override(
                host,
                rule,
                values,
                actor=current_actor(),
                now=utcnow(),
                client_address=client_address(),
            )
            changed.append(alerts.RULES[rule].label)
    except ValidationFailed as refused:
        db.session.rollback()
        host = get_host(host_id)
        unplaced = []
        for name, messages in refused.fields.items():
            target = host_field_of(rule, name)
            if target is None:
                unplaced.extend(messages if isinstance(messages, list) else [messages])
            else:
                form[target].errors = [*form[target].errors, *messages]
        return _render(host, form=form, problem=" ".join(unplaced) or None, status=422)
    commit_and_wake()
    if changed:
        flash(f"Alert settings of {host.hostname} saved: {', '.join(changed)}.", "success")
    else:
        flash("Nothing changed.", "info")
    return redirect(url_for("hosts.alerts", host_id=host.id), 303)
