"""The result of a ``diff`` job: the changed paths, kept as rows (docs/protocol.md)."""

from __future__ import annotations

from typing import Any, Optional

from sqlalchemy import func, insert, select

from app.extensions import db
from app.models import DiffEntry, Job
from app.services.errors import EventRejected, ValidationFailed

MAX_ENTRIES = 20_000  # per job; the job log still lists every change
MAX_BATCH = 1000
MODIFIERS = {"+": "added", "-": "removed", "M": "modified", "T": "type changed"}
_MODIFIER_CHARS = frozenset("+-MTU?")


def record_batch(job: Job, data: dict) -> None:
    """Store one ``diff.report`` event's changes after those already stored; raises
    :class:`EventRejected` (nothing stored) for a batch that is not one."""
    if job.kind != "diff":
        raise EventRejected("invalid_event", "diff.report belongs to diff jobs only.")
    changes = data.get("changes")
    if not isinstance(changes, list) or len(changes) > MAX_BATCH:
        raise EventRejected(
            "invalid_event", f"changes must be a list of at most {MAX_BATCH} changes."
        )
    stored = db.session.scalar(select(func.count()).where(DiffEntry.job_id == job.id))
    rows = []
    for index, change in enumerate(changes):
        row = _change(change)
        if row is None:
            raise EventRejected(
                "invalid_event", f"changes[{index}] is not a change restic could print."
            )
        rows.append(row)
    room = max(0, MAX_ENTRIES - stored)
    rows = [dict(row, job_id=job.id, seq=stored + i + 1) for i, row in enumerate(rows[:room])]
    if rows:
        db.session.execute(insert(DiffEntry), rows)


def _change(change: Any) -> Optional[dict]:
    if not isinstance(change, dict):
        return None
    path, modifier = change.get("path"), change.get("modifier")
    if not isinstance(path, str) or not path or len(path) > 4096:
        return None
    if not isinstance(modifier, str) or not modifier or len(modifier) > 8:
        return None
    if not set(modifier) <= _MODIFIER_CHARS:
        return None
    row = {"path": path, "modifier": modifier}
    kind = change.get("type")
    row["type"] = kind[:16] if isinstance(kind, str) and kind else None
    for key in ("size_before", "size_after"):
        value = change.get(key)
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        row[key] = value if ok else None
    return row


def describe(modifier: str) -> str:
    """``+`` → added; a combination such as ``MT`` → "modified, type changed"."""
    words = [MODIFIERS[char] for char in modifier if char in MODIFIERS]
    return ", ".join(words) or modifier


def diff_page(
    job: Job, *, modifier: Optional[str] = None, limit: int = 100, offset: int = 0
) -> dict:
    """One page of a diff job's changes, optionally of one kind, and the job's summary."""
    if modifier is not None and modifier not in MODIFIERS:
        raise ValidationFailed(
            "modifier must be one of + - M T.", fields={"modifier": ["one of + - M T"]}
        )
    if limit < 1 or limit > 1000 or offset < 0:
        raise ValidationFailed("limit must be 1 to 1000 and offset ≥ 0.")
    where = [DiffEntry.job_id == job.id]
    if modifier is not None:
        where.append(DiffEntry.modifier.contains(modifier))
    total = db.session.scalar(select(func.count()).select_from(DiffEntry).where(*where))
    items = list(
        db.session.scalars(
            select(DiffEntry).where(*where).order_by(DiffEntry.seq).limit(limit).offset(offset)
        )
    )
    counts = dict(
        db.session.execute(
            select(DiffEntry.modifier, func.count())
            .where(DiffEntry.job_id == job.id)
            .group_by(DiffEntry.modifier)
        ).all()
    )
    return {
        "summary": job.stats or {},
        "counts": {key: sum(n for m, n in counts.items() if key in m) for key in MODIFIERS},
        "sizes": file_sizes(job),
        "items": items,
        "total": total,
        "next": offset + limit if offset + limit < total else None,
        # Housekeeping removed the changes with the job's log (RM_JOB_LOG_RETENTION_DAYS).
        "removed_at": job.log_purged_at,
    }


def file_sizes(job: Job) -> dict:
    """What the table's size columns add up to, per kind of change.

    restic's own ``added.bytes``/``removed.bytes`` (in the job's stats) count deduplicated
    blobs, folder listings included: repository data, not file sizes. These are the sizes
    of the files listed: added files after, removed files before, modified ones both.
    ``unknown`` counts files whose size the agent could not look up.
    """
    rows = db.session.execute(
        select(
            DiffEntry.modifier,
            func.count(),
            func.count(DiffEntry.size_before),
            func.count(DiffEntry.size_after),
            func.sum(DiffEntry.size_before),
            func.sum(DiffEntry.size_after),
        )
        .where(DiffEntry.job_id == job.id, DiffEntry.type == "file")
        .group_by(DiffEntry.modifier)
    ).all()
    sizes = {
        "added": {"bytes": 0, "unknown": 0},
        "removed": {"bytes": 0, "unknown": 0},
        "modified": {"bytes_before": 0, "bytes_after": 0, "unknown": 0},
    }
    for modifier, files, known_before, known_after, before, after in rows:
        if "+" in modifier:
            sizes["added"]["bytes"] += int(after or 0)
            sizes["added"]["unknown"] += files - known_after
        elif "-" in modifier:
            sizes["removed"]["bytes"] += int(before or 0)
            sizes["removed"]["unknown"] += files - known_before
        elif "M" in modifier:
            modified = sizes["modified"]
            modified["bytes_before"] += int(before or 0)
            modified["bytes_after"] += int(after or 0)
            modified["unknown"] += files - min(known_before, known_after)
    return sizes
