"""How numbers, times and jobs read, on the pages and in the API (Jinja filters; pure functions)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Optional

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
REPO_STATUS_WORDS = {
    "ready": "ready",
    "unknown": "checking",
    "initializing": "initialising",
    "missing": "missing",
    "error": "error",
    "init_failed": "init failed",
}
HOST_STATUS_WORDS = {"online": "online", "offline": "offline", "never_seen": "never seen"}


def iso(value: datetime | None) -> str | None:
    """ISO-8601 UTC with a Z, or None."""
    if value is None:
        return None
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def human_bytes(value: Optional[int]) -> str:
    """1536 -> '1.5 KiB'; None -> '—' (never measured)."""
    if value is None:
        return "—"
    size = float(value)
    for unit in _UNITS:
        if abs(size) < 1024 or unit == _UNITS[-1]:
            break
        size /= 1024
    if unit == "B":
        return f"{int(size)} B"
    return f"{size:.1f} {unit}" if size < 100 else f"{size:.0f} {unit}"


def human_duration(seconds: Optional[float]) -> str:
    """A short duration: '45 s', '3 min 5 s', '2 h 10 min', '3 d 4 h'."""
    if seconds is None:
        return "—"
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s" if seconds else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def duration_words(seconds: float) -> str:
    """A duration in words for sentences: '45 minutes', '30 hours', '2 days and 16 hours'
    (a weekend gap is not '2 days')."""
    minutes = int(max(0, seconds) // 60)
    if minutes < 120:
        return f"{minutes} minute{'' if minutes == 1 else 's'}"
    hours = minutes // 60
    if hours < 48:
        return f"{hours} hours"
    days, hours = divmod(hours, 24)
    return f"{days} days" + (f" and {hours} hour{'' if hours == 1 else 's'}" if hours else "")


def relative_time(then: Optional[datetime], now: datetime) -> str:
    """'just now', '5 min ago', '3 h ago', '2 d ago'; 'never' for None."""
    if then is None:
        return "never"
    seconds = (now - then).total_seconds()
    if seconds < 0:
        return "in the future"  # a clock skew on the host; say so rather than hide it
    if seconds < 45:
        return "just now"
    if seconds < 3600:
        return f"{max(1, round(seconds / 60))} min ago"
    if seconds < 86400:
        return f"{int(seconds // 3600)} h ago"
    return f"{int(seconds // 86400)} d ago"


def plural(count: Optional[int], word: str, plural_word: Optional[str] = None) -> str:
    """'1 line', '2 lines', '0 snapshots'; `plural_word` for irregular words ('1 entry')."""
    count = count or 0
    if count == 1:
        return f"1 {word}"
    return f"{count:,} {plural_word or word + 's'}"


def utc(value: Optional[datetime]) -> str:
    """The absolute time, for titles and tables: '2026-01-31 14:05 UTC'."""
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else "—"


def job_duration(job) -> Optional[float]:
    if job.started_at is None:
        return None
    end = job.finished_at
    if end is None:
        return None
    return (end - job.started_at).total_seconds()


def _stat(stats: dict, key: str) -> Any:
    value = stats.get(key)
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _restore_summary(stats: dict, params: dict) -> str:
    files, size = _stat(stats, "files_restored"), _stat(stats, "bytes_restored")
    where = (
        "in place"
        if params.get("in_place")
        else f"to {stats.get('target') or params.get('target')}"
    )
    if files is None:
        return f"restore {where}"
    return f"{files} file{'' if files == 1 else 's'} ({human_bytes(int(size or 0))}) {where}"


MAX_SUMMARY_PATHS = 3  # the one-line summary names this many missing paths; the job all


def missing_paths(stats: dict) -> list[str]:
    """A backup's ``stats.missing_paths``: the source paths that did not exist."""
    value = (stats or {}).get("missing_paths")
    if not isinstance(value, list):
        return []
    return [path for path in value if isinstance(path, str)]


def _paths_text(paths: list[str]) -> str:
    named = ", ".join(paths[:MAX_SUMMARY_PATHS])
    more = len(paths) - MAX_SUMMARY_PATHS
    return f"{named} and {more} more" if more > 0 else named


