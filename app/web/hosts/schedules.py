"""Schedules: when the agent backs up which groups."""

from __future__ import annotations

from typing import Optional

from flask import current_app, flash, redirect, render_template, request, url_for
from flask_wtf import FlaskForm
from sqlalchemy import select
from wtforms import BooleanField, SelectField, SelectMultipleField, StringField
from wtforms.fields.choices import SelectChoice
from wtforms.widgets import CheckboxInput, ListWidget

from app.access import Role, require_role
from app.authn import client_address, current_actor
from app.bus import host_key
from app.extensions import db
from app.models import Host, Schedule, SourceGroup
from app.models.types import utcnow
from app.services import dispatch, schedules
from app.services.errors import ServiceError
from app.services.hosts import get_host
from app.services.schedules import NEXT_RUNS
from app.transaction import commit_and_wake
from app.web.dashboard.routes import job_url
from app.web.forms import place_errors, place_refusal
from app.web.hosts import bp


class ScheduleForm(FlaskForm):
    """Only carries the input: the rules live in the schedules service."""

    name = StringField("Name", description="Unique on this host, e.g. nightly.")
    cron = StringField("When (cron)", description=schedules.CRON_HELP)
    source_groups = SelectMultipleField(
        "Source groups",
        coerce=int,
        widget=ListWidget(prefix_label=False),
        option_widget=CheckboxInput(),
        description="Each group is backed up as its own job, in this order.",
    )
    missed_policy = SelectField(
        "Missed runs",
        choices=[
            SelectChoice("run_once", "Run once when the agent starts again"),
            SelectChoice("skip", "Skip them"),
        ],
        description="A run missed while the host was asleep or the agent stopped.",
    )
    enabled = BooleanField("Enabled", default=True)

    def __init__(self, host: Host, *args, **kwargs):
        super().__init__(*args, **kwargs)
        groups = db.session.scalars(
            select(SourceGroup).where(SourceGroup.host_id == host.id).order_by(SourceGroup.name)
        )
        self.source_groups.choices = [SelectChoice(group.id, group.name) for group in groups]

    def data_for_service(self) -> dict:
        return {
            "name": self.name.data or "",
            "cron": self.cron.data or "",
            "source_groups": list(self.source_groups.data or []),
            "missed_policy": self.missed_policy.data,
            "enabled": bool(self.enabled.data),
        }


def _filled(host: Host, schedule: Schedule) -> ScheduleForm:
    form = ScheduleForm(host, formdata=None)
    form.name.data = schedule.name
    form.cron.data = schedule.cron
    form.source_groups.data = [group.id for group in schedule.source_groups]
    form.missed_policy.data = schedule.missed_policy
    form.enabled.data = schedule.enabled
    return form


def _render(
    host: Host,
    *,
    form: Optional[ScheduleForm] = None,
    editing: Optional[Schedule] = None,
    problem: Optional[str] = None,
    status: int = 200,
):
    now = utcnow()
    items = schedules.schedules_of(host)
    form = form or ScheduleForm(host, formdata=None)
    return render_template(
        "hosts/schedules.html",
        host=host,
        tab="schedules",
        now=now,
        status=host.status(now, current_app.config["RM_OFFLINE_AFTER_SECONDS"]),
        schedules=items,
        last_runs=schedules.last_runs(item.id for item in items),
        next_runs={item.id: schedules.next_runs(item.cron, NEXT_RUNS, after=now) for item in items},
        describe=schedules.describe,
        presets=schedules.CRON_PRESETS,
        form=form,
        editing=editing,
        problem=problem,
        error_count=sum(1 for field in form if field.errors),
    ), status


def _box():
    return current_app.extensions["secretbox"]


def _recorded(host: Host, schedule: Optional[Schedule], action: str, **kwargs) -> None:
    """Audit, commit, and wake the agent's poll so the new set goes out at once."""
    schedules.record_change(
        host, schedule, action, actor=current_actor(), client_address=client_address(), **kwargs
    )
    commit_and_wake(host_key(host.id))


@bp.get("/<int:host_id>/schedules", endpoint="schedules")
@require_role(Role.viewer)
def schedules_page(host_id: int):
    return _render(get_host(host_id))


# Both forms post to their own page's address (the tab for a new schedule, the edit page
# for a change): a refused form comes back there and a reload only repeats the check.
@bp.post("/<int:host_id>/schedules")
@require_role(Role.operator)
def create_schedule(host_id: int):
    return _save(get_host(host_id), None)


