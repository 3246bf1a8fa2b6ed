"""The alert pages' forms: notes, silences, rule settings and a host's own settings.

They carry what was typed and check only what the form itself adds (minutes instead of
seconds, a choice of durations); app/services/alerts.py checks the rest and its messages
are placed next to the fields by app/web/forms.py. Every POST is CSRF-checked before it
reaches a view (app/__init__.py), so the forms do not carry their own token.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import ClassVar, Optional

from flask_wtf import FlaskForm
from wtforms import BooleanField, RadioField, SelectField, StringField, TextAreaField
from wtforms.fields.choices import SelectChoice

from app.models.alert import SEVERITIES
from app.services.alerts import MAX_THRESHOLD_SECONDS, RULES

MAX_MINUTES = MAX_THRESHOLD_SECONDS // 60
DURATIONS = {
    "1h": ("1 hour", timedelta(hours=1)),
    "4h": ("4 hours", timedelta(hours=4)),
    "1d": ("1 day", timedelta(days=1)),
    "1w": ("1 week", timedelta(weeks=1)),
}
UNTIL = "until"


class _Form(FlaskForm):
    class Meta:
        csrf = False  # checked for every POST in app/__init__.py


class NoteForm(_Form):
    """Acknowledge or resolve: an optional note."""

    note = TextAreaField(
        "Note",
        description="Optional: what you found or did. Shown on the alert and in the audit log.",
    )

    def note_value(self) -> Optional[str]:
        return self.note.data or None


def minutes(field, label: str) -> Optional[int]:
    """A whole number of minutes from a text field (blank: None); errors go on the field."""
    text = (field.data or "").strip()
    if not text:
        return None
    if not text.isdigit() or len(text) > 9:
        field.errors.append(f"{label} must be a whole number of minutes.")
        return None
    value = int(text)
    if not 1 <= value <= MAX_MINUTES:
        field.errors.append(f"{label} must be between 1 minute and {MAX_MINUTES:,} (366 days).")
        return None
    return value


def number(field, label: str) -> Optional[float]:
    """A decimal number from a text field (blank: None)."""
    text = (field.data or "").strip()
    if not text:
        return None
    try:
        value = float(text) if len(text) <= 20 else None
    except ValueError:
        value = None
    if value is None or value != value or value in (float("inf"), float("-inf")):
        field.errors.append(f"{label} must be a number.")
        return None
    return value


class SilenceForm(_Form):
    host_id = SelectField("Host", choices=[], validate_choice=False)
    tag = StringField(
        "Host tag", description="Mutes every host carrying this tag (e.g. “staging”)."
    )
    rule = SelectField(
        "Rule",
        choices=[
            SelectChoice("", "Any rule"),
            *(SelectChoice(name, rule.label) for name, rule in RULES.items()),
        ],
        validate_choice=False,
    )
    reason = StringField(
        "Reason",
        description="Required: why, for whoever finds the muted alerts (e.g. “disk swap”).",
    )
    ends = RadioField(
        "Ends",
        choices=[
            *(SelectChoice(key, f"in {label}") for key, (label, _) in DURATIONS.items()),
            SelectChoice(UNTIL, "at a date and time"),
        ],
        default="4h",
        validate_choice=False,
    )
    until = StringField(
        "Until (UTC)", description="For “at a date and time”: e.g. 2026-12-24 18:00, in UTC."
    )

    def set_hosts(self, hosts) -> None:
        self.host_id.choices = [
            SelectChoice("", "Any host"),
            *(SelectChoice(str(id_), name) for id_, name in hosts),
        ]

    def values(self, now: datetime) -> Optional[dict]:
        """The service's values, or None when the form itself found a problem."""
        self.validate()  # gives every field its list of errors
        host_id = None
        raw_host = (self.host_id.data or "").strip()
        if raw_host:
            if not raw_host.isdigit() or len(raw_host) > 9:
                self.host_id.errors.append("Choose a host from the list.")
            else:
                host_id = int(raw_host)
        ends_at = None
        choice = self.ends.data or ""
        if choice in DURATIONS:
            ends_at = (now + DURATIONS[choice][1]).isoformat()
        elif choice == UNTIL:
            ends_at = (self.until.data or "").strip()
            if not ends_at:
                self.until.errors.append("Give the date and time the silence ends (UTC).")
        else:
            self.ends.errors.append("Choose when the silence ends.")
        if self.errors:
            return None
        return {
            "host_id": host_id,
            "tag": (self.tag.data or "").strip() or None,
            "rule": self.rule.data or None,
            "reason": self.reason.data or "",
            "ends_at": ends_at,
        }

    def field_of(self, name: str) -> Optional[str]:
        """Where a service message about ``name`` goes."""
        if name in ("ends_at", "starts_at"):
            return "until" if self.ends.data == UNTIL else "ends"
        return name if name in ("host_id", "tag", "rule", "reason") else None


