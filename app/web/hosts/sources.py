"""Sources: the host's source groups (list, create, edit, delete, retention preview)."""

from __future__ import annotations

from flask import current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user

from app.access import Role, require_role
from app.authn import client_address, current_actor
from app.bus import host_key
from app.extensions import db
from app.models import Host, SourceGroup
from app.models.types import utcnow
from app.services import retention, source_groups
from app.services.errors import ServiceError, ValidationFailed
from app.services.hosts import get_host
from app.services.retention import RULES as RETENTION_FIELDS
from app.transaction import commit_and_wake
from app.web.forms import sort_refusal
from app.web.hosts import bp

FORM_FIELDS = (
    "name",
    "includes",
    "excludes",
    "retention",
    *RETENTION_FIELDS,
    "retry_max",
    "retry_backoff_seconds",
    *source_groups.HOOKS,
)


def _render_sources(host: Host, *, hook_values=None, hook_errors=None, status: int = 200):
    groups = source_groups.groups_of(host)
    now = utcnow()
    hook_errors = hook_errors or {}
    return render_template(
        "hosts/sources.html",
        host=host,
        tab="sources",
        now=now,
        status=host.status(now, current_app.config["RM_OFFLINE_AFTER_SECONDS"]),
        host_hooks=source_groups.host_hooks_set(host),
        groups=groups,
        using={group.id: source_groups.schedules_using(group) for group in groups},
        describe=retention.describe,
        hook_values=hook_values or {},
        hook_errors=hook_errors,
        error_count=len(hook_errors),
        page_url=url_for("hosts.sources", host_id=host.id) + "#host-hooks" if hook_errors else None,
    ), status


@bp.get("/<int:host_id>/sources")
@require_role(Role.viewer)
def sources(host_id: int):
    return _render_sources(get_host(host_id))


def _initial(group: SourceGroup | None) -> dict:
    """What the form shows first: the group's values, or sensible defaults for a new one."""
    if group is None:
        return {
            "retry_max": str(source_groups.DEFAULT_RETRY_MAX),
            "retry_backoff_seconds": str(source_groups.DEFAULT_RETRY_BACKOFF_SECONDS),
        }
    values = {
        "name": group.name,
        "includes": "\n".join(group.includes or []),
        "excludes": "\n".join(group.excludes or []),
        "retry_max": str(group.retry_max),
        "retry_backoff_seconds": str(group.retry_backoff_seconds),
    }
    for key in RETENTION_FIELDS:
        value = (group.retention or {}).get(key)
        values[key] = "" if value is None else str(value)
    return values


def _submitted(form, *, may_edit_hooks: bool) -> dict:
    """The service's input from the form; hooks only when the user may change them."""
    data = {
        "name": form.get("name", ""),
        "includes": form.get("includes", ""),
        "excludes": form.get("excludes", ""),
        "retention": {key: form.get(key, "").strip() for key in RETENTION_FIELDS},
        "retry_max": form.get("retry_max", "").strip(),
        "retry_backoff_seconds": form.get("retry_backoff_seconds", "").strip(),
    }
    if may_edit_hooks:
        for name in source_groups.HOOKS:
            if form.get(f"remove_{name}"):
                data[name] = None
            elif form.get(name, "").strip():
                data[name] = form[name]
    return data


def _form_field(name: str) -> str | None:
    key = name.removeprefix("retention.")
    return key if key in FORM_FIELDS else None


def _render_form(host: Host, group, values, *, errors=None, problem=None, preview=None, status=200):
    errors = errors or {}
    now = utcnow()
    return render_template(
        "hosts/source_form.html",
        host=host,
        tab="sources",
        now=now,
        status=host.status(now, current_app.config["RM_OFFLINE_AFTER_SECONDS"]),
        group=group,
        values=values,
        errors=errors,
        error_count=len(errors),
        problem=problem,
        preview=preview,
        retention_fields=RETENTION_FIELDS,
        labels=retention.RULE_LABELS,
        may_edit_hooks=current_user.has_role(Role.admin),
    ), status


# Each form posts to its own page's address: a refused form is shown again there, so the
# address bar stays right and a reload only repeats a check that changes nothing.
@bp.route("/<int:host_id>/sources/new", methods=["GET", "POST"])
@require_role(Role.operator)
def new_source(host_id: int):
    host = get_host(host_id)
    if request.method == "POST":
        return _save(host, None)
    return _render_form(host, None, _initial(None))


@bp.route("/<int:host_id>/sources/<int:group_id>/edit", methods=["GET", "POST"])
@require_role(Role.operator)
def edit_source(host_id: int, group_id: int):
    host = get_host(host_id)
    group = source_groups.get_group(host, group_id)
    if request.method == "POST":
        return _save(host, group)
    return _render_form(host, group, _initial(group))


