"""Add host (enrollment tokens) and the host page: vitals, repository, snapshots, jobs."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user
from sqlalchemy import select

from app.access import Role, require_role
from app.api.hosts import get_host_or_404, save_repository
from app.api.jobs import start_host_job
from app.authn import client_address
from app.extensions import db
from app.hosts import bp
from app.hosts.forms import RUN_FORMS, AddHostForm, RepositoryForm, RunForm
from app.hosts.install import agent_command, install_command
from app.models import Host, Job
from app.models.types import utcnow
from app.services import audit, enrollment, repository
from app.services.audit import Actor
from app.services.enrollment import redact_url
from app.services.errors import ServiceError, ValidationFailed
from app.web.routes import job_url


def _render(form: AddHostForm, *, token=None, plain=None, status=200):
    return render_template(
        "hosts/new.html",
        form=form,
        token=token,
        plain=plain,
        install_command=install_command(plain) if plain else None,
        agent_command=agent_command(plain) if plain else None,
        outstanding=enrollment.outstanding_tokens(utcnow()),
        now=utcnow(),
    ), status


def _audit(action: str, token) -> None:
    audit.record(
        Actor.for_user(current_user),
        action,
        target_type="enrollment_token",
        target_id=token.id,
        payload={"hostname": token.hostname, "repo_url": token.repo_url_redacted},
        client_address=client_address(),
    )


@bp.get("/new")
@require_role(Role.admin)
def new():
    return _render(AddHostForm())


@bp.post("/new")
@require_role(Role.admin)
def create():
    form = AddHostForm()
    if not form.validate_on_submit():
        return _render(form, status=422)
    try:
        token, plain = enrollment.mint_token(
            current_app.extensions["secretbox"],
            created_by=current_user,
            hostname=form.hostname.data,
            repo_url=form.repo_url.data,
            repo_username=form.repo_username.data,
            repo_password=form.repo_password.data,
            paths=form.paths.data,
            now=utcnow(),
        )
    except ValidationFailed as refused:
        db.session.rollback()
        for field_name, messages in refused.fields.items():
            getattr(form, field_name).errors = list(messages)
        return _render(form, status=422)
    audit.record(
        Actor.for_user(current_user),
        "enrollment_token.created",
        target_type="enrollment_token",
        target_id=token.id,
        payload={
            "hostname": token.hostname,
            "repo_url": token.repo_url_redacted,
            "paths": token.paths,
        },
        client_address=client_address(),
    )
    db.session.commit()
    return _render(AddHostForm(formdata=None), token=token, plain=plain, status=201)


@bp.post("/enrollment-tokens/<int:token_id>/regenerate")
@require_role(Role.admin)
def regenerate_token(token_id: int):
    token = enrollment.get_outstanding(token_id, utcnow())
    plain = enrollment.regenerate(token, now=utcnow())
    _audit("enrollment_token.regenerated", token)
    db.session.commit()
    return _render(AddHostForm(formdata=None), token=token, plain=plain, status=201)


@bp.post("/enrollment-tokens/<int:token_id>/revoke")
@require_role(Role.admin)
def revoke_token(token_id: int):
    token = enrollment.get_outstanding(token_id, utcnow())
    enrollment.revoke(token, now=utcnow())
    _audit("enrollment_token.revoked", token)
    db.session.commit()
    flash("Enrollment token revoked: the install command no longer works.", "success")
    return redirect(url_for("hosts.new"))


# --- host page ---------------------------------------------------------------------------

SNAPSHOT_LIMIT = 100
JOB_HISTORY_LIMIT = 25


def _run_forms(host: Host, submitted: RunForm | None = None) -> dict[str, RunForm]:
    """Fresh forms for every kind; the one just submitted keeps what was typed."""
    forms = {}
    for kind, form_class in RUN_FORMS.items():
        if submitted is not None and submitted.kind == kind:
            forms[kind] = submitted
        else:
            forms[kind] = form_class(host, formdata=None)
    return forms


def _repository_form(credential) -> RepositoryForm:
    """Prefilled with what is not secret: the username, and the URL unless it holds one."""
    form = RepositoryForm(formdata=None)
    if credential is not None:
        form.repo_username.data = credential.username
        if redact_url(credential.repo_url) == credential.repo_url:
            form.repo_url.data = credential.repo_url
    return form


def _render_host(
    host: Host,
    *,
    submitted: RunForm | None = None,
    repository_form: RepositoryForm | None = None,
    problem: str | None = None,
    status: int = 200,
):
    now = utcnow()
    snapshots = repository.snapshots_of(host, limit=SNAPSHOT_LIMIT + 1)
    credential = repository.credential_of(host)
    jobs = db.session.scalars(
        select(Job).where(Job.host_id == host.id).order_by(Job.id.desc()).limit(JOB_HISTORY_LIMIT)
    )
    context = {
        "host": host,
        "now": now,
        "status": host.status(now, current_app.config["RM_OFFLINE_AFTER_SECONDS"]),
        "snapshots": snapshots[:SNAPSHOT_LIMIT],
        "more_snapshots": len(snapshots) > SNAPSHOT_LIMIT,
        "jobs": list(jobs),
        "job_limit": JOB_HISTORY_LIMIT,
        "repo_url": redact_url(credential.repo_url) if credential else None,
        "repo_username": credential.username if credential else None,
        "run_forms": _run_forms(host, submitted),
        "active_kind": submitted.kind if submitted is not None else None,
        "repository_form": repository_form or _repository_form(credential),
        "problem": problem,
    }
    return render_template("hosts/show.html", **context), status


def _dashboard_return(target: str | None) -> str | None:
    """Run-now from the dashboard goes back there, filters and all; nowhere else."""
    if not target:
        return None
    parts = urlsplit(target)
    dashboard = url_for("web.dashboard")
    if parts.scheme or parts.netloc or parts.path != dashboard:
        return None
    return f"{dashboard}?{parts.query}" if parts.query else dashboard


@bp.get("/<int:host_id>")
@require_role(Role.viewer)
def show(host_id: int):
    return _render_host(get_host_or_404(host_id))


@bp.post("/<int:host_id>/jobs")
@require_role(Role.operator)
def run_job(host_id: int):
    """Start a job from a run-now form; a refusal comes back on the page that sent it."""
    host = get_host_or_404(host_id)
    back_to_dashboard = _dashboard_return(request.form.get("return_to"))
    kind = request.form.get("kind", "")
    form_class = RUN_FORMS.get(kind)
    if form_class is None:
        message = f"There is no job kind {kind!r} to run from this page."
        return _refuse(host, None, message, 422, back_to_dashboard)
    form = form_class(host)
    if not form.validate():
        return _refuse(host, form, "Check the highlighted field.", 422, back_to_dashboard)
    try:
        job = start_host_job(host, kind, form.params())
    except ServiceError as refused:
        db.session.rollback()
        if back_to_dashboard:  # the dashboard shows no fields: say it all in the flash
            return _refuse(host, form, refused.message, refused.status, back_to_dashboard)
        unplaced = form.apply_errors(refused.fields)
        if unplaced or not refused.fields:
            message = " ".join(unplaced) or refused.message
        else:
            message = "Check the highlighted field."  # the service's words are next to it
        return _refuse(host, form, message, refused.status, None)
    # An own fragment: the browser would otherwise carry the form's #run-… to the job page.
    return redirect(job_url(job.id) + "#job-head")


def _refuse(host, form, message, status, back_to_dashboard):
    if back_to_dashboard:
        flash(f"{host.hostname}: {message}", "error")
        return redirect(back_to_dashboard)
    return _render_host(host, submitted=form, problem=message, status=status)


@bp.post("/<int:host_id>/repo/probe")
@require_role(Role.operator)
def probe_repository(host_id: int):
    """Retry: check the repository again (and initialise it if it is missing)."""
    host = get_host_or_404(host_id)
    try:
        job = start_host_job(host, "probe", {})
    except ServiceError as refused:
        db.session.rollback()
        flash(refused.message, "error")
    else:
        flash(f"Checking the repository again (job {job.id}).", "success")
    return redirect(url_for("hosts.show", host_id=host.id))


@bp.post("/<int:host_id>/repository")
@require_role(Role.admin)
def update_repository(host_id: int):
    """New repository connection; the agent gets it and the repository is checked again."""
    host = get_host_or_404(host_id)
    form = RepositoryForm()
    if not form.validate():
        return _render_host(host, repository_form=form, status=422)
    try:
        save_repository(host, form.repo_url.data, form.repo_username.data, form.repo_password.data)
    except ServiceError as refused:
        db.session.rollback()
        placed = False
        for name, messages in refused.fields.items():
            field = form._fields.get(name)
            if field is not None:
                field.errors = [*field.errors, *messages]
                placed = True
        problem = None if placed else refused.message
        return _render_host(host, repository_form=form, problem=problem, status=refused.status)
    if repository.active_job(host, repository.BRING_UP_KINDS) is not None:
        flash("Repository connection saved. The repository is being checked again.", "success")
    else:
        flash(
            "Repository connection saved. The repository will be checked again as soon as "
            "the agent connects.",
            "success",
        )
    if request.form.get("return_to") == "repo":  # saved from the Repository tab
        return redirect(url_for("hosts.repo", host_id=host.id))
    return redirect(url_for("hosts.show", host_id=host.id))
