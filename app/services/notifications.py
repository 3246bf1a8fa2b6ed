"""Notification channels (webhook, e-mail, ntfy, any Apprise URL) and the delivery of the
outbox that :mod:`app.services.alerts` writes.

A channel's clear settings live in ``config``; its secrets (the webhook's URL and HMAC key,
the SMTP password, the ntfy token, the Apprise URL) are sealed together as one JSON object
and never shown again: :func:`channel_view` lists only which of them are set, and a
webhook's or Apprise URL's redacted form.

Delivery is at least once, de-duplicated by the key: each outbox row carries an
idempotency key, sent as ``X-RM-Delivery`` (webhook) and in the e-mail's ``Message-ID`` and
``X-RM-Delivery`` headers. The sender (:func:`deliver_due`, on the leader) records each
row right after sending it and the ticker commits there, so a crash can repeat at most the
rows in flight, with the same key.
"""

from __future__ import annotations

import json
import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable, Optional
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.exc import ObjectDeletedError

from app.extensions import db
from app.formatting import iso
from app.models import Alert, Host, Notification, NotificationChannel
from app.models.alert import SEVERITIES
from app.secretbox import SecretBox, SecretOpenError
from app.services import audit, channels_send, validate
from app.services.alerts import RULES
from app.services.audit import Actor
from app.services.channels_send import Message, SendResult
from app.services.errors import Conflict, NotFound, ValidationFailed

__all__ = [
    "KINDS",
    "SendResult",
    "channel_view",
    "create_channel",
    "delete_channel",
    "deliver_due",
    "get_channel",
    "list_channels",
    "send_test",
    "update_channel",
]

KINDS = ("webhook", "email", "ntfy", "apprise")
SECRET_FIELDS = {
    "webhook": ("url", "secret"),
    "email": ("password",),
    "ntfy": ("token",),
    "apprise": ("url",),
}
# Secrets a channel may do without: null removes the stored one ("" keeps it).
OPTIONAL_SECRETS = {"email": ("password",), "ntfy": ("token",)}
CLEAR_FIELDS = {
    "webhook": (),
    "email": ("host", "port", "security", "username", "from", "to"),
    "ntfy": ("url", "topic"),
    "apprise": (),
}
TOP_FIELDS = ("name", "kind", "config", "min_severity", "tags", "enabled", "remind_every_hours")
SECURITIES = ("none", "starttls", "tls")
DEFAULT_PORTS = {"none": 25, "starttls": 587, "tls": 465}
DEFAULT_NTFY_URL = "https://ntfy.sh"
WEBHOOK_SECRET_MIN = 16
MAX_RECIPIENTS = 20
MAX_TAGS = 50
MAX_REMIND_HOURS = 720
URL_LENGTH = 2000

# Delivery: retry after 1 min, 2, 4 ... at most an hour apart; give up 24 h after the change.
FIRST_RETRY = timedelta(minutes=1)
MAX_RETRY = timedelta(hours=1)
GIVE_UP_AFTER = timedelta(hours=24)
MAX_PARALLEL_CHANNELS = 8

TABLE, COLUMN = "notification_channels", "secrets"
_ADDRESS = re.compile(
    r"^[^@\s<>,;\"()\[\]\\]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$"
)
_NTFY_TOPIC = re.compile(r"^[-_A-Za-z0-9]{1,64}$")  # what ntfy itself accepts


# --- reading ---------------------------------------------------------------------------------


def list_channels() -> list[NotificationChannel]:
    return list(db.session.scalars(select(NotificationChannel).order_by(NotificationChannel.name)))


def get_channel(channel_id) -> NotificationChannel:
    channel = (
        db.session.get(NotificationChannel, channel_id)
        if isinstance(channel_id, int)
        and not isinstance(channel_id, bool)
        and validate.INT64_MIN <= channel_id <= validate.INT64_MAX
        else None
    )
    if channel is None:
        raise NotFound(f"Channel {validate.echo(channel_id)} does not exist.")
    return channel


def channel_view(channel: NotificationChannel) -> dict:
    """A channel as pages and the API show it: clear settings, which secrets are set."""
    config = dict(channel.config or {})
    return {
        "id": channel.id,
        "name": channel.name,
        "kind": channel.kind,
        "enabled": channel.enabled,
        "min_severity": channel.min_severity,
        "tags": list(channel.tags or []),
        "remind_every_hours": channel.remind_every_hours,
        "config": {key: value for key, value in config.items() if key != "secrets_set"},
        "secrets_set": list(config.get("secrets_set") or []),
        "created_at": iso(channel.created_at),
        "updated_at": iso(channel.updated_at),
    }


