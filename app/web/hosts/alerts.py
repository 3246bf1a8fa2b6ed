"""The host's Alerts tab: its open and recent alerts, and (admins) its own alert settings
and its source groups' settings."""

from __future__ import annotations

from typing import Optional

from flask import current_app, flash, redirect, render_template, request, url_for
from wtforms.fields.choices import SelectChoice

from app.access import Role, require_role
from app.authn import client_address, current_actor
from app.extensions import db
from app.models import Host, SourceGroup
from app.models.types import utcnow
from app.services import alerts, source_groups
from app.services.errors import ValidationFailed
from app.services.hosts import get_host
from app.transaction import commit_and_wake
from app.web.alerts.forms import (
    AS_THE_HOST,
    HOST_NUMBERS,
    GroupAlertForm,
    HostAlertForm,
    fill_group_form,
    fill_host_form,
    group_field_of,
    group_form_values,
    group_prefix,
    host_field_of,
    host_form_values,
)
from app.web.hosts import bp

RECENT_RESOLVED = 10


def _render(
    host: Host,
    *,
    form=None,
    group_forms: Optional[dict[int, GroupAlertForm]] = None,
    problem: Optional[str] = None,
    status: int = 200,
):
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
    effective = {rule: settings.of(rule, host.id) for rule in alerts.RULES}
    groups = _group_rows(host, settings, effective, group_forms or {})
    error_count = sum(1 for field in form if field.errors)
    error_count += sum(1 for row in groups for field in row["form"] if field.errors)
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
        effective=effective,
        overrides=overrides,
        form=form,
        numbers=HOST_NUMBERS,
        groups=groups,
        problem=problem,
        error_count=error_count,
        page_url=url_for("hosts.alerts", host_id=host.id) if request.method == "POST" else None,
    ), status


def _group_rows(
    host: Host,
    settings: alerts.Settings,
    inherited: dict[str, alerts.Effective],
    submitted: dict[int, GroupAlertForm],
) -> list[dict]:
    """One row per source group: its form (as submitted, or its own settings), what a blank
    field means (the host's setting, or the fleet's) and the settings in force."""
    anomaly, overdue = inherited["backup_size_anomaly"], inherited["backup_overdue"]
    grace = overdue.threshold_seconds or 0
    placeholders = {
        "factor": f"{anomaly.factor:g} (inherited)",
        "drop_percent": f"{anomaly.drop_percent:g} (inherited)",
        "overdue_grace": f"{grace // 60 if grace % 60 == 0 else grace / 60:g} (inherited)",
    }
    rows = []
    for group in source_groups.groups_of(host):
        form = submitted.get(group.id)
        own = alerts.group_overrides(group)
        if form is None:
            form = GroupAlertForm(formdata=None, prefix=group_prefix(group.id))
            fill_group_form(form, own)
        for name, setting in (("anomaly_enabled", anomaly), ("overdue_enabled", overdue)):
            form[name].choices = [
                SelectChoice("", f"{AS_THE_HOST} ({'on' if setting.enabled else 'off'})"),
                SelectChoice("on", "On"),
                SelectChoice("off", "Off"),
            ]
        rows.append(
            {
                "group": group,
                "form": form,
                "own": own,
                "placeholders": placeholders,
                "effective": {
                    rule: settings.of(rule, host.id, group.id)
                    for rule in ("backup_size_anomaly", "backup_overdue")
                },
            }
        )
    return rows


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


def _submitted_groups(host: Host) -> list[tuple[SourceGroup, GroupAlertForm]]:
    """The host's groups whose row was on the submitted page (a group added since has no
    fields in the form, and must not read as "everything as the host")."""
    rows = []
    for group in source_groups.groups_of(host):
        prefix = group_prefix(group.id) + "-"
        if any(key.startswith(prefix) for key in request.form):
            rows.append((group, GroupAlertForm(request.form, prefix=group_prefix(group.id))))
    return rows


@bp.post("/<int:host_id>/alerts/groups")
@require_role(Role.admin)
def update_group_alert_settings(host_id: int):
    """Save the source groups' own settings: only the (group, rule) pairs that changed are
    written; every refusal is shown on its group's row and nothing is saved then."""
    host = get_host(host_id)
    submitted = _submitted_groups(host)
    forms = {group.id: form for group, form in submitted}
    wanted = {group.id: group_form_values(form) for group, form in submitted}
    if any(values is None for values in wanted.values()):
        return _render(host, group_forms=forms, status=422)
    changed, unplaced, refused_any = [], [], False
    for group, form in submitted:
        current = alerts.group_overrides(group)
        for rule, values in wanted[group.id].items():
            mine = current.get(rule, {})
            if all(mine.get(name) == value for name, value in values.items()):
                continue
            try:
                alerts.set_override(
                    host,
                    rule,
                    values,
                    actor=current_actor(),
                    now=utcnow(),
                    group=group,
                    client_address=client_address(),
                )
            except ValidationFailed as refused:
                refused_any = True
                for name, messages in refused.fields.items():
                    messages = messages if isinstance(messages, list) else [messages]
                    target = group_field_of(rule, name)
                    if target is None:
                        unplaced.extend(f"{group.name}: {message}" for message in messages)
                    else:
                        form[target].errors = [*form[target].errors, *messages]
                continue
            changed.append(f"{group.name} ({alerts.RULES[rule].label.lower()})")
    if refused_any:
        db.session.rollback()
        return _render(
            get_host(host_id), group_forms=forms, problem=" ".join(unplaced) or None, status=422
        )
    commit_and_wake()
    if changed:
        flash(
            f"Source group alert settings of {host.hostname} saved: {', '.join(changed)}.",
            "success",
        )
    else:
        flash("Nothing changed.", "info")
    return redirect(url_for("hosts.alerts", host_id=host.id) + "#group-alert-settings", 303)
