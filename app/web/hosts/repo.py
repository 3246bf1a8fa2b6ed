"""Repository tab: maintenance cadences, bandwidth caps, admin credential, re-initialise."""

from __future__ import annotations

from typing import Optional

from flask import current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user
from flask_wtf import FlaskForm
from sqlalchemy import inspect as sa_inspect
from wtforms import BooleanField, PasswordField, StringField

from app import agent_calls
from app.access import Role, require_role
from app.authn import client_address, current_actor
from app.bus import host_key
from app.extensions import db
from app.models import Host
from app.models.types import utcnow
from app.services import backends, dispatch, maintenance, repo_settings, repository, schedules
from app.services.errors import ServiceError
from app.services.hosts import get_host
from app.transaction import commit_and_wake
from app.web.forms import place_refusal
from app.web.hosts import bp
from app.web.hosts.forms import RepositoryForm
from app.web.hosts.routes import _render_host as render_host
from app.web.hosts.routes import _repository_form


class MaintenanceForm(FlaskForm):
    forget_cron = StringField(
        "Forget (cron, UTC)",
        description="Applies each source group's retention to its own tag. Empty: never.",
    )
    prune_cron = StringField(
        "Prune (cron, UTC)", description="Frees the space forgotten snapshots used. Empty: never."
    )
    check_cron = StringField("Check (cron, UTC)", description="Verifies the repository.")
    check_subset_percent = StringField(
        "Check reads this % of the data",
        description="Above 0 and at most 100; empty checks the structure only.",
    )
    enabled = BooleanField("Maintenance enabled")


class BandwidthForm(FlaskForm):
    upload_kib = StringField("Upload cap (KiB/s)", description="Empty: unlimited.")
    download_kib = StringField("Download cap (KiB/s)", description="Empty: unlimited.")


class AdminCredentialForm(FlaskForm):
    username = StringField("Admin username", description="Only for repositories that need one.")
    password = PasswordField(
        "Admin password", description="Sealed on the server and on the host; never shown again."
    )


class ReinitForm(FlaskForm):
    confirm_hostname = StringField("Type the host name to confirm")


def _tag_summary(host: Host) -> list[dict]:
    """Snapshots per tag: how many and the newest (untagged ones under "")."""
    summary: dict[str, dict] = {}
    for snapshot in repository.snapshots_of(host):  # newest first
        for tag in snapshot.tags or [""]:
            entry = summary.setdefault(tag, {"tag": tag, "count": 0, "newest": snapshot.time})
            entry["count"] += 1
    return sorted(summary.values(), key=lambda entry: entry["tag"])


ANCHORS = {
    "repository": "connection",
    "maintenance": "maintenance",
    "bandwidth": "bandwidth",
    "admin": "admin-credential",
    "reinit": "danger-zone",
}


def _render(
    host: Host,
    *,
    forms: Optional[dict] = None,
    problem=None,
    status: int = 200,
    test_result: Optional[dict] = None,
):
    """The tab; ``forms`` holds a refused form (by name) to show with its errors in place
    (or the repository form a Test connection answered: ``test_result``)."""
    now = utcnow()
    settings = repo_settings.maintenance_of(host)
    forms = forms or {}
    maintenance_form = forms.get("maintenance") or MaintenanceForm(
        formdata=None,
        forget_cron=settings.forget_cron,
        prune_cron=settings.prune_cron,
        check_cron=settings.check_cron,
        check_subset_percent=(
            f"{settings.check_subset_percent:g}" if settings.check_subset_percent else ""
        ),
        enabled=settings.enabled,
    )
    bandwidth_form = forms.get("bandwidth") or BandwidthForm(
        formdata=None,
        upload_kib=host.limit_upload_kib or "",
        download_kib=host.limit_download_kib or "",
    )
    tasks = []
    for task in maintenance.TASKS:
        cron = maintenance.cron_of(settings, task)
        tasks.append(
            {
                "name": task,
                "cron": cron,
                "description": schedules.describe(cron) if cron else None,
                "next_run": maintenance.next_fire(cron, now) if cron else None,
                "last_job": maintenance.last_job(host, task),
            }
        )
    everyday = repository.credential_of(host)
    return render_template(
        "hosts/repo.html",
        host=host,
        tab="repo",
        now=now,
        status=host.status(now, current_app.config["RM_OFFLINE_AFTER_SECONDS"]),
        settings=settings,
        tasks=tasks,
        maintenance_form=maintenance_form,
        bandwidth_form=bandwidth_form,
        admin_form=forms.get("admin") or AdminCredentialForm(formdata=None),
        reinit_form=forms.get("reinit") or ReinitForm(formdata=None),
        everyday=everyday,
        everyday_url=everyday.repo_url_redacted if everyday else None,
        repository_form=forms.get("repository") or _repository_form(everyday),
        repo_saved=repository.public_settings(everyday) if everyday else None,
        backend_catalog=backends.catalog(),
        test_result=test_result,
        repository_open="repository" in forms,
        admin=repository.credential_of(host, "admin"),
        tags=_tag_summary(host),
        problem=problem,
        error_count=sum(1 for form in forms.values() for field in form if field.errors),
        # Refused forms post elsewhere: the address bar gets the tab's own address back.
        page_url=url_for("hosts.repo", host_id=host.id) + f"#{ANCHORS[next(iter(forms))]}"
        if forms
        else None,
    ), status