def _preview(host: Host, group, values):
    """The form's retention applied to the stored snapshots of the group's tag (the name in
    the form: a new group may take over an existing tag); nothing is saved."""
    policy = {key: values.get(key, "").strip() for key in RETENTION_FIELDS}
    tag = values.get("name", "").strip() or (group.name if group else "")
    try:
        preview = source_groups.preview_retention(host, tag, policy)
    except ValidationFailed as refused:
        errors, problem = sort_refusal(refused, _form_field)
        return _render_form(host, group, values, errors=errors, problem=problem, status=422)
    preview["tag"] = tag
    return _render_form(host, group, values, preview=preview)


def _save(host: Host, group: SourceGroup | None):
    values = request.form.to_dict()
    if request.form.get("action") == "preview":
        return _preview(host, group, values)
    box = current_app.extensions["secretbox"]
    may_edit_hooks = current_user.has_role(Role.admin)
    arguments = {
        "actor": current_actor(),
        "now": utcnow(),
        "may_edit_hooks": may_edit_hooks,
        "client_address": client_address(),
    }
    data = _submitted(request.form, may_edit_hooks=may_edit_hooks)
    try:
        if group is None:
            group = source_groups.create(box, host, data, **arguments)
            verb = "created"
        else:
            source_groups.update(box, group, data, **arguments)
            verb = "saved"
    except ValidationFailed as refused:
        db.session.rollback()
        errors, problem = sort_refusal(refused, _form_field)
        return _render_form(
            host, group, values, errors=errors, problem=problem, status=refused.status
        )
    except ServiceError as refused:
        db.session.rollback()
        return _render_form(host, group, values, problem=refused.message, status=refused.status)
    commit_and_wake(host_key(host.id))
    flash(f"Source group {group.name!r} {verb}; the agent gets the change.", "success")
    return redirect(url_for("hosts.sources", host_id=host.id) + f"#group-{group.id}")


@bp.post("/<int:host_id>/sources/<int:group_id>/delete")
@require_role(Role.operator)
def delete_source(host_id: int, group_id: int):
    host = get_host(host_id)
    group = source_groups.get_group(host, group_id)
    name = group.name
    try:
        source_groups.delete(
            current_app.extensions["secretbox"],
            group,
            actor=current_actor(),
            now=utcnow(),
            client_address=client_address(),
        )
    except ServiceError as refused:
        db.session.rollback()
        flash(refused.message, "error")
        return redirect(url_for("hosts.sources", host_id=host.id) + f"#group-{group_id}")
    commit_and_wake(host_key(host.id))
    flash(f"Source group {name!r} deleted. Its snapshots stay in the repository.", "success")
    return redirect(url_for("hosts.sources", host_id=host.id))


@bp.get("/<int:host_id>/sources/<int:group_id>/delete")
@require_role(Role.operator)
def confirm_delete_source(host_id: int, group_id: int):
    """Asks first (works without JavaScript) and says up front when deleting is refused."""
    host = get_host(host_id)
    group = source_groups.get_group(host, group_id)
    now = utcnow()
    return render_template(
        "hosts/source_delete.html",
        host=host,
        tab="sources",
        now=now,
        status=host.status(now, current_app.config["RM_OFFLINE_AFTER_SECONDS"]),
        group=group,
        using=source_groups.schedules_using(group),
        last=len(source_groups.groups_of(host)) <= 1,
    )


@bp.post("/<int:host_id>/hooks")
@require_role(Role.admin)
def save_host_hooks(host_id: int):
    """The host's default hooks, from the Sources tab (empty text keeps, a tick removes)."""
    host = get_host(host_id)
    data = {}
    for name in source_groups.HOOKS:
        text = request.form.get(name, "")
        if request.form.get(f"remove_{name}"):
            data[name] = None
        elif text.strip():
            data[name] = text
    try:
        changed = source_groups.save_host_hooks(
            current_app.extensions["secretbox"],
            host,
            data,
            actor=current_actor(),
            now=utcnow(),
        )
    except ValidationFailed as refused:
        db.session.rollback()
        errors = {name: list(messages) for name, messages in refused.fields.items()}
        return _render_sources(
            host, hook_values=request.form.to_dict(), hook_errors=errors, status=refused.status
        )
    commit_and_wake(host_key(host.id))
    flash(
        "Default hooks saved; the agent gets them with its schedule set."
        if changed
        else "Nothing changed.",
        "success" if changed else "info",
    )
    return redirect(url_for("hosts.sources", host_id=host.id) + "#host-hooks")
