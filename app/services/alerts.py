"""Alerts: the built-in rules, their settings, the lifecycle and the notification outbox.

Rules are evaluated at once when a job result or a repository status arrives
(:func:`on_job_finished`, :func:`on_repo_status`) and by the leader's ticker for the
time-based ones (:func:`evaluate`: agent_offline, backup_overdue, schedule_not_applied,
and reminders). One alert is open per (rule, host, subject): a repeat while it is open
updates it (``occurrences``), a condition that clears resolves it, and a condition that
returns after a resolve opens a new alert, so the history stays.

Every change that should reach people writes :class:`Notification` rows (the outbox) in the
same transaction, one per matching channel; ``app.services.notifications`` delivers them.
An alert muted by a silence is shown (marked) but writes no outbox rows.
"""

from __future__ import annotations

import math
import statistics
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import Callable, Iterable, Optional

from croniter import croniter
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.attributes import set_committed_value

from app.extensions import db
from app.formatting import duration_words, human_bytes
from app.models import (
    Alert,
    AlertOverride,
    AlertRuleSetting,
    Host,
    Job,
    Notification,
    NotificationChannel,
    Schedule,
    Silence,
    SourceGroup,
)
from app.models.alert import ALERT_STATES, SEVERITIES
from app.services import audit, validate
from app.services.audit import Actor
from app.services.errors import Conflict, NotFound

PAUSE_HOSTS = 500  # hosts evaluated between two pauses (see evaluate)

SEVERITY_RANK = {name: rank for rank, name in enumerate(SEVERITIES)}
AUTOMATIC = "automatic"
SUBJECT_LENGTH = 255


@dataclass(frozen=True)
class Rule:
    name: str
    label: str
    severity: str
    description: str
    threshold_seconds: Optional[int] = None  # None: the rule has no threshold
    threshold_label: str = ""
    auto_resolves: bool = True
    time_based: bool = False


RULES: dict[str, Rule] = {
    rule.name: rule
    for rule in (
        Rule(
            "backup_failed",
            "Backup failed",
            "critical",
            "A backup job failed or was lost. Resolves at the group's next backup that saves "
            "a snapshot.",
        ),
        Rule(
            "backup_warning",
            "Backup incomplete",
            "warning",
            "restic saved a snapshot but could not read some files (exit 3), or a source path "
            "is missing. Resolves at the group's next clean backup.",
        ),
        Rule(
            "backup_overdue",
            "Backup overdue",
            "critical",
            "A scheduled source group has no successful backup for longer than its schedule's "
            "period plus the grace; a group without a schedule uses the host's maximum age, "
            "when one is set.",
            threshold_seconds=3600,
            threshold_label="Grace after the schedule's period",
            time_based=True,
        ),
        Rule(
            "agent_offline",
            "Agent offline",
            "warning",
            "The agent has not polled for longer than the threshold. Resolves when it polls.",
            threshold_seconds=600,
            threshold_label="Silence before it fires",
            time_based=True,
        ),
        Rule(
            "check_failed",
            "Repository check failed",
            "critical",
            "restic check reported a problem. Resolves at the next successful check.",
        ),
        Rule(
            "repository_error",
            "Repository error",
            "critical",
            "The repository cannot be used: wrong password, unreachable, missing or "
            "initialisation failed. Resolves when the repository is ready again.",
        ),
        Rule(
            "maintenance_failed",
            "Maintenance failed",
            "warning",
            "A forget or prune job failed. Resolves at the next successful run of that task.",
        ),
        Rule(
            "schedule_not_applied",
            "Schedule not applied",
            "warning",
            "The agent has not confirmed the host's current schedules within the threshold.",
            threshold_seconds=600,
            threshold_label="Time to confirm",
            time_based=True,
        ),
        Rule(
            "backup_size_anomaly",
            "Backup size anomaly",
            "critical",
            "A backup changed or added far more than usual (factor x the median of the "
            "group's last 10 backups), or the group's file count dropped sharply: a "
            "ransomware or mass-deletion signal. Resolved by hand once explained.",
            auto_resolves=False,
        ),
    )
}
TIME_RULES = tuple(name for name, rule in RULES.items() if rule.time_based)
# The rules evaluated per source group, so a group may have its own setting of them; the
# others are about the whole host (its agent, its repository, its schedules).
GROUP_RULES = ("backup_failed", "backup_warning", "backup_overdue", "backup_size_anomaly")

# backup_size_anomaly: defaults, and floors below which a change is never unusual (a group
# that usually changes nothing must not alert on its first dozen edited files).
ANOMALY_FACTOR = 10.0
ANOMALY_DROP_PERCENT = 30.0
ANOMALY_HISTORY = 10
ANOMALY_MIN_HISTORY = 3
ANOMALY_MIN_FILES = 100
ANOMALY_MIN_BYTES = 100 * 1024 * 1024
MAX_THRESHOLD_SECONDS = 366 * 86400
WARNING_PATHS_SHOWN = 5


# --- settings --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Effective:
    """A rule's setting for one host (and group), after fleet setting and overrides."""

    enabled: bool
    severity: str
    threshold_seconds: Optional[int]
    max_age_seconds: Optional[int]
    factor: float
    drop_percent: float


class Settings:
    """The fleet-wide rule rows and every override, read once per evaluation."""

    def __init__(self, host_ids: Optional[Iterable[int]] = None):
        self.fleet = {row.rule: row for row in db.session.scalars(select(AlertRuleSetting))}
        query = select(AlertOverride)
        if host_ids is not None:
            query = query.where(AlertOverride.host_id.in_(list(host_ids)))
        self.overrides = {
            (row.rule, row.host_id, row.source_group_id): row for row in db.session.scalars(query)
        }
        self._overridden = {(rule, host_id) for rule, host_id, _ in self.overrides}
        self._fleet_only: dict[str, Effective] = {}  # most hosts override nothing

    def of(self, rule: str, host_id: int, group_id: Optional[int] = None) -> Effective:
        if (rule, host_id) not in self._overridden:
            effective = self._fleet_only.get(rule)
            if effective is None:
                effective = self._fleet_only[rule] = self._layered(rule, host_id, None)
            return effective
        return self._layered(rule, host_id, group_id)

    def _layered(self, rule: str, host_id: int, group_id: Optional[int]) -> Effective:
        definition = RULES[rule]
        layers = [
            self.fleet.get(rule),
            self.overrides.get((rule, host_id, None)),
            self.overrides.get((rule, host_id, group_id)) if group_id is not None else None,
        ]
        values = {
            "enabled": True,
            "severity": definition.severity,
            "threshold_seconds": definition.threshold_seconds,
            "max_age_seconds": None,
            "factor": ANOMALY_FACTOR,
            "drop_percent": ANOMALY_DROP_PERCENT,
        }
        for layer in layers:
            if layer is None:
                continue
            for name in values:
                value = getattr(layer, name, None)
                if value is not None:
                    values[name] = value
        if definition.threshold_seconds is None:
            values["threshold_seconds"] = None
        return Effective(**values)


