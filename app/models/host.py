"""Backed-up machines, their agent tokens, enrollment tokens, credentials and source groups."""

from __future__ import annotations

from datetime import datetime
from typing import Optional

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ForeignKey,
    LargeBinary,
    String,
    UniqueConstraint,
    false,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.extensions import db
from app.models.types import UTCDateTime, utcnow


class Host(db.Model):
    __tablename__ = "hosts"

    id: Mapped[int] = mapped_column(primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255), unique=True)
    os: Mapped[Optional[str]] = mapped_column(String(64))
    arch: Mapped[Optional[str]] = mapped_column(String(32))
    agent_version: Mapped[Optional[str]] = mapped_column(String(32))
    restic_version: Mapped[Optional[str]] = mapped_column(String(32))
    protocol_version: Mapped[Optional[int]] = mapped_column()
    boot_id: Mapped[Optional[str]] = mapped_column(String(64))
    repo_status: Mapped[str] = mapped_column(String(32), default="unknown")
    repo_status_reason: Mapped[Optional[str]] = mapped_column(String(1000))
    tags: Mapped[list] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    enrolled_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime)
    last_seen_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime)
    # Projections kept current by the agent's reports (dashboard reads them without joins).
    snapshot_count: Mapped[int] = mapped_column(default=0, server_default="0")
    latest_snapshot_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime)
    repo_size_bytes: Mapped[Optional[int]] = mapped_column(BigInteger)
    # The latest backup's result, whatever it was (a cancel or a failure included) …
    last_backup_job_id: Mapped[Optional[int]] = mapped_column()
    last_backup_status: Mapped[Optional[str]] = mapped_column(String(16))
    last_backup_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime)
    # … and the latest one that saved a snapshot (succeeded, or warning: a snapshot exists).
    last_successful_backup_job_id: Mapped[Optional[int]] = mapped_column()
    last_successful_backup_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime)
    # Schedules: every change bumps schedule_version; the agent acks what it applied.
    schedule_version: Mapped[int] = mapped_column(default=0, server_default="0")
    agent_schedule_version: Mapped[Optional[int]] = mapped_column()
    schedule_changed_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime)
    # Host-wide bandwidth caps (KiB/s) passed to restic's --limit-upload/--limit-download.
    limit_upload_kib: Mapped[Optional[int]] = mapped_column()
    limit_download_kib: Mapped[Optional[int]] = mapped_column()
    # Default hooks for source groups without their own (sealed: host_hooks…).
    sealed_pre_hook: Mapped[Optional[bytes]] = mapped_column(LargeBinary)
    sealed_post_hook: Mapped[Optional[bytes]] = mapped_column(LargeBinary)
    # restic's last "repository is already locked" (a job that failed on it), until an
    # unlock or a later lock-taking job succeeds: the host page's stale-lock banner.
    lock_reported_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime)
    lock_detail: Mapped[Optional[str]] = mapped_column(String(500))
    lock_job_id: Mapped[Optional[int]] = mapped_column()

    source_groups: Mapped[list[SourceGroup]] = relationship(
        back_populates="host", cascade="all, delete-orphan", passive_deletes=True
    )

    def status(self, now: datetime, offline_after_seconds: int) -> str:
        if self.last_seen_at is None:
            return "never_seen"
        age = (now - self.last_seen_at).total_seconds()
        return "online" if age <= offline_after_seconds else "offline"


class AgentToken(db.Model):
    """The long-lived bearer token an enrolled agent authenticates with (hash only)."""

    __tablename__ = "agent_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    host_id: Mapped[int] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime)
    revoked_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime)

    host: Mapped[Host] = relationship()


class RetiredAgentToken(db.Model):
    """The token hash of a deleted host's agent: its calls get 410 Gone (and the agent
    stops) instead of 401. No foreign key: the host is gone."""

    __tablename__ = "retired_agent_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    host_id: Mapped[int] = mapped_column()
    hostname: Mapped[str] = mapped_column(String(255))
    retired_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class EnrollmentToken(db.Model):
    """A one-time token for adding a host; carries the sealed repository credentials."""

    __tablename__ = "enrollment_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    hostname: Mapped[Optional[str]] = mapped_column(String(255))
    repo_url_redacted: Mapped[str] = mapped_column(String(1000))
    paths: Mapped[list] = mapped_column(JSON, default=list)
    sealed_credentials: Mapped[Optional[bytes]] = mapped_column(LargeBinary)
    created_by_user_id: Mapped[Optional[int]] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime)
    used_by_host_id: Mapped[Optional[int]] = mapped_column(
        ForeignKey("hosts.id", ondelete="SET NULL")
    )
    revoked_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime)

    used_by_host: Mapped[Optional[Host]] = relationship()


class HostCredential(db.Model):
    """Repository credentials of a host, sealed (kind: everyday | admin).

    The URL may carry a password (``rest:https://user:secret@host/repo``), so the whole of
    it is sealed (``host_credentials:repo_url:<id>``); only its redacted form is in clear.
    """

    __tablename__ = "host_credentials"
    __table_args__ = (UniqueConstraint("host_id", "kind"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    host_id: Mapped[int] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16), default="everyday")
    repo_url_redacted: Mapped[str] = mapped_column(String(1000))
    sealed_repo_url: Mapped[bytes] = mapped_column(LargeBinary)
    username: Mapped[Optional[str]] = mapped_column(String(255))
    sealed_password: Mapped[bytes] = mapped_column(LargeBinary)
    # The backend's credentials (app/services/backends.py): values and files sealed as one
    # JSON (``host_credentials:backend:<id>``), their names and the options in clear.
    sealed_backend: Mapped[Optional[bytes]] = mapped_column(LargeBinary)
    env_names: Mapped[Optional[list]] = mapped_column(JSON)
    repo_options: Mapped[Optional[list]] = mapped_column(JSON)
    cacert_summary: Mapped[Optional[str]] = mapped_column(String(300))
    insecure_tls: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class SourceGroup(db.Model):
    """What to back up on a host; its name is also the snapshot tag."""

    __tablename__ = "source_groups"
    __table_args__ = (UniqueConstraint("host_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    host_id: Mapped[int] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    includes: Mapped[list] = mapped_column(JSON, default=list)
    excludes: Mapped[list] = mapped_column(JSON, default=list)
    # Retention applied by forget to this group's tag: {"keep_daily": 7, "keep_within": "30d"}
    retention: Mapped[dict] = mapped_column(JSON, default=dict, server_default=text("'{}'"))
    # A scheduled run that cannot reach the host is retried this often, backing off.
    retry_max: Mapped[int] = mapped_column(default=3, server_default="3")
    retry_backoff_seconds: Mapped[int] = mapped_column(default=300, server_default="300")
    # The latest backup of this group that saved a snapshot (backup_overdue reads it).
    last_successful_backup_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime)
    # Shell hooks around a backup (sealed: source_groups:pre_hook:<id>); None = host default.
    sealed_pre_hook: Mapped[Optional[bytes]] = mapped_column(LargeBinary)
    sealed_post_hook: Mapped[Optional[bytes]] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        UTCDateTime, default=utcnow, server_default=func.now()
    )

    host: Mapped[Host] = relationship(back_populates="source_groups")