def open_secrets(box: SecretBox, channel: NotificationChannel) -> dict:
    if not channel.sealed_secrets:
        return {}
    return json.loads(
        box.open(channel.sealed_secrets, table=TABLE, column=COLUMN, row_id=channel.id)
    )


# --- validating ------------------------------------------------------------------------------


def _bool(value, field: str, label: str) -> bool:
    if not isinstance(value, bool):
        validate.fail(field, f"{label} must be true or false.")
    return value


def _severity(value) -> str:
    if value not in SEVERITIES:
        validate.fail("min_severity", f"Minimum severity must be one of {', '.join(SEVERITIES)}.")
    return value


def _tags(value) -> list[str]:
    if isinstance(value, str):  # a form's text box: space- or comma-separated
        value = [part for part in re.split(r"[\s,]+", value) if part]
    if not isinstance(value, list):
        validate.fail("tags", "Tags must be a list of host tags.")
    tags = []
    for tag in value:
        if not isinstance(tag, str) or not validate.TAG.match(tag):
            validate.fail(
                "tags",
                f"Tag {validate.echo(tag)} may contain letters, digits and . _ : @ + - (up to 64).",
            )
        if tag not in tags:
            tags.append(tag)
    if len(tags) > MAX_TAGS:
        validate.fail("tags", f"At most {MAX_TAGS} tags.")
    return tags


