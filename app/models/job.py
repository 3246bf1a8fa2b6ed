"""Jobs run by agents, their log records, commands to agents and received agent events."""

from __future__ import annotations

from datetime import datetime
from typing import Optional

from sqlalchemy import JSON, ForeignKey, Index, LargeBinary, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from app.extensions import db
from app.models.types import UTCDateTime, utcnow

STATUSES = ("queued", "running", "succeeded", "warning", "failed", "cancelled", "lost")
TERMINAL_STATUSES = frozenset(STATUSES[2:])


class Job(db.Model):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_host_id_status", "host_id", "status"),
        # A host's (or a tag's hosts') jobs, newest first: GET /api/v1/jobs?host_id=.
        Index("ix_jobs_host_id_id", "host_id", "id"),
        # The dashboard's counts of the last days' jobs.
        Index("ix_jobs_created_at", "created_at"),
        # Housekeeping: finished jobs whose log is still kept, oldest first.
        Index("ix_jobs_log_purged_at_finished_at", "log_purged_at", "finished_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    host_id: Mapped[int] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32))
    # queued -> running -> succeeded | warning | failed | cancelled | lost
    status: Mapped[str] = mapped_column(String(16), default="queued")
    cancel_requested_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime)
    attempt_id: Mapped[str] = mapped_column(String(32))
    boot_id: Mapped[Optional[str]] = mapped_column(String(64))
    actor_type: Mapped[str] = mapped_column(String(16))
    actor_label: Mapped[str] = mapped_column(String(255))
    params: Mapped[dict] = mapped_column(JSON, default=dict)
    schedule_id: Mapped[Optional[int]] = mapped_column(
        ForeignKey("schedules.id", ondelete="SET NULL"), index=True
    )
    # Jobs the agent started on its own (a schedule fired): its id for the run, so that
    # registering it again (a retry after an outage) finds the same job.
    run_id: Mapped[Optional[str]] = mapped_column(String(64), unique=True)
    stats: Mapped[dict] = mapped_column(JSON, default=dict)
    progress: Mapped[dict] = mapped_column(JSON, default=dict)
    exit_code: Mapped[Optional[int]] = mapped_column()
    error: Mapped[Optional[str]] = mapped_column(String(2000))
    log_committed_seq: Mapped[int] = mapped_column(default=0)
    log_truncated: Mapped[bool] = mapped_column(default=False)
    lines_dropped: Mapped[int] = mapped_column(default=0)
    # When housekeeping removed the log (RM_JOB_LOG_RETENTION_DAYS); the job row stays.
    log_purged_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime)
    finished_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime)

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


class JobLog(db.Model):
    __tablename__ = "job_logs"
    __table_args__ = (UniqueConstraint("job_id", "seq"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column()
    ts: Mapped[datetime] = mapped_column(UTCDateTime)
    stream: Mapped[str] = mapped_column(String(8))
    text: Mapped[str] = mapped_column(Text)


class Command(db.Model):
    """A command for one agent: leased by a poll, acked by the agent, redelivered if not."""

    __tablename__ = "commands"
    __table_args__ = (
        Index("ix_commands_host_id_state", "host_id", "state"),
        Index("ix_commands_created_at", "created_at"),  # housekeeping: old finished commands
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    host_id: Mapped[int] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict] = mapped_column(JSON, default=dict)
    sealed_payload: Mapped[Optional[bytes]] = mapped_column(LargeBinary)
    job_id: Mapped[Optional[int]] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    attempt_id: Mapped[Optional[str]] = mapped_column(String(32))
    # queued -> leased -> acked | undeliverable
    state: Mapped[str] = mapped_column(String(16), default="queued")
    result: Mapped[Optional[str]] = mapped_column(String(255))
    delivery_count: Mapped[int] = mapped_column(default=0)
    lease_expires_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    acked_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime)


class AgentEvent(db.Model):
    """Each event id an agent sent, stored once: a repeated id is acknowledged, not applied."""

    __tablename__ = "agent_events"
    __table_args__ = (
        # Housekeeping: event ids after a month; job.progress ids (up to one a second of
        # every running job) after a day, through their own partial index.
        Index("ix_agent_events_received_at", "received_at"),
        Index(
            "ix_agent_events_progress_received_at",
            "received_at",
            sqlite_where=text("type = 'job.progress'"),
            postgresql_where=text("type = 'job.progress'"),
        ),
    )

    event_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    host_id: Mapped[int] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"), index=True)
    type: Mapped[str] = mapped_column(String(32))
    job_id: Mapped[Optional[int]] = mapped_column()
    ts: Mapped[Optional[datetime]] = mapped_column(UTCDateTime)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
