"""What the agents report about their repositories: the snapshot list and size history."""

from __future__ import annotations

from datetime import datetime
from typing import Optional

from sqlalchemy import JSON, BigInteger, Float, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.extensions import db
from app.models.types import UTCDateTime, utcnow


class Snapshot(db.Model):
    """One restic snapshot of a host's repository; the host's set is replaced as a whole."""

    __tablename__ = "snapshots"
    __table_args__ = (
        UniqueConstraint("host_id", "snapshot_id"),
        Index("ix_snapshots_host_id_time", "host_id", "time"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    host_id: Mapped[int] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"))
    snapshot_id: Mapped[str] = mapped_column(String(64))
    short_id: Mapped[str] = mapped_column(String(16))
    time: Mapped[datetime] = mapped_column(UTCDateTime)
    # The UTC offset restic wrote (the host's clock): forget buckets days by it.
    time_offset_minutes: Mapped[Optional[int]] = mapped_column()
    hostname: Mapped[Optional[str]] = mapped_column(String(255))
    username: Mapped[Optional[str]] = mapped_column(String(255))
    paths: Mapped[list] = mapped_column(JSON, default=list)
    tags: Mapped[list] = mapped_column(JSON, default=list)
    parent: Mapped[Optional[str]] = mapped_column(String(64))
    tree: Mapped[Optional[str]] = mapped_column(String(64))
    program_version: Mapped[Optional[str]] = mapped_column(String(64))
    summary: Mapped[Optional[dict]] = mapped_column(JSON)
    reported_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class RepoStats(db.Model):
    """``restic stats --mode raw-data`` of a host's repository at one moment (a history)."""

    __tablename__ = "repo_stats"
    __table_args__ = (Index("ix_repo_stats_host_id_taken_at", "host_id", "taken_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    host_id: Mapped[int] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"))
    job_id: Mapped[Optional[int]] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    taken_at: Mapped[datetime] = mapped_column(UTCDateTime)
    total_size: Mapped[int] = mapped_column(BigInteger)
    total_uncompressed_size: Mapped[Optional[int]] = mapped_column(BigInteger)
    total_blob_count: Mapped[Optional[int]] = mapped_column(BigInteger)
    snapshots_count: Mapped[Optional[int]] = mapped_column()
    compression_ratio: Mapped[Optional[float]] = mapped_column(Float)