@bp.route("/<int:host_id>/schedules/<int:schedule_id>/edit", methods=["GET", "POST"])
@require_role(Role.operator)
def edit_schedule(host_id: int, schedule_id: int):
    host = get_host(host_id)
    schedule = schedules.get_schedule_or_404(host, schedule_id)
    if request.method == "POST":
        return _save(host, schedule)
    return _render(host, form=_filled(host, schedule), editing=schedule)


def _save(host: Host, schedule: Optional[Schedule]):
    """The add (``schedule`` None) or edit form: check, save, audit, back to the list."""
    form = ScheduleForm(host)
    if not form.validate():
        # The form's own complaint (a tampered choice); the service names the rest at once.
        try:
            schedules.checked_values(
                host, form.data_for_service(), schedule, partial=schedule is not None
            )
        except ServiceError as refused:
            place_errors(form, refused.fields)
        return _render(host, form=form, editing=schedule, status=422)
    try:
        if schedule is None:
            schedule = schedules.create(_box(), host, form.data_for_service(), now=utcnow())
            action = "schedule.created"
        else:
            schedules.update_schedule(_box(), host, schedule, form.data_for_service(), now=utcnow())
            action = "schedule.updated"
    except ServiceError as refused:
        return _refused(host, form, schedule, refused)
    _recorded(host, schedule, action)
    flash(f"Schedule {schedule.name} saved; the agent gets it on its next poll.", "success")
    return redirect(url_for("hosts.schedules", host_id=host.id))


@bp.post("/<int:host_id>/schedules/<int:schedule_id>/enabled")
@require_role(Role.operator)
def toggle_schedule(host_id: int, schedule_id: int):
    host = get_host(host_id)
    schedule = schedules.get_schedule_or_404(host, schedule_id)
    enabled = not schedule.enabled
    schedules.update_schedule(_box(), host, schedule, {"enabled": enabled}, now=utcnow())
    _recorded(host, schedule, "schedule.updated")
    flash(f"Schedule {schedule.name} {'enabled' if enabled else 'disabled'}.", "success")
    return redirect(url_for("hosts.schedules", host_id=host.id))


@bp.post("/<int:host_id>/schedules/<int:schedule_id>/run")
@require_role(Role.operator)
def run_schedule(host_id: int, schedule_id: int):
    """Run now: a backup of each of the schedule's groups, as when it fires."""
    host = get_host(host_id)
    schedule = schedules.get_schedule_or_404(host, schedule_id)
    try:
        started = dispatch.run_schedule_now(
            _box(),
            host,
            schedule,
            actor=current_actor(),
            client_address=client_address(),
            now=utcnow(),
            offline_after_seconds=current_app.config["RM_OFFLINE_AFTER_SECONDS"],
        )
    except ServiceError as refused:
        db.session.rollback()
        flash(f"Schedule {schedule.name} did not run: {refused.message}", "error")
        return redirect(url_for("hosts.schedules", host_id=host.id))
    commit_and_wake(host_key(host.id))
    named = ", ".join(f"job {job.id} ({job.params.get('group')})" for job in started)
    flash(f"Schedule {schedule.name}: backup queued — {named}.", "success")
    if len(started) == 1:
        return redirect(job_url(started[0].id) + "#job-head")
    return redirect(url_for("hosts.schedules", host_id=host.id))


@bp.post("/<int:host_id>/schedules/<int:schedule_id>/delete")
@require_role(Role.operator)
def delete_schedule(host_id: int, schedule_id: int):
    host = get_host(host_id)
    schedule = schedules.get_schedule_or_404(host, schedule_id)
    name = schedule.name
    payload = {"name": name, "cron": schedule.cron}
    schedules.delete(_box(), host, schedule, now=utcnow())
    _recorded(host, None, "schedule.deleted", payload=payload, target_id=schedule_id)
    flash(f"Schedule {name} deleted; the agent stops running it on its next poll.", "success")
    return redirect(url_for("hosts.schedules", host_id=host.id))


def _refused(host: Host, form: ScheduleForm, schedule: Optional[Schedule], refused: ServiceError):
    db.session.rollback()  # a refused change leaves everything as it was
    if schedule is not None:
        db.session.refresh(schedule)
    problem = place_refusal(form, refused)
    return _render(host, form=form, editing=schedule, problem=problem, status=refused.status)
