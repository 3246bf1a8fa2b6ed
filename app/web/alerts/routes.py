"""The Alerts page (firing / acknowledged / resolved), one alert with its delivery log,
acknowledge and resolve, silences, and the banner and nav badge of every page."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Mapping, Optional
from urllib.parse import urlsplit

from flask import flash, g, redirect, render_template, request, url_for
from flask_login import current_user
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from app import MAX_ID
from app.access import Role, require_role
from app.authn import client_address, current_actor
from app.extensions import db
from app.models import Alert, Host, NotificationChannel
from app.models.alert import ALERT_STATES, SEVERITIES
from app.models.types import utcnow
from app.services import alerts
from app.services.errors import Conflict, ValidationFailed
from app.services.validate import TAG
from app.transaction import commit_and_wake
from app.web.alerts import bp
from app.web.alerts.forms import NoteForm, SilenceForm
from app.web.forms import place_errors, sort_messages

PAGE_SIZE = 50
ENDED_SHOWN = 20  # recently ended silences listed under the active ones
ENDED_WITHIN = timedelta(days=7)


# --- banner and nav badge --------------------------------------------------------------------


@dataclass(frozen=True)
class FiringCounts:
    firing: int
    critical: int


def firing_counts() -> FiringCounts:
    """Firing (unacknowledged) alerts, and how many of them are critical: one aggregate per
    request, made only when a full page renders (base.html asks; fragments do not)."""
    if "firing_alerts" not in g:
        try:
            rows = db.session.execute(
                select(Alert.severity, func.count())
                .where(Alert.state == "firing")
                .group_by(Alert.severity)
            ).all()
        except SQLAlchemyError:
            # An error page after a failed statement: the page matters more than the badge.
            rows = []
        by_severity = {severity: count for severity, count in rows}
        g.firing_alerts = FiringCounts(
            firing=sum(by_severity.values()), critical=by_severity.get("critical", 0)
        )
    return g.firing_alerts


@bp.app_context_processor
def alert_counts():
    return {"firing_alerts": firing_counts}


# --- the list --------------------------------------------------------------------------------


def _id_arg(args: Mapping[str, str], name: str) -> Optional[int]:
    value = args.get(name, "").strip()
    if value.isdigit() and len(value) <= 10 and 0 < int(value) <= MAX_ID:
        return int(value)
    return None


@dataclass(frozen=True)
class AlertQuery:
    """The page's state, all of it in the query string. Unknown values are dropped, as on
    the dashboard: an old bookmark still opens."""

    state: str = "firing"
    host_id: Optional[int] = None
    tag: str = ""
    rule: str = ""
    severity: str = ""
    before: Optional[int] = None

    @classmethod
    def from_args(cls, args: Mapping[str, str]) -> AlertQuery:
        state = args.get("state", "")
        rule = args.get("rule", "")
        severity = args.get("severity", "")
        tag = args.get("tag", "").strip()
        return cls(
            state=state if state in ALERT_STATES else "firing",
            host_id=_id_arg(args, "host_id"),
            tag=tag if TAG.match(tag) else "",
            rule=rule if rule in alerts.RULES else "",
            severity=severity if severity in SEVERITIES else "",
            before=_id_arg(args, "before"),
        )

    @property
    def is_filtered(self) -> bool:
        return bool(self.host_id or self.tag or self.rule or self.severity)

    def args(self, **changes) -> dict:
        """Query-string arguments for this state with ``changes`` (paging starts over)."""
        changes.setdefault("before", None)
        state = replace(self, **changes)
        values = {
            "state": state.state if state.state != "firing" else None,
            "host_id": state.host_id,
            "tag": state.tag,
            "rule": state.rule,
            "severity": state.severity,
            "before": state.before,
        }
        return {name: value for name, value in values.items() if value}

    def cleared_args(self) -> dict:
        return self.args(host_id=None, tag="", rule="", severity="")


def _filtered(statement, query: AlertQuery, tagged: Optional[list[int]]):
    if query.host_id is not None:
        statement = statement.where(Alert.host_id == query.host_id)
    if query.rule:
        statement = statement.where(Alert.rule == query.rule)
    if query.severity:
        statement = statement.where(Alert.severity == query.severity)
    if tagged is not None:
        statement = statement.where(Alert.host_id.in_(tagged))
    return statement


def _state_counts(query: AlertQuery, tagged: Optional[list[int]]) -> dict[str, int]:
    """The tabs' numbers: every state under the same filters, in one aggregate."""
    statement = _filtered(select(Alert.state, func.count()).group_by(Alert.state), query, tagged)
    counts = {state: 0 for state in ALERT_STATES}
    counts.update({state: count for state, count in db.session.execute(statement)})
    return counts


