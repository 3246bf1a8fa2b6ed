"""How a job reads on its page: stats labels, progress and status wording.

Sizes and durations come from app.formatting (the pages' shared filters);
static/js/job.js formats live progress the same way: keep the three in step.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from app.formatting import human_bytes, human_duration

STATUS_WORDS = {
    "queued": "Waiting for the agent to pick it up.",
    "running": "Running on the host.",
    "succeeded": "Finished successfully.",
    "warning": "Finished with warnings: the snapshot was saved, but not everything is in it.",
    "failed": "Failed.",
    "cancelled": "Cancelled.",
    "lost": (
        "Lost: the agent restarted, or the server lost touch with it, while the job was "
        "waiting or running, so its outcome is unknown until the agent reports it."
    ),
}
STATUSES = tuple(STATUS_WORDS)


def status_words(job) -> str:
    """One sentence on where the job stands."""
    if job.status == "warning" and job.kind != "backup":
        return "Finished with warnings."
    return STATUS_WORDS.get(job.status, "")


# Known stats, in the order they are shown, with how to format each value.
_STATS = {
    "snapshot_id": ("Snapshot", "snapshot"),
    "files_new": ("New files", "count"),
    "files_changed": ("Changed files", "count"),
    "files_unmodified": ("Unmodified files", "count"),
    "dirs_new": ("New directories", "count"),
    "dirs_changed": ("Changed directories", "count"),
    "data_added": ("Data added to the repository", "bytes"),
    "total_files_processed": ("Files processed", "count"),
    "total_bytes_processed": ("Data processed", "bytes"),
    "duration_seconds": ("Duration (as restic measured it)", "duration"),
    "error_count": ("Files that could not be read", "count"),
    "error_paths": ("First files that could not be read", "paths"),
    "missing_paths": ("Source paths that do not exist", "paths"),
    "kept": ("Snapshots kept", "count"),
    "removed": ("Snapshots removed", "count"),
    "dry_run": ("Dry run (nothing removed)", "yesno"),
    "count": ("Snapshots", "count"),
    "total_size": ("Repository size", "bytes"),
    "total_uncompressed_size": ("Uncompressed size", "bytes"),
    "total_blob_count": ("Blobs", "count"),
    "snapshots_count": ("Snapshots", "count"),
    "compression_ratio": ("Compression ratio", "ratio"),
    "target": ("Restored to", "text"),
    "in_place": ("In place (overwrote files)", "yesno"),
    "verify": ("Verified", "yesno"),
    "files_restored": ("Files restored", "count"),
    "bytes_restored": ("Data restored", "bytes"),
    "total_files": ("Files selected", "count"),
    "total_bytes": ("Data selected", "bytes"),
}


def job_duration(job, now: datetime) -> float | None:
    """Seconds from start to finish (or to now while it runs); None before it started."""
    if job.started_at is None:
        return None
    return ((job.finished_at or now) - job.started_at).total_seconds()


def _format(kind: str, value: Any) -> str:
    if value is None:
        return "—"
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "bytes" and number:
        return human_bytes(value)
    if kind == "duration" and number:
        return human_duration(value)
    if kind == "count" and isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if kind == "yesno":
        return "yes" if value else "no"
    if kind == "ratio" and isinstance(value, (int, float)):
        return f"{value:.2f} : 1"
    if kind == "snapshot" and isinstance(value, str):
        return value[:8]
    return str(value)


def _guess(key: str) -> str:
    if key.endswith(("_bytes", "_size")):
        return "bytes"
    if key.endswith("_seconds"):
        return "duration"
    return "count"


def stats_rows(stats: dict, hide: tuple[str, ...] = ()) -> list[tuple[str, str, str]]:
    """(label, shown value, full value) for a finished job's stats, known ones first."""
    stats = {key: value for key, value in (stats or {}).items() if key not in hide}
    rows = []
    for key, (label, kind) in _STATS.items():
        if kind == "paths":
            value = stats.get(key) if isinstance(stats.get(key), list) else []
            paths = [path for path in value if isinstance(path, str)]
            if paths:
                rows.append((label, ", ".join(paths), "\n".join(paths)))
        elif key in stats and not isinstance(stats[key], (dict, list)):
            rows.append((label, _format(kind, stats[key]), str(stats[key])))
    for key in sorted(set(stats) - set(_STATS)):
        value = stats[key]
        if isinstance(value, (dict, list)):
            continue  # nested details belong in the JSON API, not in this table
        label = key.replace("_", " ").capitalize()
        rows.append((label, _format(_guess(key), value), str(value)))
    return rows


def progress_view(progress: dict) -> dict:
    """What the progress panel shows; job.js builds the same strings from `progress` events."""
    progress = progress or {}
    percent = progress.get("percent")
    percent = min(100.0, max(0.0, float(percent))) if isinstance(percent, (int, float)) else None
    files_done, total_files = progress.get("files_done"), progress.get("total_files")
    bytes_done, total_bytes = progress.get("bytes_done"), progress.get("total_bytes")
    remaining = progress.get("seconds_remaining")
    current = progress.get("current_files") or []
    errors = progress.get("error_count") or 0
    return {
        "known": bool(progress),
        "percent": percent,
        "percent_text": f"{percent:.1f} %" if percent is not None else "",
        "files": (
            f"{files_done:,} of {total_files:,} files"
            if isinstance(files_done, int) and isinstance(total_files, int)
            else (f"{files_done:,} files" if isinstance(files_done, int) else "")
        ),
        "bytes": (
            f"{human_bytes(bytes_done)} of {human_bytes(total_bytes)}"
            if isinstance(bytes_done, (int, float)) and isinstance(total_bytes, (int, float))
            else (human_bytes(bytes_done) if isinstance(bytes_done, (int, float)) else "")
        ),
        "eta": (
            f"about {human_duration(remaining)} left"
            if isinstance(remaining, (int, float)) and remaining >= 0
            else ""
        ),
        "current": ", ".join(str(path) for path in current[:2]),
        "errors": (
            f"{errors:,} file{'' if errors == 1 else 's'} could not be read"
            if isinstance(errors, int) and errors
            else ""
        ),
    }


# --- restore and diff --------------------------------------------------------------------

# restic diff's letters, as words: the page never shows a bare letter.
CHANGES = {
    "+": ("added", "added"),
    "-": ("removed", "removed"),
    "M": ("modified", "modified"),
    "T": ("type changed", "type"),
    "U": ("metadata changed", "other"),
}
DIFF_FILTERS = (("+", "added"), ("-", "removed"), ("M", "modified"), ("T", "type changed"))


def change_view(modifier: str | None) -> tuple[str, str]:
    """(word, style) for a diff modifier such as '+', 'M' or a combination like 'MT'."""
    modifier = modifier or ""
    if modifier in CHANGES:
        return CHANGES[modifier]
    words = [CHANGES[letter][0] for letter in modifier if letter in CHANGES]
    if not words:
        return ("changed", "other")
    style = CHANGES[modifier[0]][1] if modifier[0] in CHANGES else "other"
    return (", ".join(words), style)


def diff_summary(stats: dict) -> dict:
    """What the top of a diff job's table says, from the job's stats."""
    stats = stats or {}
    changes, reported = stats.get("changes"), stats.get("reported")
    return {
        "changes": changes if isinstance(changes, int) else None,
        "reported": reported if isinstance(reported, int) else None,
        "truncated": bool(stats.get("truncated")),
    }