def _backup_summary(job, stats: dict) -> str:
    """'snapshot 1a2b3c4d, 1,204 files, 4.2 MiB added; 2 paths missing: /srv/a, /srv/b'."""
    head: list[str] = []
    snapshot = stats.get("snapshot_id")
    if isinstance(snapshot, str) and snapshot:
        head.append(f"snapshot {snapshot[:8]}")
    files, added = _stat(stats, "total_files_processed"), _stat(stats, "data_added")
    if files is not None:
        head.append(plural(int(files), "file"))
    if added is not None:
        head.append(f"{human_bytes(int(added))} added")
    problems: list[str] = []
    unreadable = _stat(stats, "error_count")
    if unreadable:
        problems.append(f"{plural(int(unreadable), 'file')} could not be read")
    missing = missing_paths(stats)
    if missing:
        problems.append(f"{plural(len(missing), 'path')} missing: {_paths_text(missing)}")
    if job.status == "warning" and not problems:
        problems.append("some files could not be read")  # a warning from before the counts
    return "; ".join(part for part in (", ".join(head), *problems) if part)


def job_summary(job) -> str:
    """One line about what a job did: snapshot and data added, kept/removed, or the error."""
    stats = job.stats or {}
    if job.status in ("failed", "lost", "cancelled") and job.error:
        return job.error
    if job.status == "lost":
        return "outcome unknown: the server lost touch with the agent"
    if job.status == "running":
        percent = _stat(job.progress or {}, "percent")
        return f"{percent:.0f}% done" if percent is not None else "running"
    if job.status == "queued":
        return "waiting for the agent"
    parts: list[str] = []
    if job.kind == "backup":
        parts.append(_backup_summary(job, stats))
    elif job.kind == "forget":
        kept, removed = _stat(stats, "kept"), _stat(stats, "removed")
        if kept is not None or removed is not None:
            parts.append(f"kept {kept or 0}, removed {removed or 0}")
        if stats.get("dry_run") or (job.params or {}).get("dry_run"):
            parts.append("dry run")
    elif job.kind == "snapshots":
        count = _stat(stats, "count")
        if count is not None:
            parts.append(plural(int(count), "snapshot"))
    elif job.kind == "stats":
        size = _stat(stats, "total_size")
        if size is not None:
            parts.append(f"{human_bytes(int(size))} in the repository")
    elif job.kind == "check":
        subset = (job.params or {}).get("read_data_subset")
        parts.append(f"read {subset} of the data" if subset else "structure only")
    elif job.kind == "restore":
        parts.append(_restore_summary(stats, job.params or {}))
    elif job.kind == "diff":
        changes = _stat(stats, "changes")
        if changes is not None:
            parts.append(plural(int(changes), "change"))
    elif job.kind == "unlock" and (job.params or {}).get("remove_all"):
        parts.append("removed all locks")
    parts = [part for part in parts if part]
    if not parts and job.error:
        parts.append(job.error)
    return " · ".join(parts)


FILTERS = {
    "human_bytes": human_bytes,
    "human_duration": human_duration,
    "utc": utc,
    "plural": plural,
    "ago": relative_time,
    "job_summary": job_summary,
    "missing_paths": missing_paths,
    "job_duration": job_duration,
    "repo_status_word": lambda status: REPO_STATUS_WORDS.get(status, status or "—"),
    "host_status_word": lambda status: HOST_STATUS_WORDS.get(status, status),
}


def log_removed_note(job, retention_days: Optional[int] = None) -> Optional[str]:
    """What the job page and log.txt say instead of an empty log once housekeeping removed
    it (``retention_days``: RM_JOB_LOG_RETENTION_DAYS now)."""
    if job.log_purged_at is None or not job.log_committed_seq:
        return None
    after = f" after {plural(retention_days, 'day')}" if retention_days else ""
    return (
        f"The log ({job.log_committed_seq:,} lines) was removed{after} "
        f"(RM_JOB_LOG_RETENTION_DAYS) on {job.log_purged_at.strftime('%Y-%m-%d')}; "
        "the job's result and statistics are kept."
    )


def log_notes(job, retention_days: Optional[int] = None) -> list[str]:
    """Why the stored log is incomplete, if it is (shown on the page and in log.txt)."""
    removed = log_removed_note(job, retention_days)
    notes = [removed] if removed else []
    if job.log_truncated:
        notes.append(
            f"The log was cut at {job.log_committed_seq:,} lines (RM_JOB_LOG_MAX_RECORDS): "
            "later lines were not stored."
        )
    if job.lines_dropped:
        notes.append(
            f"The agent dropped {job.lines_dropped:,} lines before they reached the server "
            "(its spool was full)."
        )
    return notes
