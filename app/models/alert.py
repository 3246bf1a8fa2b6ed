"""Alerts, their silences and rule settings, notification channels and the delivery outbox."""

from __future__ import annotations

from datetime import datetime
from typing import Optional

from sqlalchemy import JSON, Float, ForeignKey, Index, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.extensions import db
from app.models.types import UTCDateTime, utcnow

SEVERITIES = ("info", "warning", "critical")
ALERT_STATES = ("firing", "acknowledged", "resolved")


class Alert(db.Model):
    """One condition on one host: ``rule`` about ``subject`` (a source group, a maintenance
    task, or "" for the host as a whole).

    ``open_key`` is ``"<rule>:<host_id>:<subject>"`` while the alert is open (firing or
    acknowledged) and NULL once resolved: the unique index keeps one open alert per
    (rule, host, subject), and a condition that returns after a resolve opens a new row,
    so the history stays.
    """

    __tablename__ = "alerts"
    __table_args__ = (
        Index("ix_alerts_state_fired_at", "state", "fired_at"),
        Index("ix_alerts_host_id_state", "host_id", "state"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    open_key: Mapped[Optional[str]] = mapped_column(String(400), unique=True)
    rule: Mapped[str] = mapped_column(String(32), index=True)
    host_id: Mapped[int] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"))
    subject: Mapped[str] = mapped_column(String(255), default="")
    severity: Mapped[str] = mapped_column(String(16))
    # firing -> acknowledged -> resolved (firing -> resolved too)
    state: Mapped[str] = mapped_column(String(16), default="firing")
    message: Mapped[str] = mapped_column(String(2000))
    details: Mapped[dict] = mapped_column(JSON, default=dict)
    job_id: Mapped[Optional[int]] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    occurrences: Mapped[int] = mapped_column(default=1)
    fired_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_fired_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    acknowledged_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime)
    acknowledged_by: Mapped[Optional[str]] = mapped_column(String(255))
    ack_note: Mapped[Optional[str]] = mapped_column(String(1000))
    resolved_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime)
    # "automatic" (the condition cleared) or the label of the user who resolved it
    resolved_by: Mapped[Optional[str]] = mapped_column(String(255))
    resolve_note: Mapped[Optional[str]] = mapped_column(String(1000))

    @property
    def is_open(self) -> bool:
        return self.state != "resolved"


class AlertRuleSetting(db.Model):
    """The fleet-wide setting of one built-in rule (a missing row means the defaults)."""

    __tablename__ = "alert_rules"

    rule: Mapped[str] = mapped_column(String(32), primary_key=True)
    enabled: Mapped[bool] = mapped_column(default=True)
    severity: Mapped[Optional[str]] = mapped_column(String(16))
    threshold_seconds: Mapped[Optional[int]] = mapped_column()
    factor: Mapped[Optional[float]] = mapped_column(Float)
    drop_percent: Mapped[Optional[float]] = mapped_column(Float)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AlertOverride(db.Model):
    """A host's (or one source group's) own setting of a rule; NULL fields inherit.

    ``max_age_seconds`` is the backup_overdue limit for groups without a schedule.
    """

    __tablename__ = "alert_overrides"
    __table_args__ = (UniqueConstraint("rule", "host_id", "source_group_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    rule: Mapped[str] = mapped_column(String(32))
    host_id: Mapped[int] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"), index=True)
    source_group_id: Mapped[Optional[int]] = mapped_column(
        ForeignKey("source_groups.id", ondelete="CASCADE")
    )
    enabled: Mapped[Optional[bool]] = mapped_column()
    threshold_seconds: Mapped[Optional[int]] = mapped_column()
    max_age_seconds: Mapped[Optional[int]] = mapped_column()
    factor: Mapped[Optional[float]] = mapped_column(Float)
    drop_percent: Mapped[Optional[float]] = mapped_column(Float)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Silence(db.Model):
    """Mute a host, a tag or a rule (or a combination: all given must match) until a time."""

    __tablename__ = "alert_silences"

    id: Mapped[int] = mapped_column(primary_key=True)
    host_id: Mapped[Optional[int]] = mapped_column(
        ForeignKey("hosts.id", ondelete="CASCADE"), index=True
    )
    tag: Mapped[Optional[str]] = mapped_column(String(64))
    rule: Mapped[Optional[str]] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(String(500))
    starts_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    ends_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    created_by: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class NotificationChannel(db.Model):
    """Where notifications go. ``config`` holds the clear settings; the secret ones (SMTP
    password, tokens, webhook secret, an Apprise URL) are sealed together as one JSON
    object (``notification_channels:secrets:<id>``) and never shown again."""

    __tablename__ = "notification_channels"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(16))  # webhook | email | ntfy | apprise
    enabled: Mapped[bool] = mapped_column(default=True)
    min_severity: Mapped[str] = mapped_column(String(16), default="warning")
    tags: Mapped[list] = mapped_column(JSON, default=list)  # empty: every host
    config: Mapped[dict] = mapped_column(JSON, default=dict)
    sealed_secrets: Mapped[Optional[bytes]] = mapped_column(LargeBinary)
    remind_every_hours: Mapped[int] = mapped_column(default=24)  # 0: no reminders
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Notification(db.Model):
    """The outbox and the delivery log in one: a row per (alert change, channel), written
    in the transaction that changed the alert, delivered by the leader with retries.

    ``idempotency_key`` goes out as ``X-RM-Delivery`` (and in e-mail headers), so a
    delivery repeated after a crash between sending and recording can be recognised.
    """

    __tablename__ = "notifications"
    __table_args__ = (Index("ix_notifications_state_next_attempt_at", "state", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(String(64), unique=True)
    alert_id: Mapped[int] = mapped_column(ForeignKey("alerts.id", ondelete="CASCADE"), index=True)
    channel_id: Mapped[int] = mapped_column(
        ForeignKey("notification_channels.id", ondelete="CASCADE"), index=True
    )
    event: Mapped[str] = mapped_column(String(16))  # firing | resolved | reminder
    # pending -> sent | failed (gave up after 24 h)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_attempt_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime)
    last_result: Mapped[Optional[str]] = mapped_column(String(1000))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime)