def _refused(host: Host, name: str, form: FlaskForm, refused: ServiceError):
    """The service said no: nothing is kept, the tab comes back with the messages in place."""
    db.session.rollback()
    problem = place_refusal(form, refused, prefixes=("repo_env.",))
    if isinstance(form, RepositoryForm):
        form.forget_secrets()
    return _render(host, forms={name: form}, problem=problem, status=refused.status)


def _by_caller() -> dict:
    return {"actor": current_actor(), "client_address": client_address(), "now": utcnow()}


def _box():
    return current_app.extensions["secretbox"]


def _submit(host: Host, name: str, form: FlaskForm, save, *, done: str, anchor: str):
    """One settings form: check it, let ``save(host)`` apply it, come back to its place."""
    if not form.validate():
        return _render(host, forms={name: form}, problem="The form expired.", status=400)
    try:
        save(host)
    except ServiceError as refused:
        return _refused(host, name, form, refused)
    commit_and_wake(host_key(host.id))
    flash(done, "success")
    return _back(host, anchor)


def _back(host: Host, anchor: str):
    return redirect(url_for("hosts.repo", host_id=host.id) + f"#{anchor}")


@bp.get("/<int:host_id>/repo")
@require_role(Role.viewer)
def repo(host_id: int):
    return _render(get_host(host_id))


@bp.post("/<int:host_id>/repository")
@require_role(Role.admin)
def update_repository(host_id: int):
    """New repository connection (from the Overview or this tab); the agent gets it and the
    repository is checked again. A refusal comes back on the page that sent the form."""
    host = get_host(host_id)
    form = RepositoryForm()
    from_tab = request.form.get("return_to") == "repo"
    try:
        connection = _connection(host, form)
        repository.update_credentials(
            _box(),
            host,
            connection,
            offline_after_seconds=current_app.config["RM_OFFLINE_AFTER_SECONDS"],
            **_by_caller(),
        )
    except ServiceError as refused:
        db.session.rollback()
        if from_tab:
            return _refused(host, "repository", form, refused)
        problem = place_refusal(form, refused, prefixes=("repo_env.",))
        form.forget_secrets()
        return render_host(host, repository_form=form, problem=problem, status=refused.status)
    commit_and_wake(host_key(host.id))
    if repository.active_job(host, repository.BRING_UP_KINDS) is not None:
        flash("Repository connection saved. The repository is being checked again.", "success")
    else:
        flash(
            "Repository connection saved. The repository will be checked again as soon as "
            "the agent connects.",
            "success",
        )
    if from_tab:
        return redirect(url_for("hosts.repo", host_id=host.id))
    return redirect(url_for("hosts.show", host_id=host.id))


def _connection(host: Host, form: RepositoryForm) -> backends.Settings:
    """The connection the form describes, checked (ValidationFailed names the fields); an
    empty secret field keeps what was saved (the values are never shown again)."""
    extra = repository.keep_saved_values(_box(), host, form.backend_input(), form.repo_url.data)
    return backends.settings_from(
        form.repo_url.data, form.repo_username.data, form.repo_password.data, extra
    )


