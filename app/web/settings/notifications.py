"""Settings → Notifications: the channels alerts are delivered through (admin only).

Friendly forms for the three kinds most fleets use (SMTP e-mail, ntfy, our own signed
webhook) and one "Apprise URL" form for everything Apprise reaches. The notifications
service checks every value and names the field of each problem (``config.url``); the forms
here only carry the input and put those messages under their fields.

Secret fields (SMTP password, ntfy token, webhook URL and secret, Apprise URL) are never
rendered back: not after saving, and not when a refused form is shown again.
"""

from __future__ import annotations

import re
import secrets
from typing import Optional

from flask import current_app, flash, redirect, render_template, request, url_for
from flask_wtf import FlaskForm
from sqlalchemy import func, select
from wtforms import BooleanField, PasswordField, SelectField, StringField, TextAreaField
from wtforms.fields.choices import SelectChoice
from wtforms.widgets import PasswordInput

from app.access import Role, require_role
from app.authn import client_address, current_actor
from app.extensions import db
from app.models.alert import SEVERITIES, Notification, NotificationChannel
from app.models.types import utcnow
from app.services import notifications
from app.services.errors import ServiceError
from app.transaction import commit_and_wake
from app.web.forms import banner, place_errors
from app.web.settings import bp

KIND_TITLES = {
    "email": "E-mail (SMTP)",
    "ntfy": "ntfy",
    "webhook": "Webhook",
    "apprise": "Apprise URL",
}
KIND_SUMMARIES = {
    "email": "Mail through your own SMTP server to one or more addresses.",
    "ntfy": "Push notifications to phones and desktops through ntfy.sh or your own ntfy server.",
    "webhook": "A signed JSON POST to your own endpoint, for chat bots, ticketing and scripts.",
    "apprise": "Slack, Discord, Teams, Telegram, Gotify, Matrix, Pushover and many more, "
    "described by one Apprise URL.",
}
# The order of the Add buttons: the friendly forms first.
KIND_ORDER = ("email", "ntfy", "webhook", "apprise")
APPRISE_EXAMPLES = (
    ("slack://TokenA/TokenB/TokenC/#channel", "Slack"),
    ("discord://webhook_id/webhook_token", "Discord"),
    ("tgram://123456789:bot_token/chat_id", "Telegram"),
    ("gotify://gotify.example.com/app_token", "Gotify"),
    ("matrix://user:password@matrix.example.com/#room", "Matrix"),
    ("pover://user_key@app_token", "Pushover"),
    ("mailtos://user:password@mail.example.com?to=ops@example.com", "e-mail"),
)
SEVERITY_WORDS = {
    "info": "Info and above (everything)",
    "warning": "Warning and above",
    "critical": "Critical only",
}
SECURITY_CHOICES = (
    SelectChoice("starttls", "STARTTLS (usually port 587)"),
    SelectChoice("tls", "TLS from the first byte (usually port 465)"),
    SelectChoice("none", "None: plain text (only to a relay on a trusted network, port 25)"),
)
# Which form field shows a service field's message; the rest keep their own names.
_FORM_NAMES = {"from": "sender"}
_INDEX = re.compile(r"\[\d+\]$")
_LIST_SEPARATORS = re.compile(r"[,;\s]+")
_WHOLE_NUMBER = re.compile(r"\d{1,30}")


# --- forms -----------------------------------------------------------------------------------


