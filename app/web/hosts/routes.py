"""Add host (enrollment tokens) and the host page: vitals, repository, snapshots, jobs."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import current_app, flash, redirect, render_template, request, url_for
from sqlalchemy import select

from app.access import Role, require_role
from app.authn import client_address, current_actor
from app.bus import host_key
from app.extensions import db
from app.install_commands import agent_command, install_command
from app.models import Host, Job
from app.models.types import utcnow
from app.services import alerts, backends, dispatch, enrollment, repository, snapshot_sizes
from app.services.errors import ServiceError, ValidationFailed
from app.services.hosts import get_host
from app.transaction import commit_and_wake
from app.web import once
from app.web.dashboard.routes import job_url
from app.web.forms import place_refusal
from app.web.hosts import bp
from app.web.hosts.forms import RUN_FORMS, AddHostForm, RepositoryForm, RunForm

MINTED = "add_host_minted"  # session key: which page load minted which token (app.web.once)


def _render(form: AddHostForm, *, token=None, plain=None, problem=None, status=200):
    """The Add host page; with ``token`` it follows that token until its host enrolls
    (``plain``, the token itself, only in the one answer that created it)."""
    return render_template(
        "hosts/new.html",
        form=form,
        token=token,
        plain=plain,
        install_command=install_command(plain) if plain else None,
        agent_command=agent_command(plain) if plain else None,
        outstanding=enrollment.outstanding_tokens(utcnow()),
        now=utcnow(),
        problem=problem,
        backend_catalog=backends.catalog(),
        error_count=sum(1 for field in form if field.errors),
        # The answer to a POST: a reload should show the token's state, not post again.
        page_url=url_for("hosts.enrollment_token", token_id=token.id) if plain else None,
    ), status


@bp.get("/new")
@require_role(Role.admin)
def new():
    return _render(AddHostForm())


@bp.post("/new")
@require_role(Role.admin)
def create():
    form = AddHostForm()
    request_id = form.request_id.data or ""
    earlier = once.created_before(MINTED, request_id)
    if earlier is not None:  # a reload of the page that showed the token: show its state
        return redirect(url_for("hosts.enrollment_token", token_id=earlier), 303)
    try:
        token, plain = enrollment.create_token(
            current_app.extensions["secretbox"],
            actor=current_actor(),
            client_address=client_address(),
            hostname=form.hostname.data,
            repo_url=form.repo_url.data,
            repo_username=form.repo_username.data,
            repo_password=form.repo_password.data,
            paths=form.paths.data,
            now=utcnow(),
            backend=form.backend_input(),
        )
    except ValidationFailed as refused:
        db.session.rollback()
        problem = place_refusal(form, refused, prefixes=("repo_env.",))
        form.forget_secrets()
        return _render(form, problem=problem, status=422)
    commit_and_wake()
    once.remember_created(MINTED, request_id, token.id)
    return _render(AddHostForm(formdata=None), token=token, plain=plain, status=201)


@bp.get("/enrollment-tokens/<int:token_id>")
@require_role(Role.admin)
def enrollment_token(token_id: int):
    """Where a token stands (waiting, enrolled, expired, revoked); never the token itself."""
    return _render(AddHostForm(), token=enrollment.get_token(token_id))


@bp.post("/enrollment-tokens/<int:token_id>/regenerate")
@require_role(Role.admin)
def regenerate_token(token_id: int):
    token = enrollment.get_token(token_id)
    issued = token.created_at.isoformat()
    if token.used_at or token.revoked_at or request.form.get("issued_at", issued) != issued:
        # A reload of an earlier regenerate, or the host enrolled meanwhile: nothing to do.
        return redirect(url_for("hosts.enrollment_token", token_id=token.id), 303)
    plain = enrollment.regenerate_token(
        token, actor=current_actor(), client_address=client_address(), now=utcnow()
    )
    commit_and_wake()
    return _render(AddHostForm(formdata=None), token=token, plain=plain, status=201)


@bp.post("/enrollment-tokens/<int:token_id>/revoke")
@require_role(Role.admin)
def revoke_token(token_id: int):
    token = enrollment.get_outstanding(token_id, utcnow())
    enrollment.revoke_token(
        token, actor=current_actor(), client_address=client_address(), now=utcnow()
    )
    commit_and_wake()
    flash("Enrollment token revoked: the install command no longer works.", "success")
    return redirect(url_for("hosts.new"))


# --- host page ---------------------------------------------------------------------------

SNAPSHOT_LIMIT = 100
JOB_HISTORY_LIMIT = 25
OPEN_ALERTS_SHOWN = 5


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
    """Prefilled with what is not secret: the username, the URL unless it holds one, the
    restic options and insecure TLS (backend values are never shown: empty keeps them)."""
    form = RepositoryForm(formdata=None)
    if credential is not None:
        form.repo_username.data = credential.username
        form.repo_url.data = repository.form_url(current_app.extensions["secretbox"], credential)
        form.repo_options.data = "\n".join(credential.repo_options or [])
        form.insecure_tls.data = bool(credential.insecure_tls)
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
    open_alerts = alerts.list_alerts(state="open", host_id=host.id, limit=OPEN_ALERTS_SHOWN + 1)
    context = {
        "host": host,
        "now": now,
        "open_alerts": open_alerts[:OPEN_ALERTS_SHOWN],
        "more_alerts": len(open_alerts) > OPEN_ALERTS_SHOWN,
        "muted_alerts": alerts.muted_by(open_alerts, {host.id: host}, now),
        "alert_rules": alerts.RULES,
        "status": host.status(now, current_app.config["RM_OFFLINE_AFTER_SECONDS"]),
        "snapshots": snapshots[:SNAPSHOT_LIMIT],
        "snapshot_sizes": snapshot_sizes.sizes_of(snapshots[:SNAPSHOT_LIMIT]),
        "more_snapshots": len(snapshots) > SNAPSHOT_LIMIT,
        "jobs": list(jobs),
        "job_limit": JOB_HISTORY_LIMIT,
        "repo_url": credential.repo_url_redacted if credential else None,
        "repo_username": credential.username if credential else None,
        "run_forms": _run_forms(host, submitted),
        "active_kind": submitted.kind if submitted is not None else None,
        "repository_form": repository_form or _repository_form(credential),
        "repo_saved": repository.public_settings(credential) if credential else None,
        "backend_catalog": backends.catalog(),
        "problem": problem,
    }
    return render_template("hosts/show.html", **context), status


def start_job(host: Host, kind: str, params: dict) -> Job:
    """A Run-now form's job (or Retry, or Compare): queued, audited, the agent woken."""
    job = dispatch.start_job(
        current_app.extensions["secretbox"],
        host,
        kind,
        params,
        actor=current_actor(),
        client_address=client_address(),
        now=utcnow(),
        offline_after_seconds=current_app.config["RM_OFFLINE_AFTER_SECONDS"],
    )
    commit_and_wake(host_key(host.id))
    return job


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
    return _render_host(get_host(host_id))


@bp.post("/<int:host_id>/jobs")
@require_role(Role.operator)
def run_job(host_id: int):
    """Start a job from a run-now form; a refusal comes back on the page that sent it."""
    host = get_host(host_id)
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
        job = start_job(host, kind, form.params())
    except ServiceError as refused:
        db.session.rollback()
        if back_to_dashboard:  # the dashboard shows no fields: say it all in the flash
            return _refuse(host, form, refused.message, refused.status, back_to_dashboard)
        # When every message sits next to its field, the banner only points there.
        message = form.apply_refusal(refused) or "Check the highlighted field."
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
    host = get_host(host_id)
    try:
        job = start_job(host, "probe", {})
    except ServiceError as refused:
        db.session.rollback()
        flash(refused.message, "error")
    else:
        flash(f"Checking the repository again (job {job.id}).", "success")
    return redirect(url_for("hosts.show", host_id=host.id))