@bp.post("/<int:host_id>/repository/test")
@require_role(Role.admin)
def test_repository(host_id: int):
    """Test connection: the host's agent opens the repository with the form's settings
    (``restic cat config``). Nothing is saved; the tab comes back with the form as typed
    (secrets excepted) and restic's answer."""
    host = get_host(host_id)
    form = RepositoryForm()
    try:
        connection = _connection(host, form)
    except ServiceError as refused:
        return _refused(host, "repository", form, refused)
    try:
        result = agent_calls.test_connection(host, connection)
    except ServiceError as refused:
        db.session.rollback()
        _user_back_in_session()
        form.forget_secrets()
        return _render(
            get_host(host_id),
            forms={"repository": form},
            problem=refused.message,
            status=refused.status,
        )
    _user_back_in_session()
    form.forget_secrets()
    return _render(get_host(host_id), forms={"repository": form}, test_result=result)


def _user_back_in_session() -> None:
    """Waiting for the agent let go of the database session (agent_calls holds none while
    it waits): the signed-in user the page shows is attached to the new one."""
    user = current_user._get_current_object()
    state = sa_inspect(user, raiseerr=False)
    if state is not None and state.detached:
        db.session.add(user)


@bp.post("/<int:host_id>/repo/maintenance")
@require_role(Role.operator)
def save_maintenance(host_id: int):
    form = MaintenanceForm()
    return _submit(
        get_host(host_id),
        "maintenance",
        form,
        lambda host: repo_settings.update_maintenance(
            host,
            {
                "forget_cron": form.forget_cron.data,
                "prune_cron": form.prune_cron.data,
                "check_cron": form.check_cron.data,
                "check_subset_percent": form.check_subset_percent.data,
                "enabled": bool(form.enabled.data),
            },
            **_by_caller(),
        ),
        done="Maintenance cadences saved.",
        anchor="maintenance",
    )


@bp.post("/<int:host_id>/repo/bandwidth")
@require_role(Role.operator)
def save_bandwidth(host_id: int):
    form = BandwidthForm()
    return _submit(
        get_host(host_id),
        "bandwidth",
        form,
        lambda host: repo_settings.update_bandwidth(
            _box(), host, form.upload_kib.data, form.download_kib.data, **_by_caller()
        ),
        done="Bandwidth caps saved; the agent gets them on its next poll.",
        anchor="bandwidth",
    )


@bp.post("/<int:host_id>/repo/admin-credential")
@require_role(Role.admin)
def save_admin_credential(host_id: int):
    form = AdminCredentialForm()
    return _submit(
        get_host(host_id),
        "admin",
        form,
        lambda host: repo_settings.set_admin_credential(
            _box(), host, form.username.data or None, form.password.data, **_by_caller()
        ),
        done="Admin credential saved; forget and prune use it from now on.",
        anchor="admin-credential",
    )


@bp.post("/<int:host_id>/repo/admin-credential/delete")
@require_role(Role.admin)
def delete_admin_credential(host_id: int):
    host = get_host(host_id)
    if repo_settings.unset_admin_credential(_box(), host, **_by_caller()):
        commit_and_wake(host_key(host.id))
        flash("Admin credential removed.", "success")
    return _back(host, "admin-credential")


@bp.post("/<int:host_id>/repo/reinit")
@require_role(Role.operator)
def reinit_repository(host_id: int):
    """Queue an init job once the operator typed the host name (an existing repository is
    left as it is: restic refuses to initialise over it)."""
    host = get_host(host_id)
    form = ReinitForm()
    typed = (request.form.get("confirm_hostname") or "").strip()
    if not form.validate() or typed != host.hostname:
        form.confirm_hostname.errors = [f"Type {host.hostname} exactly to confirm."]
        return _render(host, forms={"reinit": form}, status=422)
    try:
        job = dispatch.reinitialise(
            _box(),
            host,
            offline_after_seconds=current_app.config["RM_OFFLINE_AFTER_SECONDS"],
            **_by_caller(),
        )
    except ServiceError as refused:
        db.session.rollback()
        return _render(host, forms={"reinit": form}, problem=refused.message, status=refused.status)
    commit_and_wake(host_key(host.id))
    flash(f"Initialisation queued as job {job.id}.", "success")
    return _back(host, "danger-zone")