def hosts_by_id(host_ids) -> dict[int, Host]:
    ids = set(host_ids)
    if not ids:
        return {}
    return {host.id: host for host in db.session.scalars(select(Host).where(Host.id.in_(ids)))}


@bp.get("/alerts")
@require_role(Role.viewer)
def index():
    now = utcnow()
    query = AlertQuery.from_args(request.args)
    host_choices = db.session.execute(
        select(Host.id, Host.hostname, Host.tags).order_by(Host.hostname)
    ).all()
    tags = sorted({tag for _, _, host_tags in host_choices for tag in (host_tags or [])})
    tagged = None
    if query.tag:
        tagged = [id_ for id_, _, host_tags in host_choices if query.tag in (host_tags or [])]
    rows = alerts.list_alerts(
        state=query.state,
        host_id=query.host_id,
        rule=query.rule or None,
        severity=query.severity or None,
        tag=query.tag or None,
        before_id=query.before,
        limit=PAGE_SIZE + 1,
    )
    page, more = rows[:PAGE_SIZE], len(rows) > PAGE_SIZE
    hosts = hosts_by_id(alert.host_id for alert in page)
    return render_template(
        "alerts/index.html",
        query=query,
        alerts=page,
        hosts=hosts,
        muted=alerts.muted_by(page, hosts, now),
        counts=_state_counts(query, tagged),
        host_choices=[(id_, hostname) for id_, hostname, _ in host_choices],
        tags=tags,
        rules=alerts.RULES,
        severities=SEVERITIES,
        older_args=query.args(before=page[-1].id) if more else None,
        here=request.script_root + request.full_path.rstrip("?"),
        now=now,
    )


# --- one alert -------------------------------------------------------------------------------


def _render_alert(alert: Alert, *, note_forms: Optional[dict] = None, status: int = 200):
    now = utcnow()
    host = db.session.get(Host, alert.host_id)
    deliveries = alerts.deliveries(alert)
    channel_ids = {row.channel_id for row in deliveries}
    channels = {}
    if channel_ids:
        channels = {
            id_: name
            for id_, name in db.session.execute(
                select(NotificationChannel.id, NotificationChannel.name).where(
                    NotificationChannel.id.in_(channel_ids)
                )
            )
        }
    any_channel = (
        bool(channels) or db.session.scalar(select(NotificationChannel.id).limit(1)) is not None
    )
    note_forms = note_forms or {}
    acknowledge_form = note_forms.get("acknowledge") or NoteForm(prefix="ack", formdata=None)
    acknowledge_form.note.label.text = "Acknowledge: note (optional)"
    acknowledge_form.note.description = (
        "Someone is on it: reminders stop; it still resolves by itself when the condition clears."
    )
    resolve_form = note_forms.get("resolve") or NoteForm(prefix="resolve", formdata=None)
    resolve_form.note.label.text = "Resolve: note (optional)"
    resolve_form.note.description = (
        "Close it by hand; if the condition still holds, the next check opens a new alert."
    )
    return render_template(
        "alerts/show.html",
        alert=alert,
        host=host,
        rule=alerts.RULES.get(alert.rule),
        muted=alerts.muted_by([alert], {host.id: host}, now).get(alert.id) if host else None,
        deliveries=deliveries,
        channels=channels,
        any_channel=any_channel,
        acknowledge_form=acknowledge_form,
        resolve_form=resolve_form,
        details=_detail_rows(alert.details),
        now=now,
    ), status


def _detail_rows(details) -> list[tuple[str, str]]:
    """The alert's numbers as label/value pairs (ids and timestamps as they are)."""
    rows = []
    for key, value in (details or {}).items() if isinstance(details, dict) else ():
        if value is None or key == "job_id":
            continue
        if isinstance(value, float):
            value = f"{value:,.1f}".removesuffix(".0")
        elif isinstance(value, int) and not isinstance(value, bool):
            value = f"{value:,}"
        elif isinstance(value, (list, tuple)):
            if not value:
                continue
            value = ", ".join(str(item) for item in value)
        rows.append((str(key).replace("_", " ").capitalize(), str(value)))
    return rows


@bp.get("/alerts/<int:alert_id>")
@require_role(Role.viewer)
def show(alert_id: int):
    return _render_alert(alerts.get_alert(alert_id))


def _back(default: str) -> str:
    """Where an action returns: the page that sent it (a local path only), else ``default``."""
    target = request.form.get("return_to", "")
    parts = urlsplit(target)
    if (
        not target
        or parts.scheme
        or parts.netloc
        or not parts.path.startswith("/")
        or parts.path.startswith("//")
        or "\\" in target
    ):
        return default
    return target