def rule_view(rule: str, settings: Optional[Settings] = None) -> dict:
    """One rule with its fleet-wide setting (for the API and the settings page)."""
    definition = RULES[rule]
    row = (settings or Settings(host_ids=())).fleet.get(rule)
    view = {
        "rule": rule,
        "label": definition.label,
        "description": definition.description,
        "enabled": row.enabled if row is not None else True,
        "severity": (row.severity if row is not None and row.severity else definition.severity),
        "default_severity": definition.severity,
        "auto_resolves": definition.auto_resolves,
        "has_threshold": definition.threshold_seconds is not None,
        "threshold_seconds": None,
        "default_threshold_seconds": definition.threshold_seconds,
    }
    if definition.threshold_seconds is not None:
        view["threshold_seconds"] = (
            row.threshold_seconds
            if row is not None and row.threshold_seconds is not None
            else definition.threshold_seconds
        )
    if rule == "backup_size_anomaly":
        view["factor"] = row.factor if row is not None and row.factor else ANOMALY_FACTOR
        view["drop_percent"] = (
            row.drop_percent if row is not None and row.drop_percent else ANOMALY_DROP_PERCENT
        )
    return view


def list_rules() -> list[dict]:
    settings = Settings(host_ids=())
    return [rule_view(rule, settings) for rule in RULES]


def get_rule(rule: str) -> Rule:
    if not isinstance(rule, str) or rule not in RULES:
        raise NotFound(
            f"There is no alert rule {validate.echo(rule)}; rules: {', '.join(RULES)}.",
            code="unknown_rule",
        )
    return RULES[rule]


def _whole_seconds(value, field: str, label: str) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        validate.fail(field, f"{label} must be a whole number of seconds.")
    if not 60 <= value <= MAX_THRESHOLD_SECONDS:
        validate.fail(field, f"{label} must be between 60 seconds and 366 days.")
    return value


def _number(value, field: str, label: str, low: float, high: float) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        validate.fail(field, f"{label} must be a number.")
    if not low <= value <= high:
        validate.fail(field, f"{label} must be between {low:g} and {high:g}.")
    return float(value)


def _severity(value, field: str = "severity") -> Optional[str]:
    if value is None:
        return None
    if value not in SEVERITIES:
        validate.fail(field, f"Severity must be one of {', '.join(SEVERITIES)}.")
    return value


def update_rule(
    rule: str,
    values: dict,
    *,
    actor: Actor,
    now: datetime,
    client_address: Optional[str] = None,
) -> dict:
    """Change a rule fleet-wide: ``enabled``, ``severity``, ``threshold_seconds`` (rules
    with a threshold), ``factor`` and ``drop_percent`` (backup_size_anomaly). Keys left out
    keep their value; ``null`` returns a field to its default."""
    definition = get_rule(rule)
    allowed = {"enabled", "severity", "threshold_seconds"}
    if rule == "backup_size_anomaly":
        allowed |= {"factor", "drop_percent"}
    errors = validate.FieldErrors()
    for key in values:
        if key not in allowed:
            errors.add(str(key)[:64], f"{rule} has no setting {validate.echo(key)}.")
    if "enabled" in values and not isinstance(values["enabled"], bool):
        errors.add("enabled", "enabled must be true or false.")
    severity = errors.check(_severity, values.get("severity"))
    threshold = None
    if "threshold_seconds" in values:
        if definition.threshold_seconds is None and values["threshold_seconds"] is not None:
            errors.add("threshold_seconds", f"{rule} has no threshold.")
        else:
            threshold = errors.check(
                _whole_seconds, values["threshold_seconds"], "threshold_seconds", "Threshold"
            )
    factor = errors.check(_number, values.get("factor"), "factor", "Factor", 2, 1000)
    drop = errors.check(
        _number, values.get("drop_percent"), "drop_percent", "Drop percentage", 1, 100
    )
    errors.raise_any()
    row = db.session.get(AlertRuleSetting, rule)
    if row is None:
        row = AlertRuleSetting(rule=rule, enabled=True)
        db.session.add(row)
    if "enabled" in values:
        row.enabled = values["enabled"]
    if "severity" in values:
        row.severity = severity
    if "threshold_seconds" in values:
        row.threshold_seconds = threshold
    if "factor" in values:
        row.factor = factor
    if "drop_percent" in values:
        row.drop_percent = drop
    row.updated_at = now
    db.session.flush()
    audit.record(
        actor,
        "alert_rule.updated",
        target_type="alert_rule",
        target_id=rule,
        payload=dict(values),
        client_address=client_address,
    )
    return rule_view(rule)


def host_overrides(host: Host) -> dict[str, dict]:
    """The host's own settings per rule (host-wide rows only), for its page and the API."""
    rows = db.session.scalars(
        select(AlertOverride).where(
            AlertOverride.host_id == host.id, AlertOverride.source_group_id.is_(None)
        )
    )
    return {row.rule: _override_view(row) for row in rows}


def group_overrides(group: SourceGroup) -> dict[str, dict]:
    """The source group's own settings per rule, for the host's page and the API."""
    rows = db.session.scalars(
        select(AlertOverride).where(
            AlertOverride.host_id == group.host_id, AlertOverride.source_group_id == group.id
        )
    )
    return {row.rule: _override_view(row) for row in rows}


def _override_view(row: AlertOverride) -> dict:
    return {
        name: getattr(row, name)
        for name in ("enabled", "threshold_seconds", "max_age_seconds", "factor", "drop_percent")
        if getattr(row, name) is not None
    }