def _remind(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        validate.fail("remind_every_hours", "Reminder interval must be a whole number of hours.")
    if not 0 <= value <= MAX_REMIND_HOURS:
        validate.fail(
            "remind_every_hours",
            f"Reminder interval must be between 0 (no reminders) and {MAX_REMIND_HOURS} hours.",
        )
    return value


def _http_url(value, field: str, label: str, *, required: bool, userinfo: bool = True):
    url = validate.text(value, field, label, required=required, max_length=URL_LENGTH)
    if url is None:
        return None
    try:
        split = urlsplit(url)
        split.port  # noqa: B018 - raises on a bad port
    except ValueError:
        validate.fail(field, f"{label} is not a valid URL.")
    if split.scheme not in ("http", "https") or not split.hostname:
        validate.fail(field, f"{label} must be an http:// or https:// URL with a host.")
    if not userinfo and (split.username or split.password):
        validate.fail(field, f"{label} must not hold a user name or password.")
    return url


def _address(value, field: str, label: str) -> str:
    address = validate.text(value, field, label, required=True, max_length=254)
    if not _ADDRESS.match(address):
        validate.fail(field, f"{label} {validate.echo(address)} is not an e-mail address.")
    return address


def _recipients(value) -> list[str]:
    if isinstance(value, str):
        value = [part for part in re.split(r"[\s,;]+", value) if part]
    if not isinstance(value, list) or not value:
        validate.fail("config.to", "Give at least one recipient address.")
    if len(value) > MAX_RECIPIENTS:
        validate.fail("config.to", f"At most {MAX_RECIPIENTS} recipients.")
    found = []
    for item in value:
        address = _address(item, "config.to", "Recipient")
        if address not in found:
            found.append(address)
    return found


def _port(value, default: int) -> int:
    if value is None or value == "":
        return default
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        validate.fail("config.port", "Port must be a whole number from 1 to 65535.")
    return value


def _secret_text(value, field: str, label: str, *, required: bool, minimum: int = 1):
    if value is None or value == "":
        if required:
            validate.fail(field, f"{label} is required.")
        return None
    if not isinstance(value, str):
        validate.fail(field, f"{label} must be a string.")
    if len(value) > 1024:
        validate.fail(field, f"{label} must be at most 1024 characters.")
    if len(value) < minimum:
        validate.fail(field, f"{label} must be at least {minimum} characters.")
    if re.search(r"[\x00-\x1f\x7f]", value):
        validate.fail(field, f"{label} must not contain control characters.")
    return value


def _check_config(kind: str, clear: dict, secrets: dict, errors: validate.FieldErrors):
    """Validate one kind's settings; returns (clear config, secrets) as stored."""
    config: dict = {}
    kept: dict = {}
    if kind == "webhook":
        url = errors.check(_http_url, secrets.get("url"), "config.url", "URL", required=True)
        secret = errors.check(
            _secret_text,
            secrets.get("secret"),
            "config.secret",
            "Signing secret",
            required=True,
            minimum=WEBHOOK_SECRET_MIN,
        )
        kept = {"url": url, "secret": secret}
        config = {"url": channels_send.redacted_url(url) if url else None}
    elif kind == "email":
        security = clear.get("security") or "starttls"
        if security not in SECURITIES:
            errors.add("config.security", f"Security must be one of {', '.join(SECURITIES)}.")
            security = "starttls"
        host = errors.check(validate.hostname, clear.get("host"), "config.host", required=True)
        username = errors.check(
            validate.text,
            clear.get("username"),
            "config.username",
            "User name",
            required=False,
            max_length=255,
        )
        password = errors.check(
            _secret_text, secrets.get("password"), "config.password", "Password", required=False
        )
        if username and not password and not errors.has("config.password"):
            errors.add("config.password", "Give the password for the user name.")
        if password and not username and not errors.has("config.username"):
            errors.add("config.username", "Give the user name the password belongs to.")
        config = {
            "host": host,
            "port": errors.check(_port, clear.get("port"), DEFAULT_PORTS[security]),
            "security": security,
            "username": username,
            "from": errors.check(_address, clear.get("from"), "config.from", "Sender"),
            "to": errors.check(_recipients, clear.get("to")),
        }
        kept = {"password": password}
    elif kind == "ntfy":
        url = errors.check(
            _http_url,
            clear.get("url") or DEFAULT_NTFY_URL,
            "config.url",
            "Server URL",
            required=True,
            userinfo=False,
        )
        if url and urlsplit(url).path.strip("/"):
            errors.add("config.url", "Server URL is the server alone; put the topic in topic.")
        topic = errors.check(
            validate.text, clear.get("topic"), "config.topic", "Topic", required=True, max_length=64
        )
        if topic and not _NTFY_TOPIC.match(topic):
            errors.add(
                "config.topic", "Topic may contain letters, digits, - and _ (up to 64 characters)."
            )
        token = errors.check(
            _secret_text, secrets.get("token"), "config.token", "Access token", required=False
        )
        config = {"url": url.rstrip("/") if url else None, "topic": topic}
        kept = {"token": token}
    elif kind == "apprise":
        url = errors.check(
            validate.text,
            secrets.get("url"),
            "config.url",
            "Apprise URL",
            required=True,
            max_length=URL_LENGTH,
        )
        if url and not channels_send.apprise_accepts(url):
            errors.add(
                "config.url",
                "Apprise does not recognise this URL (see the Apprise wiki for each service's "
                "URL form, e.g. tgram://123456789:bot_token/chat_id).",
            )
        config = {"url": channels_send.redacted_url(url) if url else None}
        kept = {"url": url}
    return config, {name: value for name, value in kept.items() if value}


def _values(box: SecretBox, values, channel: Optional[NotificationChannel]) -> dict:
    """The checked fields of a create (``channel`` None) or an update (only what is given;
    the config merged with the stored one, secrets left out or "" kept)."""
    errors = validate.FieldErrors()
    if not isinstance(values, dict):
        raise ValidationFailed("Send a JSON object.", fields={"": ["Send a JSON object."]})
    for key in values:
        if key not in TOP_FIELDS:
            errors.add(str(key)[:64], f"A channel has no field {validate.echo(key)}.")
    checked: dict = {}
    if channel is None or "name" in values:
        checked["name"] = errors.check(
            validate.text, values.get("name"), "name", "Name", required=True, max_length=64
        )
    kind = channel.kind if channel is not None else values.get("kind")
    if channel is None:
        if kind not in KINDS:
            errors.add("kind", f"Kind must be one of {', '.join(KINDS)}.")
            kind = None
    elif "kind" in values and values["kind"] != channel.kind:
        errors.add("kind", f"A channel's kind cannot change (this one is {channel.kind}).")
    for name, check in (
        ("min_severity", _severity),
        ("tags", _tags),
        ("remind_every_hours", _remind),
    ):
        if name in values:
            checked[name] = errors.check(check, values[name])
    if "enabled" in values:
        checked["enabled"] = errors.check(_bool, values["enabled"], "enabled", "Enabled")
    given = values.get("config", {} if channel is not None else None)
    if given is None and channel is None:
        given = {}
    if not isinstance(given, dict):
        errors.add("config", "config must be an object.")
        given = {}
    if kind is not None and (channel is None or "config" in values):
        allowed = set(SECRET_FIELDS[kind]) | set(CLEAR_FIELDS[kind])
        unknown = [str(key)[:64] for key in given if key not in allowed]
        for key in unknown:
            errors.add(
                f"config.{key}",
                f"A {kind} channel has no setting {validate.echo(key)} "
                f"(settings: {', '.join(sorted(allowed))}).",
            )
        clear, secrets = {}, {}
        if channel is not None:
            clear = {key: (channel.config or {}).get(key) for key in CLEAR_FIELDS[kind]}
            secrets = open_secrets(box, channel)
        for key, value in given.items():
            if key in SECRET_FIELDS[kind]:
                if value is None and key in OPTIONAL_SECRETS.get(kind, ()):
                    secrets.pop(key, None)  # null removes an optional secret
                elif value is not None and value != "":
                    secrets[key] = value
            elif key in CLEAR_FIELDS[kind]:
                clear[key] = value
        config, sealed = _check_config(kind, clear, secrets, errors)
        config["secrets_set"] = sorted(sealed)
        checked["config"] = config
        checked["secrets"] = sealed
    errors.raise_any()
    return checked


def _name_free(name: str, channel_id: Optional[int]) -> None:
    query = select(NotificationChannel.id).where(NotificationChannel.name == name)
    other = db.session.scalar(query)
    if other is not None and other != channel_id:
        raise Conflict(f"There is already a channel named {name}.", code="name_taken")


def _seal(box: SecretBox, channel: NotificationChannel, secrets: dict) -> None:
    channel.sealed_secrets = box.seal(
        json.dumps(secrets, sort_keys=True), table=TABLE, column=COLUMN, row_id=channel.id
    )


def _audit_payload(channel: NotificationChannel) -> dict:
    view = channel_view(channel)
    return {
        "name": view["name"],
        "kind": view["kind"],
        "enabled": view["enabled"],
        "min_severity": view["min_severity"],
        "tags": view["tags"],
        "remind_every_hours": view["remind_every_hours"],
        "config": view["config"],
        "sealed_fields": view["secrets_set"],
    }


# --- changing --------------------------------------------------------------------------------


def create_channel(
    box: SecretBox,
    values: dict,
    *,
    actor: Actor,
    now: datetime,
    client_address: Optional[str] = None,
) -> NotificationChannel:
    """A new channel (see the module docstring and docs/alerts.md for each kind's config)."""
    checked = _values(box, values, None)
    _name_free(checked["name"], None)
    channel = NotificationChannel(
        name=checked["name"],
        kind=values["kind"],
        enabled=checked.get("enabled", True),
        min_severity=checked.get("min_severity", "warning"),
        tags=checked.get("tags", []),
        config=checked["config"],
        remind_every_hours=checked.get("remind_every_hours", 24),
        created_at=now,
        updated_at=now,
    )
    try:
        with db.session.begin_nested():  # another admin may take the name meanwhile
            db.session.add(channel)
            db.session.flush()  # the id binds the sealed secrets to this row
    except IntegrityError:
        raise Conflict(
            f"There is already a channel named {channel.name}.", code="name_taken"
        ) from None
    _seal(box, channel, checked["secrets"])
    db.session.flush()
    audit.record(
        actor,
        "channel.created",
        target_type="channel",
        target_id=channel.id,
        payload=_audit_payload(channel),
        client_address=client_address,
    )
    return channel


def update_channel(
    box: SecretBox,
    channel: NotificationChannel,
    values: dict,
    *,
    actor: Actor,
    now: datetime,
    client_address: Optional[str] = None,
) -> NotificationChannel:
    """Change what ``values`` gives; a secret setting left out or "" keeps its value, and
    ``null`` removes an optional one (the e-mail password, the ntfy token)."""
    checked = _values(box, values, channel)
    if "name" in checked:
        _name_free(checked["name"], channel.id)
        channel.name = checked["name"]
    for name in ("enabled", "min_severity", "tags", "remind_every_hours", "config"):
        if name in checked:
            setattr(channel, name, checked[name])
    if "secrets" in checked:
        _seal(box, channel, checked["secrets"])
    channel.updated_at = now
    db.session.flush()
    audit.record(
        actor,
        "channel.updated",
        target_type="channel",
        target_id=channel.id,
        payload={"changed": sorted(values), **_audit_payload(channel)},
        client_address=client_address,
    )
    return channel


def delete_channel(
    channel: NotificationChannel,
    *,
    actor: Actor,
    now: datetime,
    client_address: Optional[str] = None,
) -> None:
    """Remove a channel; its delivery log and pending notifications go with it."""
    audit.record(
        actor,
        "channel.deleted",
        target_type="channel",
        target_id=channel.id,
        payload={"name": channel.name, "kind": channel.kind},
        client_address=client_address,
    )
    db.session.delete(channel)
    db.session.flush()


# --- the message -----------------------------------------------------------------------------


def render(alert: Alert, hostname: str, event: str, idempotency_key: str, base_url: str) -> Message:
    """What a notification about ``alert`` says, in every channel's form."""
    rule = RULES.get(alert.rule)
    label = rule.label if rule else alert.rule
    url = f"{base_url.rstrip('/')}/alerts/{alert.id}" if base_url else None
    state = alert.state
    if event == "resolved":
        head = "RESOLVED"
    elif event == "reminder":
        head = f"REMINDER {alert.severity.upper()}"
    else:
        head = alert.severity.upper()
    title = f"[restic-manager] {head} {alert.rule} on {hostname}: {label}"
    lines = [
        alert.message,
        "",
        f"Rule:     {label} ({alert.rule})",
        f"Severity: {alert.severity}",
        f"Host:     {hostname}",
    ]
    if alert.subject:
        lines.append(f"Subject:  {alert.subject}")
    lines += [
        f"Event:    {event}",
        f"State:    {state}",
        f"Fired:    {iso(alert.fired_at)}",
    ]
    if alert.resolved_at:
        lines.append(f"Resolved: {iso(alert.resolved_at)} by {alert.resolved_by}")
    if url:
        lines += ["", url]
    payload = {
        "alert": {
            "id": alert.id,
            "rule": alert.rule,
            "severity": alert.severity,
            "state": state,
            "host": {"id": alert.host_id, "hostname": hostname},
            "subject": alert.subject,
            "message": alert.message,
            "url": url,
            "fired_at": iso(alert.fired_at),
            "resolved_at": iso(alert.resolved_at),
        },
        "event": event,
    }
    return Message(
        event=event,
        severity=alert.severity,
        title=title,
        text="\n".join(lines) + "\n",
        payload=payload,
        idempotency_key=idempotency_key,
        url=url,
    )


def render_test(channel: NotificationChannel, now: datetime, base_url: str) -> Message:
    key = uuid.uuid4().hex
    url = f"{base_url.rstrip('/')}/settings/notifications" if base_url else None
    text = (
        f"This is a test notification from restic-manager through the channel {channel.name} "
        f"({channel.kind}). If you read this, the channel works.\n" + (f"\n{url}\n" if url else "")
    )
    payload = {
        "alert": {
            "id": None,
            "rule": "test",
            "severity": "info",
            "state": "firing",
            "host": {"id": None, "hostname": None},
            "subject": "",
            "message": text.strip(),
            "url": url,
            "fired_at": iso(now),
            "resolved_at": None,
        },
        "event": "test",
    }
    return Message(
        event="test",
        severity="info",
        title=f"[restic-manager] Test notification ({channel.name})",
        text=text,
        payload=payload,
        idempotency_key=key,
        url=url,
    )


# --- sending ---------------------------------------------------------------------------------


def send_test(
    box: SecretBox,
    channel: NotificationChannel,
    *,
    now: datetime,
    base_url: str = "",
    actor: Optional[Actor] = None,
    client_address: Optional[str] = None,
) -> SendResult:
    """Send a real test notification now and return what happened (also when disabled)."""
    try:
        secrets = open_secrets(box, channel)
    except (SecretOpenError, ValueError):
        result = SendResult(False, "The channel's secrets cannot be opened; save them again.")
    else:
        result = channels_send.send(
            channel.kind, channel.config or {}, secrets, render_test(channel, now, base_url)
        )
    audit.record(
        actor or Actor.system(),
        "channel.tested",
        target_type="channel",
        target_id=channel.id,
        payload={"name": channel.name, "ok": result.ok, "detail": result.detail},
        client_address=client_address,
    )
    return result


@dataclass
class _Outgoing:
    row_id: int
    channel_id: int
    kind: str
    config: dict
    secrets: dict
    message: Message


def _retry_delay(attempts: int) -> timedelta:
    return min(FIRST_RETRY * (2 ** max(attempts - 1, 0)), MAX_RETRY)


def _due_rows(now: datetime, limit: int) -> list[Notification]:
    query = (
        select(Notification)
        .where(Notification.state == "pending", Notification.next_attempt_at <= now)
        .order_by(Notification.next_attempt_at, Notification.id)
        .limit(max(1, min(limit, 1000)))
    )
    if db.engine.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    return list(db.session.scalars(query))


def _finish(row: Notification, now: datetime, detail: str) -> None:
    row.state = "failed"
    row.last_result = channels_send.scrub(detail, [])
    db.session.flush()


def deliver_due(
    box: SecretBox,
    now: datetime,
    *,
    base_url: str = "",
    limit: int = 100,
    after_each: Optional[Callable[[], None]] = None,
) -> int:
    """Send the outbox rows that are due; returns how many were attempted.

    Flushes, never commits: ``after_each`` is called after each row is recorded (the ticker
    commits there, so a crash repeats at most the sends in flight). Channels are served in
    parallel, each channel's rows in order; a channel whose send fails is not tried again in
    this pass, so one unreachable channel costs one timeout per pass and blocks no other.
    """
    after_each = after_each or (lambda: None)
    rows = _due_rows(now, limit)
    if not rows:
        return 0
    channels = {
        channel.id: channel
        for channel in db.session.scalars(
            select(NotificationChannel).where(
                NotificationChannel.id.in_({row.channel_id for row in rows})
            )
        )
    }
    alerts = {
        alert.id: alert
        for alert in db.session.scalars(
            select(Alert).where(Alert.id.in_({row.alert_id for row in rows}))
        )
    }
    hostnames = dict(
        db.session.execute(
            select(Host.id, Host.hostname).where(
                Host.id.in_({alert.host_id for alert in alerts.values()})
            )
        ).all()
    )
    by_row = {row.id: row for row in rows}
    queues: dict[int, list[_Outgoing]] = {}
    opened: dict[int, Optional[dict]] = {}
    for row in rows:
        channel = channels.get(row.channel_id)
        alert = alerts.get(row.alert_id)
        if channel is None or alert is None:  # deleted meanwhile (the cascade got there first)
            continue
        if not channel.enabled:
            _finish(row, now, f"Not sent: the channel {channel.name} was disabled.")
            row.last_attempt_at = now
            after_each()
            continue
        if now - row.created_at > GIVE_UP_AFTER:
            _finish(
                row,
                now,
                f"Gave up: not delivered within 24 hours ({row.attempts} attempts). "
                f"Last error: {row.last_result or 'none'}",
            )
            after_each()
            continue
        if channel.id not in opened:
            try:
                opened[channel.id] = open_secrets(box, channel)
            except (SecretOpenError, ValueError):
                opened[channel.id] = None
        if opened[channel.id] is None:
            _record(row, now, SendResult(False, "The channel's secrets cannot be opened."))
            after_each()
            continue
        message = render(
            alert, hostnames.get(alert.host_id, "?"), row.event, row.idempotency_key, base_url
        )
        queues.setdefault(channel.id, []).append(
            _Outgoing(
                row.id,
                channel.id,
                channel.kind,
                dict(channel.config or {}),
                opened[channel.id],
                message,
            )
        )
    attempted = 0
    if not queues:
        return attempted
    with ThreadPoolExecutor(max_workers=min(len(queues), MAX_PARALLEL_CHANNELS)) as pool:
        futures = [pool.submit(_send_queue, queue) for queue in queues.values()]
        for future in futures:
            for row_id, result in future.result():
                try:
                    _record(by_row[row_id], now, result)
                except ObjectDeletedError:  # its channel or alert was deleted while sending
                    continue
                attempted += 1
                after_each()
    return attempted


def _send_queue(queue: list[_Outgoing]) -> list[tuple[int, SendResult]]:
    """One channel's rows in order, stopping at the first failure (the rest wait their turn)."""
    done = []
    for outgoing in queue:
        result = channels_send.send(
            outgoing.kind, outgoing.config, outgoing.secrets, outgoing.message
        )
        done.append((outgoing.row_id, result))
        if not result.ok:
            break
    return done


def _record(row: Notification, now: datetime, result: SendResult) -> None:
    row.attempts += 1
    row.last_attempt_at = now
    row.last_result = result.detail
    if result.ok:
        row.state = "sent"
        row.sent_at = now
        return
    retry_at = now + _retry_delay(row.attempts)
    if retry_at - row.created_at > GIVE_UP_AFTER:
        row.state = "failed"
        row.last_result = channels_send.scrub(
            f"Gave up after {row.attempts} attempts over 24 hours: {result.detail}", []
        )
    else:
        row.next_attempt_at = retry_at
    db.session.flush()