class RuleForm(_Form):
    """One rule's fleet-wide setting (use ``prefix=rule`` so the forms share a page)."""

    enabled = BooleanField("Enabled")
    severity = SelectField(
        "Severity", choices=[SelectChoice(name, name) for name in SEVERITIES], validate_choice=False
    )
    threshold = StringField("Threshold (min)")
    factor = StringField("Size factor")
    drop_percent = StringField("File drop (%)")

    SERVICE_FIELDS: ClassVar[dict[str, str]] = {
        "enabled": "enabled",
        "severity": "severity",
        "threshold_seconds": "threshold",
        "factor": "factor",
        "drop_percent": "drop_percent",
    }

    @classmethod
    def for_rule(cls, view: dict, formdata=None) -> RuleForm:
        form = cls(prefix=view["rule"], formdata=formdata)
        if formdata is None:
            form.enabled.data = view["enabled"]
            form.severity.data = view["severity"]
            if view["has_threshold"] and view["threshold_seconds"] is not None:
                form.threshold.data = _minutes_text(view["threshold_seconds"])
            if "factor" in view:
                form.factor.data = f"{view['factor']:g}"
                form.drop_percent.data = f"{view['drop_percent']:g}"
        return form

    def values(self, view: dict) -> Optional[dict]:
        """The service's values (blank threshold/factor: back to the default), or None."""
        self.validate()
        values = {"enabled": bool(self.enabled.data), "severity": self.severity.data}
        if view["has_threshold"]:
            threshold = minutes(self.threshold, "Threshold")
            values["threshold_seconds"] = threshold * 60 if threshold is not None else None
        if "factor" in view:
            values["factor"] = number(self.factor, "Size factor")
            values["drop_percent"] = number(self.drop_percent, "File-count drop")
        return None if self.errors else values