def set_override(
    host: Host,
    rule: str,
    values: dict,
    *,
    actor: Actor,
    now: datetime,
    group: Optional[SourceGroup] = None,
    client_address: Optional[str] = None,
) -> dict:
    """A host's (or a source group's) own setting of ``rule``; ``null`` inherits again and
    an override left with nothing set is removed. ``max_age_seconds`` (backup_overdue,
    host-wide only): the limit for groups without a schedule. Only :data:`GROUP_RULES`
    have per-group settings."""
    definition = get_rule(rule)
    if group is not None and group.host_id != host.id:
        raise NotFound(f"{host.hostname} has no source group with id {group.id}.")
    if group is not None and rule not in GROUP_RULES:
        validate.fail("rule", f"{rule} is a host-wide rule; it has no per-group setting.")
    allowed = {"enabled"}
    if definition.threshold_seconds is not None:
        allowed.add("threshold_seconds")
    if rule == "backup_overdue" and group is None:
        allowed.add("max_age_seconds")
    if rule == "backup_size_anomaly":
        allowed |= {"factor", "drop_percent"}
    errors = validate.FieldErrors()
    for key in values:
        if key not in allowed:
            errors.add(
                str(key)[:64],
                f"{rule} has no per-{'host' if group is None else 'group'} setting "
                f"{validate.echo(key)}.",
            )
    if values.get("enabled") is not None and not isinstance(values["enabled"], bool):
        errors.add("enabled", "enabled must be true, false or null.")
    checked = {
        "threshold_seconds": errors.check(
            _whole_seconds, values.get("threshold_seconds"), "threshold_seconds", "Threshold"
        ),
        "max_age_seconds": errors.check(
            _whole_seconds, values.get("max_age_seconds"), "max_age_seconds", "Maximum age"
        ),
        "factor": errors.check(_number, values.get("factor"), "factor", "Factor", 2, 1000),
        "drop_percent": errors.check(
            _number, values.get("drop_percent"), "drop_percent", "Drop percentage", 1, 100
        ),
        "enabled": values.get("enabled"),
    }
    errors.raise_any()
    group_id = group.id if group is not None else None
    row = db.session.scalar(
        select(AlertOverride).where(
            AlertOverride.rule == rule,
            AlertOverride.host_id == host.id,
            AlertOverride.source_group_id.is_(None)
            if group_id is None
            else AlertOverride.source_group_id == group_id,
        )
    )
    if row is None:
        row = AlertOverride(rule=rule, host_id=host.id, source_group_id=group_id)
        db.session.add(row)
    for name in values:
        setattr(row, name, checked[name])
    row.updated_at = now
    view = _override_view(row)
    if not view and row in db.session.new:
        db.session.expunge(row)  # nothing to keep and never stored (e.g. {"enabled": null})
    elif not view:
        db.session.delete(row)
    db.session.flush()
    audit.record(
        actor,
        "alert_override.updated",
        target_type="host",
        target_id=host.id,
        payload={"rule": rule, "group": group.name if group is not None else None, **values},
        client_address=client_address,
    )
    return view


# --- silences --------------------------------------------------------------------------------


def active_silences(now: datetime) -> list[Silence]:
    return list(
        db.session.scalars(
            select(Silence)
            .where(Silence.ends_at > now, Silence.starts_at <= now)
            .order_by(Silence.ends_at)
        )
    )


def silence_matching(alert_rule: str, host: Host, silences: Iterable[Silence]) -> Optional[Silence]:
    """The first silence that mutes ``alert_rule`` on ``host`` (every field it sets matches)."""
    tags = set(host.tags or [])
    for silence in silences:
        if silence.host_id is not None and silence.host_id != host.id:
            continue
        if silence.tag is not None and silence.tag not in tags:
            continue
        if silence.rule is not None and silence.rule != alert_rule:
            continue
        return silence
    return None


def list_silences(now: datetime, *, include_expired: bool = False) -> list[Silence]:
    query = select(Silence).order_by(Silence.ends_at.desc(), Silence.id.desc())
    if not include_expired:
        query = query.where(Silence.ends_at > now)
    return list(db.session.scalars(query.limit(500)))


def get_silence(silence_id: int) -> Silence:
    silence = db.session.get(Silence, silence_id) if isinstance(silence_id, int) else None
    if silence is None:
        raise NotFound(f"Silence {silence_id} does not exist.")
    return silence


def create_silence(
    values: dict,
    *,
    actor: Actor,
    now: datetime,
    client_address: Optional[str] = None,
) -> Silence:
    """Mute ``host_id``, ``tag`` and/or ``rule`` (at least one; all given must match) from
    ``starts_at`` (default now) until ``ends_at``, for a ``reason``."""
    errors = validate.FieldErrors()
    for key in values:
        if key not in {"host_id", "tag", "rule", "reason", "ends_at", "starts_at"}:
            errors.add(str(key)[:64], f"A silence has no field {validate.echo(key)}.")
    host_id = values.get("host_id")
    if host_id is not None:
        if isinstance(host_id, bool) or not isinstance(host_id, int):
            errors.add("host_id", "host_id must be a host's id.")
        elif db.session.get(Host, host_id) is None:
            errors.add("host_id", f"Host {host_id} does not exist.")
    tag = values.get("tag")
    if tag is not None and tag != "" and (not isinstance(tag, str) or not validate.TAG.match(tag)):
        errors.add("tag", "Tag may contain letters, digits and . _ : @ + - (up to 64).")
    tag = tag if isinstance(tag, str) and tag else None
    rule = values.get("rule") or None
    if rule is not None and (not isinstance(rule, str) or rule not in RULES):
        errors.add("rule", f"Rule must be one of {', '.join(RULES)}.")
    if host_id is None and tag is None and rule is None:
        errors.add("", "Choose what to silence: a host, a tag or a rule (or several).")
    reason = errors.check(
        validate.text, values.get("reason"), "reason", "Reason", required=True, max_length=500
    )
    starts_at = errors.check(_when, values.get("starts_at"), "starts_at", "Start") or now
    ends_at = errors.check(_when, values.get("ends_at"), "ends_at", "End")
    if ends_at is None and not errors.has("ends_at"):
        errors.add("ends_at", "End is required: a silence always ends.")
    if ends_at is not None and ends_at <= max(starts_at, now):
        errors.add("ends_at", "End must be in the future and after the start.")
    if ends_at is not None and ends_at - now > timedelta(days=366):
        errors.add("ends_at", "A silence lasts at most a year.")
    errors.raise_any()
    silence = Silence(
        host_id=host_id,
        tag=tag,
        rule=rule,
        reason=reason,
        starts_at=starts_at,
        ends_at=ends_at,
        created_by=actor.label,
        created_at=now,
    )
    db.session.add(silence)
    db.session.flush()
    audit.record(
        actor,
        "silence.created",
        target_type="silence",
        target_id=silence.id,
        payload={
            "host_id": host_id,
            "tag": tag,
            "rule": rule,
            "reason": reason,
            "starts_at": starts_at.isoformat(),
            "ends_at": ends_at.isoformat(),
        },
        client_address=client_address,
    )
    return silence