class ChannelForm(FlaskForm):
    """What every kind has. Subclasses add the kind's own settings (``config``)."""

    kind = ""
    secret_fields: tuple[str, ...] = ()

    name = StringField(
        "Name",
        description="What this server calls the channel, e.g. “ops e-mail” or “on-call phone”.",
    )
    min_severity = SelectField(
        "Minimum severity",
        choices=[SelectChoice(value, SEVERITY_WORDS[value]) for value in SEVERITIES],
        default="warning",
        validate_choice=False,  # the service names a tampered value under the field
        description="Alerts below this severity are not sent here (they still show on the "
        "Alerts page).",
    )
    tags = StringField(
        "Only hosts tagged",
        description="Host tags, separated by commas or spaces. A host needs one of them for "
        "its alerts to come here. Empty: every host.",
    )
    remind_every_hours = StringField(
        "Remind every (hours)",
        default="24",
        render_kw={"inputmode": "numeric"},
        description="While an alert fires and nobody has acknowledged it, send it again after "
        "this many hours. 0: never remind.",
    )
    enabled = BooleanField("Enabled: deliver alerts through this channel", default=True)

    def config(self) -> dict:
        return {}

    def values(self, *, creating: bool) -> dict:
        """What the service gets. A secret left empty is omitted (the edit form keeps the
        stored one); so is an empty reminder interval (the service's default)."""
        values = {
            "name": self.name.data or "",
            "min_severity": self.min_severity.data or "",
            "tags": _split_list(self.tags.data),
            "enabled": bool(self.enabled.data),
            "config": {
                key: value
                for key, value in self.config().items()
                if not (key in self.secret_fields and not value)
            },
        }
        removing = getattr(self, "remove_secret", None)
        if removing is not None and removing.data and not creating:
            for key in self.secret_fields:  # null removes an optional secret
                values["config"][key] = None
        remind = _number(self.remind_every_hours.data)
        if remind != "":
            values["remind_every_hours"] = remind
        if creating:
            values["kind"] = self.kind
        return values

    def fill(self, view: dict) -> None:
        """Show a saved channel (its clear fields only)."""
        self.name.data = view["name"]
        self.min_severity.data = view["min_severity"]
        self.tags.data = ", ".join(view.get("tags") or [])
        self.remind_every_hours.data = str(view["remind_every_hours"])
        self.enabled.data = view["enabled"]


class SecretTextInput(PasswordInput):
    """A text box that, like a password box, is never rendered with its value: for secret
    URLs, which are long and need to be read while they are typed or pasted."""

    input_type = "text"


def _secret(label: str, description: str) -> PasswordField:
    # PasswordField never renders its value back (hide_value), also on a refused form.
    return PasswordField(label, description=description, render_kw={"autocomplete": "new-password"})


def _secret_url(label: str, description: str) -> PasswordField:
    return PasswordField(
        label,
        description=description,
        widget=SecretTextInput(),
        render_kw={"autocomplete": "off", "spellcheck": "false", "inputmode": "url"},
    )


class EmailForm(ChannelForm):
    kind = "email"
    secret_fields = ("password",)

    host = StringField(
        "SMTP server", description="The mail server's host name, e.g. smtp.example.com."
    )
    port = StringField(
        "Port",
        default="587",
        render_kw={"inputmode": "numeric"},
        description="587 for STARTTLS, 465 for TLS, 25 for a plain relay.",
    )
    security = SelectField(
        "Security", choices=list(SECURITY_CHOICES), default="starttls", validate_choice=False
    )
    username = StringField(
        "Username", description="Empty when the server accepts mail without signing in."
    )
    password = _secret("Password", "Sealed on the server; never shown again.")
    remove_secret = BooleanField("Remove the saved password (sign in no more)")
    sender = StringField("From", description="The sender address, e.g. restic-manager@example.com.")
    to = TextAreaField(
        "To",
        render_kw={"rows": 3},
        description="One or more addresses, separated by commas or new lines.",
    )

    def config(self) -> dict:
        return {
            "host": (self.host.data or "").strip(),
            "port": _number(self.port.data),
            "security": self.security.data or "",
            "username": self.username.data or "",
            "password": self.password.data or "",
            "from": (self.sender.data or "").strip(),
            "to": _split_list(self.to.data),
        }

    def fill(self, view: dict) -> None:
        super().fill(view)
        config = view["config"]
        self.host.data = config.get("host", "")
        self.port.data = str(config.get("port", ""))
        self.security.data = config.get("security", "starttls")
        self.username.data = config.get("username", "")
        self.sender.data = config.get("from", "")
        self.to.data = "\n".join(config.get("to") or [])


class NtfyForm(ChannelForm):
    kind = "ntfy"
    secret_fields = ("token",)

    url = StringField(
        "Server URL",
        default="https://ntfy.sh",
        description="https://ntfy.sh or the address of your own ntfy server.",
    )
    topic = StringField(
        "Topic",
        description="Subscribe to it in the ntfy app. On the public ntfy.sh anyone who knows "
        "the topic can read it: pick a long, unguessable one or use an access token.",
    )
    token = _secret(
        "Access token",
        "Only for servers or topics that need one (tk_…). Sealed; never shown again.",
    )
    remove_secret = BooleanField("Remove the saved access token")

    def config(self) -> dict:
        return {
            "url": (self.url.data or "").strip(),
            "topic": (self.topic.data or "").strip(),
            "token": (self.token.data or "").strip(),
        }

    def fill(self, view: dict) -> None:
        super().fill(view)
        self.url.data = view["config"].get("url", "")
        self.topic.data = view["config"].get("topic", "")


