"""Backup schedules (run by the agent on its own clock) and repository maintenance cadences
(run by the server's ticker)."""

from __future__ import annotations

from datetime import datetime
from typing import Optional

from sqlalchemy import Column, ForeignKey, String, Table, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.extensions import db
from app.models.host import SourceGroup
from app.models.types import UTCDateTime, utcnow

schedule_source_groups = Table(
    "schedule_source_groups",
    db.metadata,
    Column("schedule_id", ForeignKey("schedules.id", ondelete="CASCADE"), primary_key=True),
    # RESTRICT: a group still used by a schedule is not deleted (the service says which).
    Column(
        "source_group_id",
        ForeignKey("source_groups.id", ondelete="RESTRICT"),
        primary_key=True,
    ),
)


class Schedule(db.Model):
    """When to back up which source groups of one host (cron, the agent's local time)."""

    __tablename__ = "schedules"
    __table_args__ = (UniqueConstraint("host_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    host_id: Mapped[int] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    cron: Mapped[str] = mapped_column(String(128))
    enabled: Mapped[bool] = mapped_column(default=True)
    # run_once: a run missed while the host slept runs once at agent start; skip: it does not.
    missed_policy: Mapped[str] = mapped_column(String(16), default="run_once")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    source_groups: Mapped[list[SourceGroup]] = relationship(
        secondary=schedule_source_groups, order_by=SourceGroup.name
    )


class RepoMaintenance(db.Model):
    """Forget / prune / check cadences of one host's repository (cron, server time, UTC)."""

    __tablename__ = "repo_maintenance"

    host_id: Mapped[int] = mapped_column(
        ForeignKey("hosts.id", ondelete="CASCADE"), primary_key=True
    )
    enabled: Mapped[bool] = mapped_column(default=True)
    forget_cron: Mapped[Optional[str]] = mapped_column(String(128))
    prune_cron: Mapped[Optional[str]] = mapped_column(String(128))
    check_cron: Mapped[Optional[str]] = mapped_column(String(128))
    check_subset_percent: Mapped[Optional[float]] = mapped_column()
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