def _when(value, field: str, label: str) -> Optional[datetime]:
    """An ISO-8601 time with a zone (a time without one is taken as UTC)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > 40:
        validate.fail(field, f"{label} must be an ISO-8601 time such as 2026-12-24T18:00:00Z.")
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        validate.fail(field, f"{label} must be an ISO-8601 time such as 2026-12-24T18:00:00Z.")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    if not 2000 <= parsed.year <= 9000:
        validate.fail(field, f"{label} is out of range.")
    return parsed.astimezone(timezone.utc)


def end_silence(
    silence: Silence, *, actor: Actor, now: datetime, client_address: Optional[str] = None
) -> None:
    """Delete a silence (muted alerts notify again from their next change or reminder)."""
    audit.record(
        actor,
        "silence.deleted",
        target_type="silence",
        target_id=silence.id,
        payload={"host_id": silence.host_id, "tag": silence.tag, "rule": silence.rule},
        client_address=client_address,
    )
    db.session.delete(silence)
    db.session.flush()


# --- the lifecycle ---------------------------------------------------------------------------


class Context:
    """What one evaluation reads once: settings, channels, silences, open alerts."""

    def __init__(self, now: datetime, host_ids: Optional[Iterable[int]] = None):
        self.now = now
        host_ids = None if host_ids is None else list(host_ids)
        self.settings = Settings(host_ids)
        self.silences = active_silences(now)
        self._channels: Optional[list[NotificationChannel]] = None
        query = select(Alert).where(Alert.open_key.is_not(None))
        if host_ids is not None:
            query = query.where(Alert.host_id.in_(host_ids))
        self.open = {alert.open_key: alert for alert in db.session.scalars(query)}
        self.fired: list[Alert] = []
        self.resolved: list[Alert] = []

    @property
    def channels(self) -> list[NotificationChannel]:
        if self._channels is None:
            self._channels = list(
                db.session.scalars(
                    select(NotificationChannel)
                    .where(NotificationChannel.enabled.is_(True))
                    .order_by(NotificationChannel.id)
                )
            )
        return self._channels


def open_key(rule: str, host_id: int, subject: str) -> str:
    return f"{rule}:{host_id}:{subject}"


def fire(
    context: Context,
    host: Host,
    rule: str,
    subject: str,
    message: str,
    *,
    details: Optional[dict] = None,
    job_id: Optional[int] = None,
    group_id: Optional[int] = None,
) -> Optional[Alert]:
    """The condition holds: open an alert (and notify), or update the open one."""
    setting = context.settings.of(rule, host.id, group_id)
    if not setting.enabled:
        clear(context, host, rule, subject)  # a rule switched off leaves nothing firing
        return None
    subject = subject[:SUBJECT_LENGTH]
    key = open_key(rule, host.id, subject)
    alert = context.open.get(key)
    now = context.now
    if alert is not None:
        if (
            RULES[rule].time_based
            and alert.message == message[:2000]
            and alert.severity == setting.severity
        ):
            return alert  # the same condition seen again by the ticker: nothing new to write
        alert.message = message[:2000]
        alert.details = details or {}
        alert.severity = setting.severity
        alert.last_fired_at = now
        if not RULES[rule].time_based:
            alert.occurrences += 1  # another failed backup, another check: a repeat
        if job_id is not None:
            alert.job_id = job_id
        return alert
    alert = Alert(
        open_key=key,
        rule=rule,
        host_id=host.id,
        subject=subject,
        severity=setting.severity,
        state="firing",
        message=message[:2000],
        details=details or {},
        job_id=job_id,
        occurrences=1,
        fired_at=now,
        last_fired_at=now,
    )
    try:
        with db.session.begin_nested():  # another process may open the same alert first
            db.session.add(alert)
    except IntegrityError:
        context.open[key] = db.session.scalar(select(Alert).where(Alert.open_key == key))
        return (
            fire(
                context,
                host,
                rule,
                subject,
                message,
                details=details,
                job_id=job_id,
                group_id=group_id,
            )
            if context.open[key] is not None
            else None
        )
    context.open[key] = alert
    context.fired.append(alert)
    enqueue(context, alert, host, "firing")
    return alert


def clear(context: Context, host: Host, rule: str, subject: str) -> Optional[Alert]:
    """The condition is gone: resolve the open alert automatically (and notify)."""
    if not RULES[rule].auto_resolves:
        return None
    alert = context.open.pop(open_key(rule, host.id, subject[:SUBJECT_LENGTH]), None)
    if alert is None:
        return None
    if not _close(alert, by=AUTOMATIC, note=None, now=context.now):
        return None  # another transaction resolved it since this context was read
    context.resolved.append(alert)
    enqueue(context, alert, host, "resolved")
    return alert


def _close(alert: Alert, *, by: str, note: Optional[str], now: datetime) -> bool:
    """Resolve ``alert`` unless another transaction did since it was read (the ticker and
    an agent's result, or two people, may resolve the same alert at once): one UPDATE that
    only an open alert matches, so exactly one of them notifies. False if it was not open."""
    values = {
        "state": "resolved",
        "open_key": None,
        "resolved_at": now,
        "resolved_by": by,
        "resolve_note": note,
    }
    db.session.flush()  # this alert's own pending changes first
    closed = db.session.execute(
        update(Alert)
        .where(Alert.id == alert.id, Alert.open_key.is_not(None))
        .values(**values)
        .execution_options(synchronize_session=False)
    ).rowcount
    if not closed:
        db.session.expire(alert)
        return False
    for name, value in values.items():
        set_committed_value(alert, name, value)
    return True


def wants(channel: NotificationChannel, alert: Alert, host: Host) -> bool:
    """The channel hears about this alert: severity at least its minimum, and (when it has
    host tags) the host carries one of them."""
    if SEVERITY_RANK.get(alert.severity, 0) < SEVERITY_RANK.get(channel.min_severity, 0):
        return False
    return not channel.tags or bool(set(host.tags or []).intersection(channel.tags))


def _outbox(context: Context, alert: Alert, channels, event: str) -> list[Notification]:
    """One pending outbox row per channel, written with the alert change."""
    rows = [
        Notification(
            idempotency_key=uuid.uuid4().hex,
            alert_id=alert.id,
            channel_id=channel.id,
            event=event,
            state="pending",
            next_attempt_at=context.now,
            created_at=context.now,
        )
        for channel in channels
    ]
    if rows:
        db.session.add_all(rows)
        db.session.flush()
    return rows


def enqueue(context: Context, alert: Alert, host: Host, event: str) -> list[Notification]:
    """Outbox rows for every enabled channel that wants this alert (severity, tags),
    unless a silence mutes it."""
    if silence_matching(alert.rule, host, context.silences) is not None:
        return []
    return _outbox(
        context,
        alert,
        [channel for channel in context.channels if wants(channel, alert, host)],
        event,
    )


def get_alert(alert_id: int) -> Alert:
    alert = db.session.get(Alert, alert_id) if isinstance(alert_id, int) else None
    if alert is None:
        raise NotFound(f"Alert {alert_id} does not exist.")
    return alert


def _note(value) -> Optional[str]:
    return validate.text(value, "note", "Note", required=False, max_length=1000)


def _audit(
    actor: Actor, action: str, alert: Alert, note: Optional[str], client_address: Optional[str]
) -> None:
    audit.record(
        actor,
        action,
        target_type="alert",
        target_id=alert.id,
        payload={"rule": alert.rule, "host_id": alert.host_id, "note": note},
        client_address=client_address,
    )


def acknowledge(
    alert: Alert,
    *,
    actor: Actor,
    now: datetime,
    note=None,
    client_address: Optional[str] = None,
) -> Alert:
    """Someone is on it: no more reminders; it still resolves when the condition clears."""
    note = _note(note)
    if alert.state == "resolved":
        raise Conflict(f"Alert {alert.id} is already resolved.", code="alert_resolved")
    if alert.state == "firing":
        alert.state = "acknowledged"
        alert.acknowledged_at = now
        alert.acknowledged_by = actor.label
    alert.ack_note = note or alert.ack_note
    db.session.flush()
    _audit(actor, "alert.acknowledged", alert, note, client_address)
    return alert


def resolve(
    alert: Alert,
    *,
    actor: Actor,
    now: datetime,
    note=None,
    client_address: Optional[str] = None,
) -> Alert:
    """Resolve by hand (notifies like an automatic resolve). If the condition still holds
    the next evaluation opens a new alert."""
    note = _note(note)
    if alert.state == "resolved":
        raise Conflict(f"Alert {alert.id} is already resolved.", code="alert_resolved")
    host = db.session.get(Host, alert.host_id)
    context = Context(now, host_ids=[alert.host_id])
    if not _close(alert, by=actor.label, note=note, now=now):
        raise Conflict(f"Alert {alert.id} is already resolved.", code="alert_resolved")
    enqueue(context, alert, host, "resolved")
    db.session.flush()
    _audit(actor, "alert.resolved", alert, note, client_address)
    return alert


# --- reading ---------------------------------------------------------------------------------

MAX_PAGE = 500


def list_alerts(
    *,
    state: Optional[str] = None,
    host_id: Optional[int] = None,
    rule: Optional[str] = None,
    severity: Optional[str] = None,
    tag: Optional[str] = None,
    before_id: Optional[int] = None,
    limit: int = 100,
) -> list[Alert]:
    """Newest first. ``state`` "open" means firing or acknowledged."""
    if state is not None and state not in (*ALERT_STATES, "open"):
        validate.fail("state", f"state must be one of {', '.join((*ALERT_STATES, 'open'))}.")
    if rule is not None and rule not in RULES:
        validate.fail("rule", f"rule must be one of {', '.join(RULES)}.")
    if severity is not None and severity not in SEVERITIES:
        validate.fail("severity", f"severity must be one of {', '.join(SEVERITIES)}.")
    query = select(Alert).order_by(Alert.id.desc())
    if state == "open":
        query = query.where(Alert.state.in_(("firing", "acknowledged")))
    elif state is not None:
        query = query.where(Alert.state == state)
    if host_id is not None:
        query = query.where(Alert.host_id == host_id)
    if rule is not None:
        query = query.where(Alert.rule == rule)
    if severity is not None:
        query = query.where(Alert.severity == severity)
    if before_id is not None:
        query = query.where(Alert.id < before_id)
    limit = max(1, min(limit, MAX_PAGE))
    if tag is None:
        return list(db.session.scalars(query.limit(limit)))
    tagged = {
        host.id
        for host in db.session.scalars(
            select(Host).where(Host.id.in_(query.with_only_columns(Alert.host_id)))
        )
        if tag in (host.tags or [])
    }
    return list(db.session.scalars(query.where(Alert.host_id.in_(tagged)).limit(limit)))


def open_summary(host_ids: list[int]) -> dict[int, dict]:
    """Per host of ``host_ids``: how many alerts are open and the worst severity among them
    (the dashboard's page of hosts)."""
    if not host_ids:
        return {}
    rows = db.session.execute(
        select(Alert.host_id, Alert.severity, func.count())
        .where(Alert.state.in_(("firing", "acknowledged")), Alert.host_id.in_(host_ids))
        .group_by(Alert.host_id, Alert.severity)
    )
    summary: dict[int, dict] = {}
    for host_id, severity, count in rows:
        entry = summary.setdefault(host_id, {"count": 0, "worst": "info"})
        entry["count"] += count
        if SEVERITY_RANK.get(severity, 0) > SEVERITY_RANK[entry["worst"]]:
            entry["worst"] = severity
    return summary


def critical_firing_count() -> int:
    """Critical alerts firing and not acknowledged (the banner on every page)."""
    return db.session.scalar(
        select(func.count())
        .select_from(Alert)
        .where(Alert.state == "firing", Alert.severity == "critical")
    )


def muted_by(alerts: Iterable[Alert], hosts: dict[int, Host], now: datetime) -> dict[int, Silence]:
    """The silence that mutes each open alert, by alert id (pages mark muted alerts)."""
    silences = active_silences(now)
    muted = {}
    for alert in alerts:
        host = hosts.get(alert.host_id)
        if alert.is_open and host is not None:
            silence = silence_matching(alert.rule, host, silences)
            if silence is not None:
                muted[alert.id] = silence
    return muted


def deliveries(alert: Alert) -> list[Notification]:
    """The alert's delivery log, oldest first."""
    return list(
        db.session.scalars(
            select(Notification).where(Notification.alert_id == alert.id).order_by(Notification.id)
        )
    )


# --- rules evaluated when a result arrives ---------------------------------------------------

_FAILED_WORDS = {"failed": "failed", "lost": "was lost"}


def _group_id(host: Host, name: str) -> Optional[int]:
    return db.session.scalar(
        select(SourceGroup.id).where(SourceGroup.host_id == host.id, SourceGroup.name == name)
    )


def on_job_finished(host: Host, job: Job, now: datetime) -> Context:
    """A job ended (an agent's result, or the ticker marked it lost): fire or clear the rules
    its result decides. Returns the context (what fired and resolved)."""
    context = Context(now, host_ids=[host.id])
    if job.kind == "backup":
        _backup_finished(context, host, job)
    elif job.kind == "check":
        if job.status == "failed":
            fire(
                context,
                host,
                "check_failed",
                "",
                f"restic check of {host.hostname}'s repository failed: "
                f"{job.error or 'see the job log'}",
                details={"job_id": job.id, "exit_code": job.exit_code},
                job_id=job.id,
            )
        elif job.status in ("succeeded", "warning"):
            clear(context, host, "check_failed", "")
    elif job.kind in ("forget", "prune"):
        if job.status in ("failed", "lost"):
            fire(
                context,
                host,
                "maintenance_failed",
                job.kind,
                f"{job.kind} on {host.hostname} {_FAILED_WORDS[job.status]}: "
                f"{job.error or 'see the job log'}",
                details={"job_id": job.id, "exit_code": job.exit_code},
                job_id=job.id,
            )
        elif job.status in ("succeeded", "warning"):
            clear(context, host, "maintenance_failed", job.kind)
    return context


def _backup_finished(context: Context, host: Host, job: Job) -> None:
    group = (job.params or {}).get("group") or "default"
    group_id = _group_id(host, group)
    stats = job.stats or {}
    if job.status in ("failed", "lost"):
        fire(
            context,
            host,
            "backup_failed",
            group,
            f"Backup of {group} on {host.hostname} {_FAILED_WORDS[job.status]}: "
            f"{job.error or 'see the job log'}",
            details={"job_id": job.id, "status": job.status, "exit_code": job.exit_code},
            job_id=job.id,
            group_id=group_id,
        )
        return
    if job.status not in ("succeeded", "warning"):
        return  # cancelled: says nothing about the group's health
    clear(context, host, "backup_failed", group)
    clear(context, host, "backup_overdue", group)
    if job.status == "warning":
        message, details = _warning_message(host, group, job, stats)
        fire(
            context,
            host,
            "backup_warning",
            group,
            message,
            details=details,
            job_id=job.id,
            group_id=group_id,
        )
    else:
        clear(context, host, "backup_warning", group)
    _check_anomaly(context, host, job, group, group_id, stats)


def _warning_message(host: Host, group: str, job: Job, stats: dict) -> tuple[str, dict]:
    missing = [path for path in stats.get("missing_paths") or [] if isinstance(path, str)]
    unreadable = [path for path in stats.get("error_paths") or [] if isinstance(path, str)]
    count = stats.get("error_count")
    count = count if isinstance(count, int) and not isinstance(count, bool) else len(unreadable)
    parts = [f"Backup of {group} on {host.hostname} saved a snapshot, but"]
    problems = []
    if count:
        shown = ", ".join(unreadable[:WARNING_PATHS_SHOWN])
        more = (
            f" and {count - len(unreadable[:WARNING_PATHS_SHOWN])} more"
            if count > len(unreadable[:WARNING_PATHS_SHOWN]) and shown
            else ""
        )
        problems.append(
            f"{count} file{'' if count == 1 else 's'} could not be read"
            + (f" ({shown}{more})" if shown else "")
        )
    if missing:
        shown = ", ".join(missing[:WARNING_PATHS_SHOWN])
        problems.append(
            f"{len(missing)} source path{' is' if len(missing) == 1 else 's are'} missing ({shown})"
        )
    if not problems:
        problems.append(job.error or "restic reported a problem (see the job log)")
    return (
        " ".join(parts) + " " + "; ".join(problems) + ".",
        {
            "job_id": job.id,
            "error_count": count,
            "paths": unreadable[:WARNING_PATHS_SHOWN],
            "missing_paths": missing[:WARNING_PATHS_SHOWN],
        },
    )


def _int_stat(stats: dict, key: str) -> Optional[int]:
    value = stats.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        return None
    return int(value)


def _previous_backups(host: Host, job: Job, group: str) -> list[dict]:
    """Stats of the group's last backups before ``job`` that saved a snapshot, newest first."""
    found = []
    rows = db.session.execute(
        select(Job.params, Job.stats)
        .where(
            Job.host_id == host.id,
            Job.kind == "backup",
            Job.status.in_(("succeeded", "warning")),
            Job.id < job.id,
        )
        .order_by(Job.id.desc())
        .limit(ANOMALY_HISTORY * 5)
    )
    for params, stats in rows:
        if ((params or {}).get("group") or "default") == group and isinstance(stats, dict):
            found.append(stats)
            if len(found) == ANOMALY_HISTORY:
                break
    return found


def _check_anomaly(
    context: Context, host: Host, job: Job, group: str, group_id: Optional[int], stats: dict
) -> None:
    setting = context.settings.of("backup_size_anomaly", host.id, group_id)
    if not setting.enabled:
        return
    history = _previous_backups(host, job, group)
    if len(history) < ANOMALY_MIN_HISTORY:
        return
    findings = anomaly_findings(stats, history, setting.factor, setting.drop_percent)
    if not findings:
        return
    message = (
        f"Backup of {group} on {host.hostname} is unusual compared with its last "
        f"{len(history)} backups: " + "; ".join(text for text, _ in findings) + "."
    )
    fire(
        context,
        host,
        "backup_size_anomaly",
        group,
        message,
        details={
            "job_id": job.id,
            **{key: value for _, found in findings for key, value in found.items()},
        },
        job_id=job.id,
        group_id=group_id,
    )


def _number_words(value: float) -> str:
    return f"{value:,.0f}"


def _medians(stats: dict, history: list[dict], measure) -> Optional[tuple[int, float]]:
    """``measure`` of this backup and its median over ``history`` (enough history only)."""
    value = measure(stats)
    past = [found for found in map(measure, history) if found is not None]
    if value is None or len(past) < ANOMALY_MIN_HISTORY:
        return None
    return value, statistics.median(past)


def _changed_files(stats: dict) -> Optional[int]:
    new, changed = _int_stat(stats, "files_new"), _int_stat(stats, "files_changed")
    return None if new is None or changed is None else new + changed


def anomaly_findings(
    stats: dict, history: list[dict], factor: float, drop_percent: float
) -> list[tuple[str, dict]]:
    """What is unusual about ``stats`` against ``history`` (pure): a sentence and its
    numbers for each finding."""
    findings = []
    found = _medians(stats, history, _changed_files)
    if found is not None:
        changed, median = found
        limit = factor * max(median, ANOMALY_MIN_FILES)
        if changed > limit:
            findings.append(
                (
                    f"{_number_words(changed)} files new or changed, "
                    f"{changed / max(median, 1):,.0f}x the median of {_number_words(median)} "
                    f"(alert above {factor:g}x the median, at least {_number_words(limit)})",
                    {"files_changed": changed, "median_files_changed": median},
                )
            )
    found = _medians(stats, history, lambda item: _int_stat(item, "data_added"))
    if found is not None:
        added, median = found
        limit = factor * max(median, ANOMALY_MIN_BYTES)
        if added > limit:
            findings.append(
                (
                    f"{human_bytes(added)} added against a median of {human_bytes(int(median))} "
                    f"(alert above {human_bytes(int(limit))})",
                    {"data_added": added, "median_data_added": median},
                )
            )
    found = _medians(stats, history, lambda item: _int_stat(item, "total_files_processed"))
    if found is not None and found[1] >= ANOMALY_MIN_FILES:
        total, median = found
        dropped = (median - total) / median * 100
        if dropped > drop_percent:
            findings.append(
                (
                    f"the file count fell to {_number_words(total)} from a median of "
                    f"{_number_words(median)} (-{dropped:.0f} %, alert above "
                    f"{drop_percent:g} %)",
                    {"total_files": total, "median_total_files": median},
                )
            )
    return findings


def on_repo_status(host: Host, job: Optional[Job], now: datetime) -> Context:
    """The host's repository status changed (a probe, init or any job's report)."""
    context = Context(now, host_ids=[host.id])
    if host.repo_status in ("error", "init_failed", "missing"):
        words = {
            "init_failed": "could not be initialised",
            "missing": "is missing",
        }.get(host.repo_status, "is unusable")
        fire(
            context,
            host,
            "repository_error",
            "",
            f"The repository of {host.hostname} {words}: "
            f"{host.repo_status_reason or 'no reason given'}",
            details={"repo_status": host.repo_status, "job_id": job.id if job else None},
            job_id=job.id if job else None,
        )
    elif host.repo_status == "ready":
        clear(context, host, "repository_error", "")
    return context


# --- rules evaluated by the ticker -----------------------------------------------------------


# How far ahead schedule_period_seconds looks: a cron without a day-of-month or month field
# repeats every week, so two weeks show its longest gap (the weekend of a weekdays-only
# schedule, however often it runs on weekdays); any other cron gets two years, so "the 31st"
# and "February 29th" are seen too. The run count is capped for the every-minute kind.
_WEEKLY_HORIZON = timedelta(days=15)
_LONG_HORIZON = timedelta(days=800)
_MAX_SAMPLED_RUNS = 20_000


@lru_cache(maxsize=4096)
def schedule_period_seconds(cron: str) -> Optional[int]:
    """The longest gap between two runs of ``cron`` (over its runs of the next weeks, or
    years for day-of-month crons), so a weekdays-only schedule is not overdue on a Monday
    morning. None if cron is invalid."""
    fields = cron.split()
    weekly = len(fields) >= 5 and fields[2] == "*" and fields[3] == "*"
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    horizon = start + (_WEEKLY_HORIZON if weekly else _LONG_HORIZON)
    try:
        runs = croniter(cron, start)
        times = [runs.get_next(datetime)]
        while len(times) < 16 or (times[-1] < horizon and len(times) < _MAX_SAMPLED_RUNS):
            times.append(runs.get_next(datetime))
    except (ValueError, KeyError, TypeError):
        return None
    return int(max((later - earlier).total_seconds() for earlier, later in zip(times, times[1:])))


def _since(when: datetime) -> str:
    return when.strftime("%Y-%m-%d %H:%M UTC")


def evaluate(
    now: datetime,
    *,
    listening_since: Optional[datetime] = None,
    pause: Optional[Callable[[], None]] = None,
) -> Context:
    """One pass of the time-based rules over the fleet, then the reminders.

    ``listening_since`` (when the ticker started): silence from before it is the server's own
    downtime, so agent_offline does not fire until the server has listened a threshold long.
    ``pause`` is called after every :data:`PAUSE_HOSTS` hosts: the ticker lets the worker's
    other requests run there on PostgreSQL (the pass is pure Python between its reads and
    took a worker for 0.2 s at 20,000 hosts; see app/ticker.py for why not on SQLite).
    """
    context = Context(now)
    # Plain rows of the columns the rules read, not ORM objects: with thousands of hosts,
    # building (and later garbage-collecting) full Host and SourceGroup instances, JSON
    # columns decoded, was most of a tick. fire/clear/enqueue read only id, hostname, tags.
    hosts = db.session.execute(
        select(
            Host.id,
            Host.hostname,
            Host.tags,
            Host.enrolled_at,
            Host.last_seen_at,
            Host.schedule_version,
            Host.agent_schedule_version,
            Host.schedule_changed_at,
        ).where(Host.enrolled_at.is_not(None))
    ).all()
    groups: dict[int, list] = {}
    for group in db.session.execute(
        select(
            SourceGroup.id,
            SourceGroup.host_id,
            SourceGroup.name,
            SourceGroup.created_at,
            SourceGroup.last_successful_backup_at,
        )
    ):
        groups.setdefault(group.host_id, []).append(group)
    periods: dict[int, int] = {}  # group id -> shortest period of its enabled schedules
    schedule_rows = db.session.execute(
        select(Schedule.cron, Schedule.created_at, SourceGroup.id)
        .join(Schedule.source_groups)
        .where(Schedule.enabled.is_(True))
    )
    scheduled_since: dict[int, datetime] = {}
    for cron, created_at, group_id in schedule_rows:
        period = schedule_period_seconds(cron)
        if period is None:
            continue
        periods[group_id] = min(period, periods.get(group_id, period))
        scheduled_since[group_id] = min(created_at, scheduled_since.get(group_id, created_at))
    listened = (now - listening_since).total_seconds() if listening_since else math.inf
    for index, host in enumerate(hosts, 1):
        if pause is not None and index % PAUSE_HOSTS == 0:
            pause()
        _offline(context, host, listened)
        _schedule_sync(context, host)
        for group in groups.get(host.id, ()):
            _overdue(context, host, group, periods.get(group.id), scheduled_since.get(group.id))
    _clear_overdue_of_gone_groups(context, hosts, groups)
    remind(context)
    return context


def _clear_overdue_of_gone_groups(context: Context, hosts: list, groups: dict[int, list]) -> None:
    """A group deleted (or renamed) while overdue is not evaluated any more: resolve it."""
    current = {
        (host_id, group.name[:SUBJECT_LENGTH])
        for host_id, host_groups in groups.items()
        for group in host_groups
    }
    by_id = {host.id: host for host in hosts}
    for alert in list(context.open.values()):
        if (
            alert.rule == "backup_overdue"
            and alert.host_id in by_id
            and (alert.host_id, alert.subject) not in current
        ):
            clear(context, by_id[alert.host_id], "backup_overdue", alert.subject)


def _offline(context: Context, host: Host, listened: float) -> None:
    setting = context.settings.of("agent_offline", host.id)
    seen = host.last_seen_at or host.enrolled_at
    silent = (context.now - seen).total_seconds()
    if silent <= setting.threshold_seconds:
        clear(context, host, "agent_offline", "")
    elif listened >= setting.threshold_seconds:
        fire(
            context,
            host,
            "agent_offline",
            "",
            f"The agent on {host.hostname} has not polled for {duration_words(silent)} "
            f"(since {_since(seen)}).",
            details={"last_seen_at": seen.isoformat()},
        )


def _schedule_sync(context: Context, host: Host) -> None:
    in_sync = host.schedule_version == 0 or host.agent_schedule_version == host.schedule_version
    if in_sync:
        clear(context, host, "schedule_not_applied", "")
        return
    changed = host.schedule_changed_at
    setting = context.settings.of("schedule_not_applied", host.id)
    if changed is None or (context.now - changed).total_seconds() <= setting.threshold_seconds:
        return
    fire(
        context,
        host,
        "schedule_not_applied",
        "",
        f"The agent on {host.hostname} has not confirmed schedule version "
        f"{host.schedule_version} (it runs version {host.agent_schedule_version or 'none'}) "
        f"for {duration_words((context.now - changed).total_seconds())}.",
        details={
            "schedule_version": host.schedule_version,
            "agent_schedule_version": host.agent_schedule_version,
        },
    )


def _overdue(
    context: Context,
    host: Host,
    group: SourceGroup,
    period: Optional[int],
    scheduled_since: Optional[datetime],
) -> None:
    setting = context.settings.of("backup_overdue", host.id, group.id)
    if period is not None:
        limit = period + (setting.threshold_seconds or 0)
        grace = duration_words(setting.threshold_seconds or 0)
        why = f"its schedule runs at least every {duration_words(period)}, plus {grace} of grace"
        since = max(filter(None, (group.created_at, scheduled_since)))
    elif setting.max_age_seconds is not None:
        limit = setting.max_age_seconds
        why = f"the host's maximum backup age is {duration_words(limit)}"
        since = group.created_at
    else:
        clear(context, host, "backup_overdue", group.name)  # nothing to be overdue against
        return
    last = group.last_successful_backup_at
    start = last or since
    if period is not None and since > start:
        # A schedule counts from when it began: adding a daily schedule to a group last
        # backed up by hand a month ago does not make it overdue before its first day ends.
        start = since
    age = (context.now - start).total_seconds()
    if age <= limit:
        clear(context, host, "backup_overdue", group.name)
        return
    when = f"since {_since(last)}" if last else f"ever (the group exists since {_since(since)})"
    fire(
        context,
        host,
        "backup_overdue",
        group.name,
        f"Source group {group.name} on {host.hostname} has had no successful backup {when}: {why}.",
        details={
            "last_successful_backup_at": last.isoformat() if last else None,
            "limit_seconds": limit,
        },
        group_id=group.id,
    )


def remind(context: Context) -> list[Notification]:
    """Firing, unacknowledged alerts notify each channel again every
    ``remind_every_hours`` (counted from that channel's latest notification of the alert).

    An alert that has notified no one yet (a silence muted it when it fired, and has ended
    since) notifies the channels that want it now, as "firing"."""
    firing = [alert for alert in context.open.values() if alert.state == "firing"]
    channels = [channel for channel in context.channels if channel.remind_every_hours > 0]
    if not firing or not context.channels:
        return []
    latest = {
        (alert_id, channel_id): created
        for alert_id, channel_id, created in db.session.execute(
            select(
                Notification.alert_id, Notification.channel_id, func.max(Notification.created_at)
            )
            .where(Notification.alert_id.in_([alert.id for alert in firing]))
            .group_by(Notification.alert_id, Notification.channel_id)
        )
    }
    hosts = {
        host.id: host
        for host in db.session.scalars(
            select(Host).where(Host.id.in_({alert.host_id for alert in firing}))
        )
    }
    notified = {alert_id for alert_id, _ in latest}
    rows = []
    for alert in firing:
        host = hosts.get(alert.host_id)
        if host is None or silence_matching(alert.rule, host, context.silences) is not None:
            continue
        if alert.id not in notified:
            rows.extend(enqueue(context, alert, host, "firing"))
            continue
        due = [
            channel
            for channel in channels
            if context.now - latest.get((alert.id, channel.id), alert.fired_at)
            >= timedelta(hours=channel.remind_every_hours)
            and wants(channel, alert, host)
        ]
        rows.extend(_outbox(context, alert, due, "reminder"))
    return rows
