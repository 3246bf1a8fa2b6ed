"""A snapshot's size and file count: restic's own summary (0.17+), else the stats of the
backup job of ours that made it (older restic writes no summary into the snapshot)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Iterable, Optional

from sqlalchemy import select

from app.extensions import db
from app.models import Job, Snapshot
from app.services.jobs import SUCCESSFUL_BACKUP_STATUSES

UNKNOWN_HINT = "Needs restic 0.17+ on the host, or a backup run by restic-manager"
# A snapshot's time is its host's clock at the start; the job ends after it (clocks drift).
CLOCK_MARGIN = timedelta(days=1)


@dataclass(frozen=True)
class SnapshotSize:
    size_bytes: Optional[int]  # total bytes processed: what the snapshot holds
    data_added: Optional[int]  # new data this snapshot added to the repository
    file_count: Optional[int]  # total files processed
    source: str  # "restic" (the snapshot's summary) or "job"
    job_id: Optional[int] = None


def _number(values: dict, key: str) -> Optional[int]:
    value = values.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        return None
    return int(value)


def _from(values: dict, source: str, job_id: Optional[int] = None) -> Optional[SnapshotSize]:
    size = SnapshotSize(
        size_bytes=_number(values, "total_bytes_processed"),
        data_added=_number(values, "data_added"),
        file_count=_number(values, "total_files_processed"),
        source=source,
        job_id=job_id,
    )
    if size.size_bytes is None and size.file_count is None:
        return None
    return size


def sizes_of(snapshots: Iterable[Snapshot]) -> dict[str, SnapshotSize]:
    """Snapshot id → its size, for the snapshots whose size is known.

    One query for every snapshot without a summary: the successful backups of those hosts
    since the oldest of them (minus a day of clock drift), matched by the snapshot id their
    stats name (a full id, or the short id restic 0.14 printed).
    """
    snapshots = list(snapshots)
    found: dict[str, SnapshotSize] = {}
    missing: list[Snapshot] = []
    for snapshot in snapshots:
        size = _from(snapshot.summary, "restic") if isinstance(snapshot.summary, dict) else None
        if size is not None:
            found[snapshot.snapshot_id] = size
        else:
            missing.append(snapshot)
    if not missing:
        return found
    oldest = min(snapshot.time for snapshot in missing)
    rows = db.session.execute(
        select(Job.id, Job.stats).where(
            Job.host_id.in_({snapshot.host_id for snapshot in missing}),
            Job.kind == "backup",
            Job.status.in_(SUCCESSFUL_BACKUP_STATUSES),
            Job.finished_at >= oldest - CLOCK_MARGIN,
        )
    )
    by_id: dict[str, tuple[int, dict]] = {}
    for job_id, stats in rows:
        named = (stats or {}).get("snapshot_id") if isinstance(stats, dict) else None
        if isinstance(named, str) and len(named) >= 8:
            by_id[named] = (job_id, stats)
    for snapshot in missing:
        match = by_id.get(snapshot.snapshot_id) or by_id.get(snapshot.short_id)
        if match is None:
            match = next(
                (
                    row
                    for named, row in by_id.items()
                    if len(named) < 64 and snapshot.snapshot_id.startswith(named)
                ),
                None,
            )
        if match is not None:
            size = _from(match[1], "job", match[0])
            if size is not None:
                found[snapshot.snapshot_id] = size
    return found
