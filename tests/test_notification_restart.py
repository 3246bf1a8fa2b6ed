"""A restart loses no notification and sends none twice: outbox rows written by one app
are delivered by a fresh app on the same database (through the ticker's sender loop),
each exactly once, and a crash between sending and recording repeats the send with the
same idempotency key, so the receiver can tell."""

from __future__ import annotations

import threading
import time

from sqlalchemy import select

from app import ticker
from app.extensions import db
from app.models import Notification
from app.models.types import utcnow
from app.services import alerts, notifications
from app.services.audit import Actor
from tests.factories import make_host
from tests.receivers import HTTPReceiver, SMTPReceiver

ADMIN = Actor("user", 1, "admin")
SECRET = "restart-secret-0123456789"


def wait_for(condition, seconds=20.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def write_outbox(app, receiver, smtp) -> list[str]:
    """The first life of the server: two channels, three alerts, six pending rows."""
    box = app.extensions["secretbox"]
    with app.app_context():
        now = utcnow()
        notifications.create_channel(
            box,
            {"name": "hook", "kind": "webhook", "config": {"url": receiver.url, "secret": SECRET}},
            actor=ADMIN,
            now=now,
        )
        notifications.create_channel(
            box,
            {
                "name": "mail",
                "kind": "email",
                "config": {
                    "host": "127.0.0.1",
                    "port": smtp.port,
                    "security": "none",
                    "from": "rm@example.com",
                    "to": ["ops@example.com"],
                },
            },
            actor=ADMIN,
            now=now,
        )
        db.session.commit()
        host = make_host("web1")
        context = alerts.Context(now, host_ids=[host.id])
        for group in ("default", "home", "srv"):
            alerts.fire(context, host, "backup_failed", group, f"Backup of {group} failed: boom")
        db.session.commit()
        keys = list(db.session.scalars(select(Notification.idempotency_key)))
        db.session.remove()
        db.engine.dispose()
    return keys


def test_pending_rows_are_delivered_once_after_a_restart(app_factory):
    receiver, smtp = HTTPReceiver(), SMTPReceiver()
    try:
        keys = write_outbox(app_factory(), receiver, smtp)
        assert len(keys) == 6 and receiver.requests == [] and smtp.messages == []

        restarted = app_factory()  # a new process on the same database
        stop = threading.Event()
        loop = threading.Thread(
            target=ticker.run,
            args=(restarted, stop),
            kwargs={"interval": 3600, "notify_interval": 0.05},
            daemon=True,
        )
        loop.start()
        try:
            assert wait_for(lambda: len(receiver.requests) >= 3 and len(smtp.messages) >= 3)
            time.sleep(0.3)  # a few more sender passes: nothing more may go out
        finally:
            stop.set()
            loop.join(10)

        mailed = [mail["message"]["X-RM-Delivery"] for mail in smtp.messages]
        assert sorted(receiver.keys() + mailed) == sorted(keys)  # each key exactly once
        with restarted.app_context():
            rows = list(db.session.scalars(select(Notification)))
            assert {(row.state, row.attempts) for row in rows} == {("sent", 1)}
            box = restarted.extensions["secretbox"]
            assert notifications.deliver_due(box, utcnow()) == 0
        assert len(receiver.requests) == 3 and len(smtp.messages) == 3
    finally:
        receiver.stop()
        smtp.stop()


def test_a_crash_between_send_and_record_resends_with_the_same_key(app):
    receiver = HTTPReceiver()
    try:
        box = app.extensions["secretbox"]
        notifications.create_channel(
            box,
            {"name": "hook", "kind": "webhook", "config": {"url": receiver.url, "secret": SECRET}},
            actor=ADMIN,
            now=utcnow(),
        )
        host = make_host("web1")
        now = utcnow()
        alerts.fire(alerts.Context(now, host_ids=[host.id]), host, "backup_failed", "x", "boom")
        db.session.commit()
        [key] = db.session.scalars(select(Notification.idempotency_key))

        assert notifications.deliver_due(box, now) == 1
        db.session.rollback()  # the process died before its commit
        assert notifications.deliver_due(box, now) == 1
        db.session.commit()

        assert receiver.keys() == [key, key]  # at least once, recognisable by the key
        assert notifications.deliver_due(box, now) == 0
    finally:
        receiver.stop()


def test_the_sender_loop_outlives_its_errors_and_keeps_its_own_cadence(app, caplog):
    ticks, deliveries = [], []
    enough = threading.Event()

    def tick(box, now, **kwargs):
        ticks.append(now)

    def deliver(box, now, *, base_url):
        deliveries.append(base_url)
        if len(deliveries) == 1:
            raise RuntimeError("the database went away")
        if len(deliveries) >= 4:
            enough.set()
        return 0

    app.config["RM_BASE_URL"] = "https://rm.example.com"
    stop = threading.Event()
    loop = threading.Thread(
        target=ticker.run,
        args=(app, stop),
        kwargs={
            "interval": 3600,
            "notify_interval": 0.01,
            "tick_function": tick,
            "deliver_function": deliver,
        },
        daemon=True,
    )
    loop.start()
    try:
        assert enough.wait(20)
    finally:
        stop.set()
        loop.join(10)
    assert len(ticks) == 1  # the tick keeps its own (hourly) cadence
    assert set(deliveries) == {"https://rm.example.com"}
    assert "sending notifications failed" in caplog.text
