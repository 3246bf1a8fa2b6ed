"""``restic backup --json``: JSON lines on stdout (``status``, ``summary``), per-file
``error`` lines on stderr (samples 10 to 23, restic-cli.md §2.1).

Every field equal to zero is left out, 0.14/0.15 type ``scan_finished`` as a "status",
``seconds_remaining`` is 2^63 when the total is unknown, and after SIGINT stdout may end in
the middle of a line: the readers below default everything and never raise.

A source path that does not exist is skipped with a plain-text stderr line, even with
``--json`` (``/srv/x does not exist, skipping``, sample 20): restic 0.14 to 0.18 then exit 0,
0.19 exits 3. When no source exists at all restic stops with exit 1 (sample 21;
"all target directories/files do not exist" in 0.14, "all source …" in later versions).
"""

import re
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from agent.restic.messages import clean, error_detail, json_object
from agent.restic.units import format_bytes, format_seconds

SECONDS_REMAINING_MAX = 366 * 24 * 3600  # beyond a year it is restic not knowing
SUMMARY_COUNTS = (
    "files_new",
    "files_changed",
    "files_unmodified",
    "dirs_new",
    "dirs_changed",
    "data_added",
    "total_files_processed",
    "total_bytes_processed",
)
_PROGRESS_COUNTS = (
    "files_done",
    "total_files",
    "bytes_done",
    "total_bytes",
    "seconds_elapsed",
    "error_count",
)

# What a stdout line is: ("progress", data) | ("summary", stats) | ("text", line) | ("skip", None)
Line = Tuple[str, Any]


def backup_argv(
    binary: str,
    paths: Sequence[str],
    excludes: Sequence[str] = (),
    tags: Sequence[str] = (),
    limit_upload_kib: Optional[int] = None,
    limit_download_kib: Optional[int] = None,
) -> Tuple[str, ...]:
    """Paths come after ``--``, so none of them can be taken for a flag."""
    argv: List[str] = [binary, "backup", "--json"]
    for tag in tags:
        argv += ["--tag", tag]
    for pattern in excludes:
        argv += ["--exclude", pattern]
    if limit_upload_kib:
        argv += ["--limit-upload", str(limit_upload_kib)]
    if limit_download_kib:
        argv += ["--limit-download", str(limit_download_kib)]
    return (*argv, "--", *paths)


def read_stdout_line(line: str) -> Line:
    """Sort one stdout line of ``backup --json``."""
    message = json_object(line)
    if message is None:
        if line.lstrip().startswith('{"message_type"'):
            return ("skip", None)  # the tail of a line cut short when restic was stopped
        return ("text", line)
    message_type = message.get("message_type")
    if message.get("action") == "scan_finished" or message_type == "verbose_status":
        return ("skip", None)
    if message_type == "status":
        return ("progress", progress(message))
    if message_type == "summary":
        return ("summary", summary_stats(message))
    return ("text", line)


def progress(status: Mapping[str, Any]) -> Dict[str, Any]:
    """The ``job.progress`` data of a ``status`` line: percent 0 to 100, absent counts 0."""
    percent = min(max(_number(status.get("percent_done")) * 100, 0.0), 100.0)
    data: Dict[str, Any] = {"percent": round(percent, 2)}
    for key in _PROGRESS_COUNTS:
        data[key] = int(_number(status.get(key)))
    remaining = _number(status.get("seconds_remaining"))
    data["seconds_remaining"] = int(remaining) if 0 < remaining <= SECONDS_REMAINING_MAX else None
    current = status.get("current_files")
    data["current_files"] = [str(path) for path in current[:2]] if isinstance(current, list) else []
    return data


def summary_stats(summary: Mapping[str, Any]) -> Dict[str, Any]:
    """The ``job.finished`` stats of a ``summary`` line (``error_count`` is counted apart)."""
    stats: Dict[str, Any] = {"snapshot_id": summary.get("snapshot_id") or None}
    for key in SUMMARY_COUNTS:
        stats[key] = int(_number(summary.get(key)))
    stats["duration_seconds"] = round(_number(summary.get("total_duration")), 3)
    stats["error_count"] = 0
    return stats


def summary_line(stats: Mapping[str, Any]) -> str:
    """``snapshot 895d3591 saved: 4 new, 0 changed, 0 unmodified files; 2.9 MiB added; 0.2 s``."""
    snapshot_id = stats.get("snapshot_id")
    head = f"snapshot {snapshot_id[:8]} saved" if snapshot_id else "no snapshot saved"
    line = (
        f"{head}: {stats['files_new']} new, {stats['files_changed']} changed, "
        f"{stats['files_unmodified']} unmodified files; {format_bytes(stats['data_added'])} "
        f"added; {format_seconds(stats['duration_seconds'])}"
    )
    errors = stats.get("error_count") or 0
    if errors:
        line += f"; {errors} {'item' if errors == 1 else 'items'} could not be read"
    missing = stats.get("missing_paths") or []
    if missing:
        line += f"; {len(missing)} source {'path' if len(missing) == 1 else 'paths'} missing"
    return line


MAX_NAMED_PATHS = 10  # the job's error names this many; its stats keep them all


def paths_text(paths: Sequence[str]) -> str:
    """``/srv/a, /srv/b`` — at most MAX_NAMED_PATHS, then ``and 3 more``."""
    named = ", ".join(paths[:MAX_NAMED_PATHS])
    more = len(paths) - MAX_NAMED_PATHS
    return f"{named} and {more} more" if more > 0 else named


def missing_paths_error(paths: Sequence[str]) -> str:
    """The ``error`` of a backup that saved a snapshot without some source paths."""
    if len(paths) == 1:
        return f"source path {paths[0]} does not exist; the snapshot holds the other paths"
    return (
        f"{len(paths)} source paths do not exist: {paths_text(paths)}; "
        "the snapshot holds the other paths"
    )


def nothing_exists_error(paths: Sequence[str]) -> str:
    """The ``error`` of a backup that saved nothing because no source path exists."""
    if len(paths) == 1:
        return f"nothing was backed up: source path {paths[0]} does not exist"
    return f"nothing was backed up: none of the source paths exists ({paths_text(paths)})"


_SKIPPED_SUFFIX = " does not exist, skipping"
_NOTHING_TO_BACK_UP = re.compile(r"all (target|source) directories/files do not exist", re.I)
_NOT_FOUND = re.compile(r"no such file|not exist|cannot find", re.I)


def skipped_source(line: str, paths: Sequence[str] = ()) -> Optional[str]:
    """The source path restic skipped because it does not exist, if this stderr line says so.

    The plain-text line of every version, and (in case a later restic reports it as a JSON
    ``error``) an error about one of ``paths`` itself that says it is not there.
    """
    message = json_object(line)
    if message is None:
        text = clean(line)
        if text.endswith(_SKIPPED_SUFFIX) and len(text) > len(_SKIPPED_SUFFIX):
            return text[: -len(_SKIPPED_SUFFIX)]
        return None
    item = message.get("item")
    if message.get("message_type") != "error" or item not in paths:
        return None
    error = message.get("error")
    if isinstance(error, dict) and error.get("Err") == 2:  # ENOENT, 0.14 to 0.17.0
        return str(item)
    return str(item) if _NOT_FOUND.search(error_detail(error)) else None


def nothing_to_back_up(stderr_lines: Iterable[str]) -> bool:
    """restic stopped because none of the source paths exists."""
    return any(_NOTHING_TO_BACK_UP.search(line) for line in stderr_lines)


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0.0
    return float(value)