def _change(alert_id: int, action: str):
    alert = alerts.get_alert(alert_id)
    prefix = "ack" if action == "acknowledge" else "resolve"
    form = NoteForm(prefix=prefix)
    change = alerts.acknowledge if action == "acknowledge" else alerts.resolve
    try:
        change(
            alert,
            actor=current_actor(),
            now=utcnow(),
            note=form.note_value(),
            client_address=client_address(),
        )
    except ValidationFailed as refused:
        db.session.rollback()
        form.validate()
        place_errors(form, refused.fields)
        return _render_alert(alerts.get_alert(alert_id), note_forms={action: form}, status=422)
    except Conflict as refused:
        db.session.rollback()
        flash(refused.message, "error")
        return redirect(_back(url_for("alerts.show", alert_id=alert_id)), 303)
    commit_and_wake()
    done = "acknowledged" if action == "acknowledge" else "resolved"
    flash(f"Alert {alert.id} ({alerts.RULES[alert.rule].label.lower()}) {done}.", "success")
    return redirect(_back(url_for("alerts.show", alert_id=alert_id)), 303)


@bp.post("/alerts/<int:alert_id>/acknowledge")
@require_role(Role.operator)
def acknowledge(alert_id: int):
    return _change(alert_id, "acknowledge")


@bp.post("/alerts/<int:alert_id>/resolve")
@require_role(Role.operator)
def resolve(alert_id: int):
    return _change(alert_id, "resolve")


# --- silences --------------------------------------------------------------------------------


def _silence_form(formdata=None) -> SilenceForm:
    form = SilenceForm(formdata=formdata)
    form.set_hosts(db.session.execute(select(Host.id, Host.hostname).order_by(Host.hostname)))
    return form


def _render_silences(form: SilenceForm, *, problem: Optional[str] = None, status: int = 200):
    now = utcnow()
    every = alerts.list_silences(now, include_expired=True)
    active = sorted((s for s in every if s.ends_at > now), key=lambda s: s.ends_at)
    ended = [s for s in every if s.ends_at <= now and now - s.ends_at <= ENDED_WITHIN]
    hosts = hosts_by_id(s.host_id for s in every if s.host_id is not None)
    return render_template(
        "alerts/silences.html",
        form=form,
        active=active,
        ended=ended[:ENDED_SHOWN],
        hosts=hosts,
        rules=alerts.RULES,
        tags=sorted(
            {
                tag
                for host_tags in db.session.scalars(select(Host.tags))
                for tag in (host_tags or [])
            }
        ),
        problem=problem,
        error_count=sum(1 for field in form if field.errors),
        page_url=url_for("alerts.silences") if request.method == "POST" else None,
        now=now,
    ), status


@bp.get("/alerts/silences")
@require_role(Role.viewer)
def silences():
    form = _silence_form()
    # "Silence" on an alert: the form comes prefilled with its host and rule.
    host_id = _id_arg(request.args, "host_id")
    form.host_id.data = str(host_id) if host_id else ""
    rule = request.args.get("rule", "")
    form.rule.data = rule if rule in alerts.RULES else ""
    tag = request.args.get("tag", "").strip()
    form.tag.data = tag if TAG.match(tag) else ""
    return _render_silences(form)


@bp.post("/alerts/silences")
@require_role(Role.operator)
def create_silence():
    form = _silence_form(request.form)
    now = utcnow()
    values = form.values(now)
    if values is None:
        return _render_silences(form, status=422)
    try:
        silence = alerts.create_silence(
            values, actor=current_actor(), now=now, client_address=client_address()
        )
    except ValidationFailed as refused:
        db.session.rollback()
        placed, unplaced = sort_messages(refused.fields, form.field_of)
        for name, messages in placed.items():
            form[name].errors = [*form[name].errors, *messages]
        problem = " ".join(unplaced) or (None if placed else refused.message)
        return _render_silences(form, problem=problem, status=422)
    commit_and_wake()
    flash(f"Silence {silence.id} is on until {silence.ends_at:%Y-%m-%d %H:%M} UTC.", "success")
    return redirect(url_for("alerts.silences"), 303)


@bp.post("/alerts/silences/<int:silence_id>/end")
@require_role(Role.operator)
def end_silence(silence_id: int):
    silence = alerts.get_silence(silence_id)
    now = utcnow()
    if silence.ends_at <= now:
        flash(f"Silence {silence.id} had already ended.", "info")
        return redirect(url_for("alerts.silences"), 303)
    alerts.end_silence(silence, actor=current_actor(), now=now, client_address=client_address())
    commit_and_wake()
    flash(f"Silence {silence_id} ended: its alerts notify again from their next change.", "success")
    return redirect(url_for("alerts.silences"), 303)


@bp.app_template_global()
def can_act_on_alerts() -> bool:
    return current_user.is_authenticated and current_user.has_role(Role.operator)
