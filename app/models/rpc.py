"""Synchronous requests to an agent (docs/protocol.md "rpc.* commands") and diff results."""

from __future__ import annotations

from datetime import datetime
from typing import Optional

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.extensions import db
from app.models.types import UTCDateTime, utcnow


class RpcCall(db.Model):
    """One ``rpc.*`` request and the agent's answer; an answered ``ls`` doubles as cache.

    status: pending (queued or being worked on) → answered (``ls`` done; a ``dump`` header
    arrived and bytes follow) → done (a ``dump`` ended well) | failed (the agent's error) |
    closed (nobody waits any more: the agent's further bytes are refused).
    """

    __tablename__ = "rpc_calls"
    __table_args__ = (
        Index("ix_rpc_calls_cache", "host_id", "cache_key", "created_at"),
        Index("ix_rpc_calls_created_at", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    host_id: Mapped[int] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"))
    method: Mapped[str] = mapped_column(String(16))
    # sha256 of (method, snapshot, path): finds an earlier answer to the same question
    cache_key: Mapped[str] = mapped_column(String(64))
    params: Mapped[dict] = mapped_column(JSON, default=dict)
    command_id: Mapped[Optional[str]] = mapped_column(String(32))  # withdrawn on a timeout
    status: Mapped[str] = mapped_column(String(16), default="pending")
    result: Mapped[Optional[dict]] = mapped_column(JSON)
    error_code: Mapped[Optional[str]] = mapped_column(String(32))
    error_message: Mapped[Optional[str]] = mapped_column(String(2000))
    size: Mapped[Optional[int]] = mapped_column(BigInteger)  # dump: the file's size
    bytes_committed: Mapped[int] = mapped_column(BigInteger, default=0)
    sha256: Mapped[Optional[str]] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    answered_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime)
    finished_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime)


class RpcChunk(db.Model):
    """Bytes of a ``dump`` between the agent's upload and the browser's download."""

    __tablename__ = "rpc_chunks"

    rpc_id: Mapped[str] = mapped_column(
        ForeignKey("rpc_calls.id", ondelete="CASCADE"), primary_key=True
    )
    byte_offset: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class DiffEntry(db.Model):
    """One changed path of a ``diff`` job, in the order restic printed it."""

    __tablename__ = "diff_entries"
    __table_args__ = (Index("ix_diff_entries_job_id_modifier", "job_id", "modifier"),)

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    seq: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    path: Mapped[str] = mapped_column(Text)
    modifier: Mapped[str] = mapped_column(String(8))
    type: Mapped[Optional[str]] = mapped_column(String(16))
    size_before: Mapped[Optional[int]] = mapped_column(BigInteger)
    size_after: Mapped[Optional[int]] = mapped_column(BigInteger)
