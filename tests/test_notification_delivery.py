"""Delivery through real receivers on loopback: a webhook receiver that checks the HMAC
signature, aiosmtpd for e-mail (plain and STARTTLS), ntfy through Apprise, retries with
backoff, giving up after 24 h, one bad channel beside good ones, secrets kept out of logs."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import ssl
from datetime import timedelta

import pytest
from sqlalchemy import select

from app.extensions import db
from app.models import AuditLog, Notification
from app.models.types import utcnow
from app.services import alerts, notifications
from app.services.audit import Actor
from tests.factories import make_host
from tests.receivers import HTTPReceiver, SMTPReceiver, free_port, self_signed_certificate

SECRET = "whsec-0123456789abcdef"
ADMIN = Actor("user", 1, "admin")


@pytest.fixture
def box(app):
    return app.extensions["secretbox"]


@pytest.fixture
def receiver():
    receiver = HTTPReceiver()
    yield receiver
    receiver.stop()


@pytest.fixture
def smtp():
    server = SMTPReceiver()
    yield server
    server.stop()


def channel(box, name, kind, config, **values):
    made = notifications.create_channel(
        box, {"name": name, "kind": kind, "config": config, **values}, actor=ADMIN, now=utcnow()
    )
    db.session.commit()
    return made


def fire_backup_failed(host, now, group="default"):
    """A failed backup through the real engine: one alert, outbox rows per channel."""
    context = alerts.Context(now, host_ids=[host.id])
    alert = alerts.fire(
        context,
        host,
        "backup_failed",
        group,
        f"Backup of {group} on {host.hostname} failed: repository not found",
        details={},
    )
    db.session.commit()
    return alert


def outbox(alert=None):
    query = select(Notification).order_by(Notification.id)
    if alert is not None:
        query = query.where(Notification.alert_id == alert.id)
    return list(db.session.scalars(query))


def verify_signature(request, secret=SECRET):
    timestamp = request.headers["X-RM-Timestamp"]
    expected = hmac.new(
        secret.encode(), timestamp.encode() + b"." + request.body, hashlib.sha256
    ).hexdigest()
    assert request.headers["X-RM-Signature"] == f"sha256={expected}"
    assert request.headers["Content-Type"] == "application/json"


def test_webhook_arrives_signed_with_the_contract_body(app, box, receiver):
    hook = channel(box, "ops", "webhook", {"url": f"{receiver.url}/hook/t0ken", "secret": SECRET})
    host = make_host("web1")
    now = utcnow()
    alert = fire_backup_failed(host, now)
    [row] = outbox(alert)

    sent = notifications.deliver_due(box, now, base_url="https://rm.example.com")
    db.session.commit()

    assert sent == 1
    [request] = receiver.requests
    assert request.path == "/hook/t0ken"
    verify_signature(request)
    assert request.headers["X-RM-Delivery"] == row.idempotency_key
    body = request.json()
    assert body == {
        "event": "firing",
        "alert": {
            "id": alert.id,
            "rule": "backup_failed",
            "severity": "critical",
            "state": "firing",
            "host": {"id": host.id, "hostname": "web1"},
            "subject": "default",
            "message": "Backup of default on web1 failed: repository not found",
            "url": f"https://rm.example.com/alerts/{alert.id}",
            "fired_at": body["alert"]["fired_at"],
            "resolved_at": None,
        },
    }
    db.session.refresh(row)
    assert (row.state, row.attempts, row.last_result) == ("sent", 1, "HTTP 200 from the webhook.")
    assert row.sent_at is not None and row.channel_id == hook.id

    # the resolve notifies too, and nothing is sent twice
    context = alerts.Context(now, host_ids=[host.id])
    alerts.clear(context, host, "backup_failed", "default")
    db.session.commit()
    assert notifications.deliver_due(box, now + timedelta(seconds=5)) == 1
    db.session.commit()
    assert notifications.deliver_due(box, now + timedelta(seconds=10)) == 0
    assert [r.json()["event"] for r in receiver.requests] == ["firing", "resolved"]
    resolved = receiver.requests[1].json()["alert"]
    assert resolved["state"] == "resolved" and resolved["url"] is None  # no base URL: no link
    verify_signature(receiver.requests[1])


def test_webhook_500_is_retried_with_backoff_then_delivered(app, box):
    receiver = HTTPReceiver(statuses=[500, 500, 200], answer=b"boom: the receiver is down")
    try:
        channel(box, "ops", "webhook", {"url": receiver.url, "secret": SECRET})
        now = utcnow()
        alert = fire_backup_failed(make_host("web1"), now)
        [row] = outbox(alert)

        notifications.deliver_due(box, now)
        db.session.commit()
        db.session.refresh(row)
        assert row.state == "pending" and row.attempts == 1
        assert row.last_result == "HTTP 500 from the webhook: boom: the receiver is down"
        assert row.next_attempt_at == now + timedelta(minutes=1)

        assert notifications.deliver_due(box, now + timedelta(seconds=30)) == 0  # not due yet
        later = now + timedelta(minutes=1)
        notifications.deliver_due(box, later)
        db.session.commit()
        db.session.refresh(row)
        assert row.attempts == 2 and row.next_attempt_at == later + timedelta(minutes=2)

        last = later + timedelta(minutes=2)
        notifications.deliver_due(box, last)
        db.session.commit()
        db.session.refresh(row)
        assert (row.state, row.attempts, row.last_result) == (
            "sent",
            3,
            "HTTP 200 from the webhook.",
        )
        keys = receiver.keys()
        assert keys == [row.idempotency_key] * 3  # the same key on every attempt
    finally:
        receiver.stop()


def test_backoff_is_capped_at_an_hour_and_gives_up_after_24_hours(app, box):
    port = free_port()  # nobody listens here
    channel(box, "ops", "webhook", {"url": f"http://127.0.0.1:{port}/", "secret": SECRET})
    now = utcnow()
    alert = fire_backup_failed(make_host("web1"), now)
    [row] = outbox(alert)
    when = now
    delays = []
    while True:
        notifications.deliver_due(box, when)
        db.session.commit()
        db.session.refresh(row)
        if row.state != "pending":
            break
        delays.append(row.next_attempt_at - when)
        when = row.next_attempt_at
    assert delays[:7] == [timedelta(minutes=m) for m in (1, 2, 4, 8, 16, 32, 60)]
    assert max(delays) == timedelta(hours=1)
    assert row.state == "failed"
    assert row.last_result.startswith(f"Gave up after {row.attempts} attempts over 24 hours: ")
    assert f"Connection refused to 127.0.0.1:{port}." in row.last_result
    assert alerts.deliveries(alert)[0].state == "failed"  # the alert's delivery log shows it


def test_a_row_older_than_24_hours_fails_without_sending(app, box, receiver):
    channel(box, "ops", "webhook", {"url": receiver.url, "secret": SECRET})
    now = utcnow()
    alert = fire_backup_failed(make_host("web1"), now)
    notifications.deliver_due(box, now + timedelta(hours=24, seconds=1))
    db.session.commit()
    [row] = outbox(alert)
    assert row.state == "failed" and row.last_result.startswith("Gave up")
    assert receiver.requests == []


def test_email_arrives_with_subject_body_and_recipients(app, box, smtp):
    channel(
        box,
        "mail",
        "email",
        {
            "host": "127.0.0.1",
            "port": smtp.port,
            "security": "none",
            "from": "restic-manager@example.com",
            "to": ["ops@example.com", "oncall@example.com"],
        },
    )
    now = utcnow()
    alert = fire_backup_failed(make_host("web1"), now)
    [row] = outbox(alert)

    assert notifications.deliver_due(box, now, base_url="https://rm.example.com/") == 1
    db.session.commit()

    [mail] = smtp.messages
    assert mail["from"] == "restic-manager@example.com"
    assert mail["to"] == ["ops@example.com", "oncall@example.com"]
    message = mail["message"]
    assert message["Subject"] == "[restic-manager] CRITICAL backup_failed on web1: Backup failed"
    assert message["X-RM-Delivery"] == row.idempotency_key
    assert message["Message-ID"] == f"<{row.idempotency_key}@restic-manager>"
    body = message.get_content()
    assert "Backup of default on web1 failed: repository not found" in body
    assert "Severity: critical" in body and "Host:     web1" in body
    assert f"https://rm.example.com/alerts/{alert.id}" in body
    db.session.refresh(row)
    assert row.state == "sent"
    assert row.last_result == (
        f"Accepted by 127.0.0.1:{smtp.port} for ops@example.com, oncall@example.com."
    )


def test_email_over_starttls_with_a_trusted_certificate(app, box, tmp_path, monkeypatch):
    cert, key = self_signed_certificate(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the client trusts it like a system CA
    smtp = SMTPReceiver(tls_context=server_context)
    try:
        mail = channel(
            box,
            "mail",
            "email",
            {
                "host": "127.0.0.1",
                "port": smtp.port,
                "security": "starttls",
                "from": "rm@example.com",
                "to": ["ops@example.com"],
            },
        )
        result = notifications.send_test(box, mail, now=utcnow(), base_url="")
        assert result.ok, result.detail
        [received] = smtp.messages
        assert received["tls"] is True
        assert received["message"]["Subject"] == "[restic-manager] Test notification (mail)"

        monkeypatch.delenv("SSL_CERT_FILE")  # now the certificate is a stranger
        refused = notifications.send_test(box, mail, now=utcnow(), base_url="")
        assert not refused.ok
        assert refused.detail.startswith(f"TLS certificate of 127.0.0.1:{smtp.port} not trusted")
    finally:
        smtp.stop()


def test_email_over_implicit_tls(app, box, tmp_path, monkeypatch):
    cert, key = self_signed_certificate(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    smtp = SMTPReceiver(tls_context=server_context, implicit_tls=True)
    try:
        mail = channel(box, "mail", "email", mail_config(smtp.port, "tls"))
        result = notifications.send_test(box, mail, now=utcnow())
        assert result == notifications.SendResult(
            True, f"Accepted by 127.0.0.1:{smtp.port} for ops@example.com."
        )
        [received] = smtp.messages
        assert received["tls"] is True
    finally:
        smtp.stop()


def test_starttls_asked_of_a_server_without_it(app, box, smtp):
    mail = channel(box, "mail", "email", mail_config(smtp.port, "starttls"))
    result = notifications.send_test(box, mail, now=utcnow())
    assert result == notifications.SendResult(
        False,
        f"127.0.0.1:{smtp.port} cannot do what the settings ask: "
        "STARTTLS extension not supported by server.",
    )
    assert smtp.messages == []


def mail_config(port, security):
    return {
        "host": "127.0.0.1",
        "port": port,
        "security": security,
        "from": "rm@example.com",
        "to": ["ops@example.com"],
    }


def test_unreachable_smtp_server_is_a_clear_error(app, box):
    port = free_port()
    mail = channel(
        box,
        "mail",
        "email",
        {
            "host": "127.0.0.1",
            "port": port,
            "security": "none",
            "from": "rm@example.com",
            "to": ["ops@example.com"],
        },
    )
    result = notifications.send_test(box, mail, now=utcnow(), base_url="")
    db.session.commit()
    assert result == notifications.SendResult(False, f"Connection refused to 127.0.0.1:{port}.")
    entry = db.session.scalar(select(AuditLog).where(AuditLog.action == "channel.tested"))
    assert entry.payload["ok"] is False and entry.payload["detail"] == result.detail


def test_ntfy_through_apprise_reaches_the_server(app, box, receiver):
    channel(
        box,
        "phone",
        "ntfy",
        {"url": receiver.url, "topic": "backups", "token": "tk_ntfytoken123"},
    )
    now = utcnow()
    alert = fire_backup_failed(make_host("web1"), now)
    [row] = outbox(alert)
    notifications.deliver_due(box, now, base_url="https://rm.example.com")
    db.session.commit()

    [request] = receiver.requests
    assert request.path == "/"  # Apprise posts JSON to the server root, the topic inside
    assert request.headers["Authorization"] == "Bearer tk_ntfytoken123"
    body = request.json()
    assert body["topic"] == "backups"
    assert body["title"] == "[restic-manager] CRITICAL backup_failed on web1: Backup failed"
    assert "Backup of default on web1 failed: repository not found" in body["message"]
    assert f"https://rm.example.com/alerts/{alert.id}" in body["message"]
    assert request.headers.get("X-Priority") == "high"  # critical
    db.session.refresh(row)
    assert row.state == "sent"
    assert row.last_result == f"Accepted by {receiver.url} (topic backups)."


def test_ntfy_refusal_says_why(app, box):
    receiver = HTTPReceiver(statuses=[403], answer=b'{"code":40301,"error":"forbidden"}')
    try:
        phone = channel(box, "phone", "ntfy", {"url": receiver.url, "topic": "backups"})
        result = notifications.send_test(box, phone, now=utcnow())
        assert not result.ok
        assert result.detail.startswith(f"ntfy at {receiver.url}: Apprise could not deliver")
        assert "forbidden" in result.detail
    finally:
        receiver.stop()


def test_one_failing_channel_does_not_stop_the_others(app, box, receiver, smtp):
    dead = free_port()
    channel(box, "dead-hook", "webhook", {"url": f"http://127.0.0.1:{dead}/x", "secret": SECRET})
    channel(box, "hook", "webhook", {"url": receiver.url, "secret": SECRET})
    channel(
        box,
        "mail",
        "email",
        {
            "host": "127.0.0.1",
            "port": smtp.port,
            "security": "none",
            "from": "rm@example.com",
            "to": ["ops@example.com"],
        },
    )
    channel(box, "broken-apprise", "apprise", {"url": f"json://127.0.0.1:{dead}/"})
    now = utcnow()
    host = make_host("web1")
    first = fire_backup_failed(host, now, "default")
    second = fire_backup_failed(host, now, "home")

    assert notifications.deliver_due(box, now) == 6  # 2 alerts x (2 good + 2 bad: first only)
    db.session.commit()
    by_channel = {}
    for row in outbox():
        by_channel.setdefault(row.channel_id, []).append((row.state, row.attempts))
    names = {c.id: c.name for c in notifications.list_channels()}
    by_name = {names[key]: value for key, value in by_channel.items()}
    assert by_name["hook"] == [("sent", 1), ("sent", 1)]
    assert by_name["mail"] == [("sent", 1), ("sent", 1)]
    # a failing channel is tried once per pass; its next row waits for the next pass
    assert by_name["dead-hook"] == [("pending", 1), ("pending", 0)]
    assert by_name["broken-apprise"] == [("pending", 1), ("pending", 0)]
    assert len(receiver.requests) == 2 and len(smtp.messages) == 2
    assert {first.id, second.id} == {r.json()["alert"]["id"] for r in receiver.requests}


def test_a_disabled_channel_fails_its_pending_rows_without_sending(app, box, receiver):
    hook = channel(box, "ops", "webhook", {"url": receiver.url, "secret": SECRET})
    now = utcnow()
    alert = fire_backup_failed(make_host("web1"), now)
    notifications.update_channel(box, hook, {"enabled": False}, actor=ADMIN, now=now)
    db.session.commit()
    notifications.deliver_due(box, now)
    db.session.commit()
    [row] = outbox(alert)
    assert row.state == "failed"
    assert row.last_result == "Not sent: the channel ops was disabled."
    assert receiver.requests == []


def test_send_test_webhook_reports_the_real_status(app, box, receiver):
    hook = channel(box, "ops", "webhook", {"url": receiver.url, "secret": SECRET})
    result = notifications.send_test(box, hook, now=utcnow(), base_url="https://rm.example.com")
    assert result == notifications.SendResult(True, "HTTP 200 from the webhook.")
    [request] = receiver.requests
    verify_signature(request)
    body = request.json()
    assert body["event"] == "test" and body["alert"]["rule"] == "test"
    assert outbox() == []  # a test is not an outbox row


def test_secrets_never_reach_logs_results_views_or_audit(app, box, caplog):
    caplog.set_level(logging.DEBUG)
    dead = free_port()
    url_token = "urltoken-SECRET-1234"
    apprise_password = "apprisepw-SECRET-5678"
    hook = channel(
        box,
        "hook",
        "webhook",
        {"url": f"http://127.0.0.1:{dead}/hooks/{url_token}?key={url_token}", "secret": SECRET},
    )
    target = channel(
        box,
        "apprise",
        "apprise",
        {"url": f"json://user:{apprise_password}@127.0.0.1:{dead}/{url_token}"},
    )
    phone = channel(
        box,
        "phone",
        "ntfy",
        {"url": f"http://127.0.0.1:{dead}", "topic": "t", "token": "tk_ntfy-SECRET-9"},
    )
    secrets = [url_token, apprise_password, SECRET, "tk_ntfy-SECRET-9"]
    results = [notifications.send_test(box, c, now=utcnow()) for c in (hook, target, phone)]
    now = utcnow()
    fire_backup_failed(make_host("web1"), now)
    notifications.deliver_due(box, now)
    db.session.commit()

    assert not any(result.ok for result in results)
    # what reaches the server's log: Apprise's own logger keeps its records (which repeat
    # service URLs) to itself; pytest's caplog listens to it too, so leave it out here
    assert logging.getLogger("apprise").propagate is False
    logged = "\n".join(
        record.getMessage() for record in caplog.records if not record.name.startswith("apprise")
    )
    assert "urllib3" not in {record.name.split(".")[0] for record in caplog.records} or all(
        record.levelno > logging.DEBUG
        for record in caplog.records
        if record.name.startswith("urllib3")
    )
    seen = [
        logged,
        json.dumps([result.detail for result in results]),
        json.dumps([row.last_result for row in outbox()]),
        json.dumps([notifications.channel_view(c) for c in (hook, target, phone)]),
        json.dumps([entry.payload for entry in db.session.scalars(select(AuditLog))]),
    ]
    for text in seen:
        for secret in secrets:
            assert secret not in text
    assert results[0].detail == f"Connection refused to 127.0.0.1:{dead}."
    assert "connection refused" in results[1].detail
    assert notifications.channel_view(target)["config"] == {"url": "json://…"}
    assert notifications.channel_view(hook)["config"] == {"url": f"http://127.0.0.1:{dead}/…"}
