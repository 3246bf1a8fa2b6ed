"""Notification channels: each kind's settings, validation (every bad input a precise 422
and the database unchanged), sealed secrets kept on update, the view and audit without a
secret, and delete taking the channel's outbox with it."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from app.extensions import db
from app.models import AuditLog, Notification, NotificationChannel
from app.models.types import utcnow
from app.services import alerts, notifications
from app.services.audit import Actor
from app.services.errors import Conflict, NotFound, ValidationFailed
from tests.factories import make_host

ADMIN = Actor("user", 1, "admin")
HOOK_SECRET = "hmac-key-0123456789abcdef"
HOOK_URL = "https://hooks.example.com/services/T0KEN-in-path?sig=querysecret"
SMTP_PASSWORD = "smtp-pass-SECRET-42"
NTFY_TOKEN = "tk_ntfy_SECRET_token"
APPRISE_URL = "tgram://123456789:AAbbCCddEEffGGhhIIjjKKllMMnnOOppQQ/987654321"

CONFIGS = {
    "webhook": {"url": HOOK_URL, "secret": HOOK_SECRET},
    "email": {
        "host": "smtp.example.com",
        "port": 587,
        "security": "starttls",
        "username": "rm",
        "password": SMTP_PASSWORD,
        "from": "rm@example.com",
        "to": ["ops@example.com"],
    },
    "ntfy": {"url": "https://ntfy.example.com", "topic": "backups", "token": NTFY_TOKEN},
    "apprise": {"url": APPRISE_URL},
}
SECRETS = [HOOK_SECRET, "T0KEN-in-path", "querysecret", SMTP_PASSWORD, NTFY_TOKEN, "AAbbCC"]


@pytest.fixture
def box(app):
    return app.extensions["secretbox"]


def create(box, name="ops", kind="webhook", config=None, **values):
    channel = notifications.create_channel(
        box,
        {"name": name, "kind": kind, "config": CONFIGS[kind] if config is None else config}
        | values,
        actor=ADMIN,
        now=utcnow(),
    )
    db.session.commit()
    return channel


def count() -> int:
    return db.session.scalar(select(func.count()).select_from(NotificationChannel))


@pytest.mark.parametrize("kind", notifications.KINDS)
def test_each_kind_is_created_and_its_secrets_are_sealed(app, box, kind):
    channel = create(box, kind=kind, tags=["prod"], min_severity="critical")
    view = notifications.channel_view(channel)
    assert view["kind"] == kind and view["tags"] == ["prod"] and view["min_severity"] == "critical"
    assert view["enabled"] is True and view["remind_every_hours"] == 24
    assert set(view) == {
        "id",
        "name",
        "kind",
        "enabled",
        "min_severity",
        "tags",
        "remind_every_hours",
        "config",
        "secrets_set",
        "created_at",
        "updated_at",
    }
    expected = {
        "webhook": (["secret", "url"], {"url": "https://hooks.example.com/…"}),
        "email": (
            ["password"],
            {
                "host": "smtp.example.com",
                "port": 587,
                "security": "starttls",
                "username": "rm",
                "from": "rm@example.com",
                "to": ["ops@example.com"],
            },
        ),
        "ntfy": (["token"], {"url": "https://ntfy.example.com", "topic": "backups"}),
        "apprise": (["url"], {"url": "tgram://…"}),
    }[kind]
    assert (view["secrets_set"], view["config"]) == expected
    opened = notifications.open_secrets(box, channel)
    assert set(opened) == set(expected[0])
    stored = json.dumps([channel.config, channel.tags]) + repr(channel.sealed_secrets)
    audit = json.dumps([entry.payload for entry in db.session.scalars(select(AuditLog))])
    for secret in SECRETS:
        assert secret not in json.dumps(view) and secret not in audit and secret not in stored


def test_defaults(app, box):
    channel = create(box, kind="ntfy", config={"topic": "backups"})
    view = notifications.channel_view(channel)
    assert view["config"] == {"url": "https://ntfy.sh", "topic": "backups"}
    assert view["secrets_set"] == [] and view["min_severity"] == "warning"
    mail = create(
        box,
        name="mail",
        kind="email",
        config={"host": "mail.example.com", "from": "a@example.com", "to": "b@example.com"},
    )
    assert notifications.channel_view(mail)["config"] == {
        "host": "mail.example.com",
        "port": 587,
        "security": "starttls",
        "username": None,
        "from": "a@example.com",
        "to": ["b@example.com"],
    }


@pytest.mark.parametrize(
    ("values", "field", "words"),
    [
        ({"kind": "webhook", "config": CONFIGS["webhook"]}, "name", "Name is required"),
        ({"name": "x" * 65, "kind": "webhook", "config": CONFIGS["webhook"]}, "name", "at most 64"),
        ({"name": "a\x00b", "kind": "webhook", "config": CONFIGS["webhook"]}, "name", "control"),
        ({"name": 7, "kind": "webhook", "config": CONFIGS["webhook"]}, "name", "must be a string"),
        ({"name": "x", "kind": "pager", "config": {}}, "kind", "Kind must be one of"),
        ({"name": "x", "kind": "webhook", "config": []}, "config", "must be an object"),
        ({"name": "x", "kind": "webhook", "color": "red"}, "color", "no field color"),
        (
            {"name": "x", "kind": "webhook", "config": {**CONFIGS["webhook"], "verify": False}},
            "config.verify",
            "no setting verify",
        ),
        (
            {"name": "x", "kind": "webhook", "config": {"url": HOOK_URL, "secret": "short"}},
            "config.secret",
            "at least 16 characters",
        ),
        (
            {"name": "x", "kind": "webhook", "config": {"url": HOOK_URL}},
            "config.secret",
            "Signing secret is required",
        ),
        (
            {"name": "x", "kind": "webhook", "config": {"url": "ftp://h/", "secret": "s" * 16}},
            "config.url",
            "http:// or https://",
        ),
        (
            {
                "name": "x",
                "kind": "webhook",
                "config": {"url": "http://h:99999/", "secret": "s" * 16},
            },
            "config.url",
            "not a valid URL",
        ),
        (
            {"name": "x", "kind": "apprise", "config": {"url": "nosuchservice://token"}},
            "config.url",
            "Apprise does not recognise this URL",
        ),
        (
            {"name": "x", "kind": "email", "config": {**CONFIGS["email"], "port": 2**70}},
            "config.port",
            "1 to 65535",
        ),
        (
            {"name": "x", "kind": "email", "config": {**CONFIGS["email"], "port": True}},
            "config.port",
            "1 to 65535",
        ),
        (
            {"name": "x", "kind": "email", "config": {**CONFIGS["email"], "security": "ssl"}},
            "config.security",
            "none, starttls, tls",
        ),
        (
            {"name": "x", "kind": "email", "config": {**CONFIGS["email"], "to": []}},
            "config.to",
            "at least one recipient",
        ),
        (
            {"name": "x", "kind": "email", "config": {**CONFIGS["email"], "to": ["a@b.c"] * 21}},
            "config.to",
            "At most 20",
        ),
        (
            {
                "name": "x",
                "kind": "email",
                "config": {**CONFIGS["email"], "to": ["not-an-address"]},
            },
            "config.to",
            "is not an e-mail address",
        ),
        (
            {"name": "x", "kind": "email", "config": {**CONFIGS["email"], "from": "a@b\r\nBcc: x"}},
            "config.from",
            "control characters",
        ),
        (
            {"name": "x", "kind": "email", "config": {**CONFIGS["email"], "password": None}},
            "config.password",
            "Give the password",
        ),
        (
            {
                "name": "x",
                "kind": "ntfy",
                "config": {"url": "https://ntfy.sh/backups", "topic": "t"},
            },
            "config.url",
            "put the topic in topic",
        ),
        (
            {"name": "x", "kind": "ntfy", "config": {"topic": "has space"}},
            "config.topic",
            "Topic may contain",
        ),
        (
            {"name": "x", "kind": "ntfy", "config": {"topic": "t", "token": "a\x00b"}},
            "config.token",
            "control characters",
        ),
        (
            {"name": "x", "kind": "ntfy", "config": {"topic": "t"}, "min_severity": "fatal"},
            "min_severity",
            "Minimum severity",
        ),
        (
            {"name": "x", "kind": "ntfy", "config": {"topic": "t"}, "tags": ["bad tag"]},
            "tags",
            "may contain letters",
        ),
        (
            {"name": "x", "kind": "ntfy", "config": {"topic": "t"}, "enabled": "yes"},
            "enabled",
            "true or false",
        ),
        (
            {"name": "x", "kind": "ntfy", "config": {"topic": "t"}, "remind_every_hours": 721},
            "remind_every_hours",
            "between 0",
        ),
        (
            {"name": "x", "kind": "ntfy", "config": {"topic": "t"}, "remind_every_hours": 2**64},
            "remind_every_hours",
            "between 0",
        ),
    ],
)
def test_bad_input_is_refused_precisely_and_nothing_is_stored(app, box, values, field, words):
    with pytest.raises(ValidationFailed) as refused:
        notifications.create_channel(box, values, actor=ADMIN, now=utcnow())
    db.session.rollback()
    assert field in refused.value.fields, refused.value.fields
    assert any(words in message for message in refused.value.fields[field]), refused.value.fields
    assert count() == 0


def test_the_name_is_unique(app, box):
    create(box, "ops")
    with pytest.raises(Conflict) as taken:
        create(box, "ops", kind="ntfy", config={"topic": "t"})
    assert taken.value.code == "name_taken" and taken.value.status == 409


def test_update_keeps_secrets_left_out_or_empty_and_refuses_a_new_kind(app, box):
    hook = create(box)
    notifications.update_channel(
        box,
        hook,
        {"name": "ops-2", "config": {"secret": "", "url": "https://new.example.com/x"}},
        actor=ADMIN,
        now=utcnow(),
    )
    db.session.commit()
    assert notifications.open_secrets(box, hook) == {
        "secret": HOOK_SECRET,
        "url": "https://new.example.com/x",
    }
    assert notifications.channel_view(hook)["config"] == {"url": "https://new.example.com/…"}
    notifications.update_channel(box, hook, {"enabled": False}, actor=ADMIN, now=utcnow())
    assert notifications.open_secrets(box, hook)["secret"] == HOOK_SECRET
    with pytest.raises(ValidationFailed) as refused:
        notifications.update_channel(box, hook, {"kind": "email"}, actor=ADMIN, now=utcnow())
    assert "cannot change" in refused.value.fields["kind"][0]

    mail = create(box, "mail", "email")
    notifications.update_channel(box, mail, {"config": {"port": 2525}}, actor=ADMIN, now=utcnow())
    db.session.commit()
    view = notifications.channel_view(mail)
    assert view["config"]["port"] == 2525 and view["config"]["host"] == "smtp.example.com"
    assert notifications.open_secrets(box, mail) == {"password": SMTP_PASSWORD}
    audit = json.dumps([entry.payload for entry in db.session.scalars(select(AuditLog))])
    assert HOOK_SECRET not in audit and SMTP_PASSWORD not in audit


def test_a_refused_update_changes_nothing(app, box):
    hook = create(box)
    before = (notifications.channel_view(hook), bytes(hook.sealed_secrets))
    with pytest.raises(ValidationFailed):
        notifications.update_channel(
            box,
            hook,
            {"name": "renamed", "config": {"secret": "short"}},
            actor=ADMIN,
            now=utcnow(),
        )
    db.session.rollback()
    hook = notifications.get_channel(hook.id)
    assert (notifications.channel_view(hook), bytes(hook.sealed_secrets)) == before


def test_get_channel_not_found(app):
    for bad in (12345, "1", True, 2**70, None):
        with pytest.raises(NotFound) as missing:
            notifications.get_channel(bad)
        assert missing.value.message.endswith("does not exist.")
    with pytest.raises(NotFound, match=r"Channel 12345 does not exist\."):
        notifications.get_channel(12345)


def test_list_channels_by_name(app, box):
    create(box, "zulu", "ntfy", {"topic": "z"})
    create(box, "alpha", "ntfy", {"topic": "a"})
    assert [channel.name for channel in notifications.list_channels()] == ["alpha", "zulu"]


def test_delete_takes_the_outbox_with_it(app, box):
    hook = create(box)
    keep = create(box, "other", "ntfy", {"topic": "t"})
    host = make_host("web1")
    context = alerts.Context(utcnow(), host_ids=[host.id])
    alerts.fire(context, host, "backup_failed", "default", "Backup failed: boom")
    db.session.commit()
    assert db.session.scalar(select(func.count()).select_from(Notification)) == 2

    notifications.delete_channel(hook, actor=ADMIN, now=utcnow())
    db.session.commit()
    rows = list(db.session.scalars(select(Notification)))
    assert [row.channel_id for row in rows] == [keep.id]  # the database's cascade, on SQLite too
    entry = db.session.scalar(select(AuditLog).where(AuditLog.action == "channel.deleted"))
    assert entry.payload == {"name": "ops", "kind": "webhook"}