def _minutes_text(seconds: int) -> str:
    return str(seconds // 60) if seconds % 60 == 0 else f"{seconds / 60:g}"


# A host's own settings: which rules and numbers a host may change here.
ENABLED_CHOICES = [
    SelectChoice("", "As the fleet"),
    SelectChoice("on", "On"),
    SelectChoice("off", "Off"),
]
HOST_NUMBERS = (
    # (form field, rule, service field, label)
    ("agent_offline_threshold", "agent_offline", "threshold_seconds", "Offline after"),
    ("backup_overdue_threshold", "backup_overdue", "threshold_seconds", "Overdue grace"),
    ("backup_overdue_max_age", "backup_overdue", "max_age_seconds", "Maximum backup age"),
    (
        "schedule_not_applied_threshold",
        "schedule_not_applied",
        "threshold_seconds",
        "Schedule confirmation time",
    ),
)
HOST_NUMBER_HELP = {
    "agent_offline_threshold": "Minutes without a poll before “Agent offline” fires.",
    "backup_overdue_threshold": "Minutes allowed past a schedule's period before a source "
    "group's backup is overdue.",
    "backup_overdue_max_age": "For source groups without a schedule: minutes since the last "
    "successful backup before it is overdue (e.g. 1560 = 26 hours). Blank: never.",
    "schedule_not_applied_threshold": "Minutes the agent may take to confirm new schedules.",
}


def _host_form_class():
    fields = {
        f"{rule}_enabled": SelectField(
            RULES[rule].label, choices=ENABLED_CHOICES, validate_choice=False
        )
        for rule in RULES
    }
    for name, _, _, label in HOST_NUMBERS:
        fields[name] = StringField(f"{label} (minutes)", description=HOST_NUMBER_HELP[name])
    return type("HostAlertForm", (_Form,), fields)


HostAlertForm = _host_form_class()


def fill_host_form(form, overrides: dict[str, dict]) -> None:
    """Show the host's own settings (blank where it follows the fleet)."""
    for rule in RULES:
        enabled = overrides.get(rule, {}).get("enabled")
        form[f"{rule}_enabled"].data = "" if enabled is None else "on" if enabled else "off"
    for name, rule, service_field, _ in HOST_NUMBERS:
        seconds = overrides.get(rule, {}).get(service_field)
        form[name].data = _minutes_text(seconds) if seconds is not None else ""


def host_form_values(form) -> Optional[dict[str, dict]]:
    """Per rule, the values for alerts.set_override (None: inherit), or None on an error."""
    form.validate()
    wanted: dict[str, dict] = {}
    for rule in RULES:
        choice = form[f"{rule}_enabled"].data or ""
        if choice not in ("", "on", "off"):
            form[f"{rule}_enabled"].errors.append("Choose one of the listed values.")
            continue
        wanted.setdefault(rule, {})["enabled"] = None if choice == "" else choice == "on"
    for name, rule, service_field, label in HOST_NUMBERS:
        value = minutes(form[name], label)
        wanted.setdefault(rule, {})[service_field] = value * 60 if value is not None else None
    return None if form.errors else wanted


def host_field_of(rule: str, service_field: str) -> Optional[str]:
    if service_field == "enabled":
        return f"{rule}_enabled"
    for name, number_rule, number_field, _ in HOST_NUMBERS:
        if number_rule == rule and number_field == service_field:
            return name
    return None


# A source group's own settings (the host's Alerts tab, one row per group): the two rules
# people tune per group. The API reaches the others of alerts.GROUP_RULES too.
AS_THE_HOST = "As the host"
GROUP_FIELDS = (
    # (form field, rule, service field)
    ("anomaly_enabled", "backup_size_anomaly", "enabled"),
    ("factor", "backup_size_anomaly", "factor"),
    ("drop_percent", "backup_size_anomaly", "drop_percent"),
    ("overdue_enabled", "backup_overdue", "enabled"),
    ("overdue_grace", "backup_overdue", "threshold_seconds"),
)


class GroupAlertForm(_Form):
    """One source group's row (use ``prefix=group_prefix(group)``, one form per group)."""

    anomaly_enabled = SelectField("Size anomaly", choices=ENABLED_CHOICES, validate_choice=False)
    factor = StringField("Size factor")
    drop_percent = StringField("File drop (%)")
    overdue_enabled = SelectField("Overdue", choices=ENABLED_CHOICES, validate_choice=False)
    overdue_grace = StringField("Overdue grace (min)")


def group_prefix(group_id: int) -> str:
    return f"group-{group_id}"


def fill_group_form(form: GroupAlertForm, overrides: dict[str, dict]) -> None:
    """Show the group's own settings (blank where it follows the host and the fleet)."""
    for name, rule, service_field in GROUP_FIELDS:
        value = overrides.get(rule, {}).get(service_field)
        if value is None:
            form[name].data = ""
        elif service_field == "enabled":
            form[name].data = "on" if value else "off"
        elif service_field == "threshold_seconds":
            form[name].data = _minutes_text(value)
        else:
            form[name].data = f"{value:g}"


def group_form_values(form: GroupAlertForm) -> Optional[dict[str, dict]]:
    """Per rule, the values for alerts.set_override with the group (None: as the host), or
    None when the form itself found a problem (its messages are on the fields)."""
    form.validate()
    wanted: dict[str, dict] = {}
    for name, rule, service_field in GROUP_FIELDS:
        field = form[name]
        if service_field == "enabled":
            choice = field.data or ""
            if choice not in ("", "on", "off"):
                field.errors.append("Choose one of the listed values.")
                continue
            value = None if choice == "" else choice == "on"
        elif service_field == "threshold_seconds":
            grace = minutes(field, "Overdue grace")
            value = grace * 60 if grace is not None else None
        else:
            value = number(field, "Size factor" if name == "factor" else "File drop")
        wanted.setdefault(rule, {})[service_field] = value
    return None if form.errors else wanted


def group_field_of(rule: str, service_field: str) -> Optional[str]:
    for name, field_rule, field in GROUP_FIELDS:
        if field_rule == rule and field == service_field:
            return name
    return None
