"""The host's Manage tab (admins): rename, tags, and deleting the host."""

from __future__ import annotations

from typing import Optional

from flask import current_app, flash, redirect, render_template, request, url_for

from app.access import Role, require_role
from app.authn import client_address, current_actor
from app.bus import host_key
from app.extensions import db
from app.models import Host
from app.models.types import utcnow
from app.services import hosts
from app.services.errors import ServiceError
from app.transaction import commit_and_wake
from app.web.forms import sort_refusal
from app.web.hosts import bp
from app.web.hosts.routes import _dashboard_return

_FIELDS = ("hostname", "tags", "confirm_hostname")


def _field_of(name: str) -> Optional[str]:
    return name if name in _FIELDS else None


def _render(
    host: Host,
    *,
    values: Optional[dict] = None,
    errors: Optional[dict] = None,
    problem: Optional[str] = None,
    status: int = 200,
):
    now = utcnow()
    errors = errors or {}
    return (
        render_template(
            "hosts/manage.html",
            host=host,
            tab="manage",
            tab_title="Manage",
            now=now,
            status=host.status(now, current_app.config["RM_OFFLINE_AFTER_SECONDS"]),
            values={
                "hostname": host.hostname,
                "tags": ", ".join(host.tags or []),
                "confirm_hostname": "",
                **(values or {}),
            },
            errors=errors,
            error_count=len(errors),
            problem=problem,
            page_url=url_for("hosts.manage", host_id=host.id) if status != 200 else None,
        ),
        status,
    )


@bp.get("/<int:host_id>/manage")
@require_role(Role.admin)
def manage(host_id: int):
    return _render(hosts.get_host(host_id))


def _refused(host: Host, refused: ServiceError, values: dict):
    db.session.rollback()
    host = hosts.get_host(host.id)  # as it is stored, not as the refused change left it
    errors, problem = sort_refusal(refused, _field_of)
    return _render(host, values=values, errors=errors, problem=problem, status=refused.status)


@bp.post("/<int:host_id>/manage/rename")
@require_role(Role.admin)
def rename(host_id: int):
    host = hosts.get_host(host_id)
    old_name = host.hostname
    values = {"hostname": request.form.get("hostname", "")}
    try:
        hosts.rename_host(
            host, values["hostname"], actor=current_actor(), client_address=client_address()
        )
    except ServiceError as refused:
        return _refused(host, refused, values)
    commit_and_wake()
    if host.hostname == old_name:
        flash("Nothing changed.", "info")
    else:
        flash(f"{old_name} is now called {host.hostname}.", "success")
    return redirect(url_for("hosts.manage", host_id=host.id))


@bp.post("/<int:host_id>/manage/tags")
@require_role(Role.admin)
def retag(host_id: int):
    host = hosts.get_host(host_id)
    values = {"tags": request.form.get("tags", "")}
    try:
        hosts.set_tags(host, values["tags"], actor=current_actor(), client_address=client_address())
    except ServiceError as refused:
        return _refused(host, refused, values)
    commit_and_wake()
    shown = ", ".join(host.tags or []) or "none"
    flash(f"Tags of {host.hostname}: {shown}.", "success")
    return redirect(url_for("hosts.manage", host_id=host.id))


@bp.post("/<int:host_id>/manage/delete")
@require_role(Role.admin)
def delete(host_id: int):
    host = hosts.get_host(host_id)
    hostname = host.hostname
    values = {"confirm_hostname": request.form.get("confirm_hostname", "")}
    try:
        hosts.delete_host(
            host,
            values["confirm_hostname"],
            actor=current_actor(),
            now=utcnow(),
            client_address=client_address(),
        )
    except ServiceError as refused:
        return _refused(host, refused, values)
    commit_and_wake(host_key(host_id))
    flash(
        f"{hostname} was deleted. Its repository is untouched; its agent stops at its next "
        "call to the server.",
        "success",
    )
    return redirect(url_for("web.dashboard"))


@bp.post("/tags")
@require_role(Role.admin)
def bulk_tags():
    """The dashboard's selection: add or remove one or more tags on the checked hosts."""
    back = _dashboard_return(request.form.get("return_to")) or url_for("web.dashboard")
    action = request.form.get("action")
    tags = request.form.get("tag", "")
    try:
        host_ids = [int(value) for value in request.form.getlist("host_ids")]
    except ValueError:
        host_ids = None
    try:
        changed = hosts.bulk_tags(
            host_ids,
            tags if action == "add" else [],
            tags if action == "remove" else [],
            actor=current_actor(),
            client_address=client_address(),
        )
    except ServiceError as refused:
        db.session.rollback()
        flash(f"No tags changed: {_in_words(refused)}", "error")
        return redirect(back)
    commit_and_wake()
    verb = "added to" if action == "add" else "removed from"
    names = ", ".join(host.hostname for host in changed[:10])
    more = f" and {len(changed) - 10} more" if len(changed) > 10 else ""
    flash(f"{', '.join(hosts.parse_tags(tags))} {verb} {names}{more}.", "success")
    return redirect(back)


def _in_words(refused: ServiceError) -> str:
    """The bulk form's refusal, in the form's words (it has one Tag field, no "add")."""
    if "host_ids" in refused.fields:
        return "select at least one host (tick the boxes in the table)."
    if refused.fields.get("add") == ["Give a tag to add or to remove."]:
        return "type the tag to add or to remove."
    return refused.message