class WebhookForm(ChannelForm):
    kind = "webhook"
    secret_fields = ("url", "secret")

    url = _secret_url(
        "URL",
        "Where the JSON is POSTed, e.g. https://hooks.example.com/restic. URLs often carry a "
        "token, so this one is sealed and never shown again either.",
    )
    secret = _secret(
        "Signing secret",
        "The key of the X-RM-Signature HMAC: a long random string your receiver knows too.",
    )

    def config(self) -> dict:
        return {"url": (self.url.data or "").strip(), "secret": self.secret.data or ""}


class AppriseForm(ChannelForm):
    kind = "apprise"
    secret_fields = ("url",)

    url = _secret_url(
        "Apprise URL",
        "One service's address in Apprise's words (see the examples). It holds the service's "
        "tokens, so it is sealed and never shown again.",
    )

    def config(self) -> dict:
        return {"url": (self.url.data or "").strip()}


FORMS = {form.kind: form for form in (EmailForm, NtfyForm, WebhookForm, AppriseForm)}


def _split_list(text: Optional[str]) -> list[str]:
    return [part for part in _LIST_SEPARATORS.split(text or "") if part]


def _number(text: Optional[str]):
    """A whole number as an int; anything else as typed, for the service to name."""
    text = (text or "").strip()
    return int(text) if _WHOLE_NUMBER.fullmatch(text) else text


def _form_field(name: str) -> str:
    """``config.url`` → ``url``, ``config.to[2]`` → ``to``, ``config.from`` → ``sender``."""
    name = _INDEX.sub("", name.removeprefix("config."))
    return _FORM_NAMES.get(name, name)


def _place(form: ChannelForm, refused: ServiceError) -> Optional[str]:
    """The service's messages under their fields; the banner line for the rest."""
    if not refused.fields and refused.code == "name_taken":
        form.name.errors = [*form.name.errors, refused.message]  # the one clash a channel has
        return None
    fields: dict[str, list[str]] = {}
    for name, messages in refused.fields.items():
        fields.setdefault(_form_field(name), []).extend(
            [messages] if isinstance(messages, str) else messages
        )
    return banner(refused, place_errors(form, fields))


# --- pages -----------------------------------------------------------------------------------


def _box():
    return current_app.extensions["secretbox"]


def _last_deliveries(channel_ids: list[int]) -> dict[int, Notification]:
    """Each channel's most recent delivery attempt (one query)."""
    if not channel_ids:
        return {}
    latest = (
        select(func.max(Notification.id))
        .where(
            Notification.channel_id.in_(channel_ids),
            Notification.last_attempt_at.is_not(None),
        )
        .group_by(Notification.channel_id)
    )
    rows = db.session.scalars(select(Notification).where(Notification.id.in_(latest)))
    return {row.channel_id: row for row in rows}


def _render_list(test_results: Optional[dict] = None, status: int = 200):
    channels = notifications.list_channels()
    return render_template(
        "settings/notifications.html",
        channels=[notifications.channel_view(channel) for channel in channels],
        last=_last_deliveries([channel.id for channel in channels]),
        test_results=test_results or {},
        kinds=KIND_ORDER,
        kind_titles=KIND_TITLES,
        kind_summaries=KIND_SUMMARIES,
        severity_words=SEVERITY_WORDS,
        # After a Send test: a reload shows the list instead of sending again.
        page_url=url_for("settings.notifications") if test_results else None,
    ), status


