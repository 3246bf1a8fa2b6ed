"""Backed-up machines. The agent/protocol issue fills in enrollment and liveness."""

from __future__ import annotations

from datetime import datetime
from typing import Optional

from sqlalchemy import JSON, String
from sqlalchemy.orm import Mapped, mapped_column

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
    repo_status: Mapped[str] = mapped_column(String(32), default="unknown")
    tags: Mapped[list] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime)

    def status(self, now: datetime, offline_after_seconds: int) -> str:
        if self.last_seen_at is None:
            return "never_seen"
        age = (now - self.last_seen_at).total_seconds()
        return "online" if age <= offline_after_seconds else "offline"