def _render_form(
    form: ChannelForm,
    *,
    view: Optional[dict] = None,
    problem: Optional[str] = None,
    status: int = 200,
):
    secrets_set = set(view["secrets_set"]) if view else set()
    for name in form.secret_fields:
        if name in secrets_set:
            field = form[name]
            kept = "Set — leave empty to keep it, or type a new one."
            field.description = f"{kept} {field.description}"
    return render_template(
        "settings/notifications_form.html",
        form=form,
        kind=form.kind,
        kind_title=KIND_TITLES[form.kind],
        kind_summary=KIND_SUMMARIES[form.kind],
        view=view,
        secrets_set=secrets_set,
        problem=problem,
        error_count=sum(1 for field in form if field.errors),
        # A refused form is shown without the secrets that were typed: say which to retype.
        cleared=[form[name].label.text for name in form.secret_fields if form[name].data]
        if request.method == "POST"
        else [],
        apprise_examples=APPRISE_EXAMPLES,
        suggested_secret=secrets.token_hex(32) if form.kind == "webhook" else None,
        # A refused POST comes back at the form's own address: a reload only checks again.
        page_url=request.path if request.method == "POST" else None,
    ), status


def _channel_or_404(channel_id: int) -> NotificationChannel:
    return notifications.get_channel(channel_id)


@bp.get("/notifications", endpoint="notifications")
@require_role(Role.admin)
def notifications_page():
    return _render_list()


@bp.route("/notifications/new/<kind>", methods=["GET", "POST"])
@require_role(Role.admin)
def new_channel(kind: str):
    form_class = FORMS.get(kind)
    if form_class is None:
        return redirect(url_for("settings.notifications"))
    form = form_class()
    if request.method == "GET":
        return _render_form(form_class(formdata=None))
    try:
        channel = notifications.create_channel(
            _box(),
            form.values(creating=True),
            actor=current_actor(),
            now=utcnow(),
            client_address=client_address(),
        )
    except ServiceError as refused:
        db.session.rollback()
        return _render_form(form, problem=_place(form, refused), status=refused.status)
    name = channel.name
    commit_and_wake()
    flash(f"Channel “{name}” added. Send a test to see it arrive.", "success")
    return redirect(url_for("settings.notifications") + f"#channel-{channel.id}", 303)


@bp.route("/notifications/<int:channel_id>/edit", methods=["GET", "POST"])
@require_role(Role.admin)
def edit_channel(channel_id: int):
    channel = _channel_or_404(channel_id)
    view = notifications.channel_view(channel)
    form_class = FORMS[channel.kind]
    if request.method == "GET":
        form = form_class(formdata=None)
        form.fill(view)
        return _render_form(form, view=view)
    form = form_class()
    try:
        notifications.update_channel(
            _box(),
            channel,
            form.values(creating=False),
            actor=current_actor(),
            now=utcnow(),
            client_address=client_address(),
        )
    except ServiceError as refused:
        db.session.rollback()  # a refused change leaves everything as it was
        return _render_form(form, view=view, problem=_place(form, refused), status=refused.status)
    name = channel.name
    commit_and_wake()
    flash(f"Channel “{name}” saved.", "success")
    return redirect(url_for("settings.notifications") + f"#channel-{channel_id}", 303)


@bp.post("/notifications/<int:channel_id>/enabled")
@require_role(Role.admin)
def toggle_channel(channel_id: int):
    channel = _channel_or_404(channel_id)
    enabled = not channel.enabled
    notifications.update_channel(
        _box(),
        channel,
        {"enabled": enabled},
        actor=current_actor(),
        now=utcnow(),
        client_address=client_address(),
    )
    name = channel.name
    commit_and_wake()
    flash(f"Channel “{name}” {'enabled' if enabled else 'disabled'}.", "success")
    return redirect(url_for("settings.notifications") + f"#channel-{channel_id}", 303)


@bp.post("/notifications/<int:channel_id>/test")
@require_role(Role.admin)
def test_channel(channel_id: int):
    """Send a test message now and show what the other end answered."""
    channel = _channel_or_404(channel_id)
    base_url = current_app.config["RM_BASE_URL"] or request.host_url.rstrip("/")
    result = notifications.send_test(
        _box(),
        channel,
        now=utcnow(),
        base_url=base_url,
        actor=current_actor(),
        client_address=client_address(),
    )
    commit_and_wake()
    return _render_list({channel.id: result})


@bp.post("/notifications/<int:channel_id>/delete")
@require_role(Role.admin)
def delete_channel(channel_id: int):
    channel = _channel_or_404(channel_id)
    name = channel.name
    notifications.delete_channel(
        channel, actor=current_actor(), now=utcnow(), client_address=client_address()
    )
    commit_and_wake()
    flash(f"Channel “{name}” deleted: nothing more is sent through it.", "success")
    return redirect(url_for("settings.notifications"), 303)
