"""``diff``: ``restic --no-lock diff --json a b`` (docs/protocol.md, "Job kind diff").

restic names the changed paths only; the sizes come from listing their parent directories
in each snapshot (at most ``MAX_DIRECTORIES`` per snapshot, so a huge diff stays cheap).
The reported changes are in natural order (``file2`` before ``file10``), as people count.
"""

import posixpath
import re
from typing import Any, Dict, List, Optional, Tuple

from agent.jobcontext import Job, JobResult
from agent.jobparams import DiffParams
from agent.repository import Credentials
from agent.restic import errors
from agent.restic.diff import diff_argv, diff_stat, is_directory, read_diff_line, sides
from agent.restic.ls import NodeIndex, ls_argv

MAX_REPORTED = 20_000
BATCH_SIZE = 1_000
MAX_DIRECTORIES = 200


class DiffCollector:
    """``diff --json`` stdout: each change logged, the first ``MAX_REPORTED`` kept."""

    def __init__(self, job: Job, max_reported: int = MAX_REPORTED):
        self.job = job
        self.max_reported = max_reported
        self.changes: List[Dict[str, Any]] = []
        self.total = 0
        self.statistics: Optional[Dict[str, Any]] = None

    def stdout_line(self, text: str) -> None:
        read = read_diff_line(text)
        if read is None:
            if text.strip():
                self.job.log(text, "stdout")
            return
        kind, value = read
        if kind == "statistics":
            self.statistics = value
            return
        self.total += 1
        self.job.log(f"{value['modifier']} {value['path']}", "stdout")
        if len(self.changes) < self.max_reported:
            self.changes.append(value)


def run(job: Job, params: DiffParams) -> JobResult:
    credentials = job.require_credentials()
    collector = DiffCollector(job, MAX_REPORTED)
    argv = diff_argv(job.setup.binary, params.snapshot_a, params.snapshot_b)
    outcome = job.restic(argv, credentials, on_stdout=collector.stdout_line)
    if outcome.cancelled:
        return job.cancelled(outcome)
    failure = errors.classify(outcome.exit_code, outcome.stderr_tail)
    if failure is not None:
        return job.failed(outcome, failure)
    before = _nodes(job, credentials, params.snapshot_a, collector.changes, in_a=True)
    after = _nodes(job, credentials, params.snapshot_b, collector.changes, in_a=False)
    if job.running.cancel.is_set():
        return job.cancelled(outcome)
    listed = sorted(collector.changes, key=lambda change: path_key(change["path"]))
    changes = [describe_change(change, before, after) for change in listed]
    for start in range(0, len(changes), BATCH_SIZE):
        batch = {"batch": start // BATCH_SIZE, "changes": changes[start : start + BATCH_SIZE]}
        job.emit("diff.report", batch)
    stats = collector.statistics or {
        "source_snapshot": params.snapshot_a,
        "target_snapshot": params.snapshot_b,
        "changed_files": 0,
        "added": diff_stat(None),
        "removed": diff_stat(None),
    }
    stats.update(
        changes=collector.total,
        reported=len(changes),
        truncated=collector.total > len(changes),
    )
    job.log(_summary(stats))
    return JobResult("succeeded", outcome.exit_code, None, stats)


def describe_change(
    change: Dict[str, Any], before: Dict[str, Dict[str, Any]], after: Dict[str, Dict[str, Any]]
) -> Dict[str, Any]:
    """The ``diff.report`` entry: type and sizes from the listed nodes (``None``: unknown)."""
    path, modifier = change["path"], change["modifier"]
    in_a, in_b = sides(modifier)
    old = before.get(path) if in_a else None
    new = after.get(path) if in_b else None
    node_type = "dir" if is_directory(path) else ((new or old or {}).get("type") or None)
    return {
        "path": path,
        "modifier": modifier,
        "type": node_type,
        "size_before": _file_size(old),
        "size_after": _file_size(new),
    }


_DIGITS = re.compile(r"([0-9]+)")


def natural_key(name: str) -> Tuple[Tuple[int, int, str], ...]:
    """file2 before file10, case folded; digit runs ahead of letters, as in ASCII."""
    return tuple(
        (0, int(part), part) if part.isdigit() and part.isascii() else (1, 0, part.casefold())
        for part in _DIGITS.split(name)
        if part
    )


def path_key(path: str) -> Tuple[Any, ...]:
    """Component by component, so a directory comes right before what is in it."""
    return (tuple(natural_key(part) for part in path.split("/")), path)


def parent_directories(changes: List[Dict[str, Any]], in_a: bool, limit: int) -> List[str]:
    """The distinct parents of the changed files on one side, in order, at most ``limit``."""
    parents: Dict[str, None] = {}
    for change in changes:
        if is_directory(change["path"]) or sides(change["modifier"])[0 if in_a else 1] is False:
            continue
        parent = posixpath.dirname(change["path"])
        if parent not in parents:
            if len(parents) >= limit:
                break
            parents[parent] = None
    return list(parents)


def _nodes(
    job: Job, credentials: Credentials, snapshot_id: str, changes: List[Dict[str, Any]], in_a: bool
) -> Dict[str, Dict[str, Any]]:
    """The changed paths' nodes in one snapshot; empty when listing fails (sizes stay null)."""
    directories = parent_directories(changes, in_a, MAX_DIRECTORIES)
    if not directories:
        return {}
    index = NodeIndex([change["path"] for change in changes])
    argv = ls_argv(job.setup.binary, snapshot_id, directories)
    outcome = job.restic(argv, credentials, on_stdout=index.feed)
    failure = errors.classify(outcome.exit_code, outcome.stderr_tail)
    if outcome.cancelled or failure is not None:
        job.log("could not list the changed directories: sizes are unknown")
        return {}
    return index.nodes


def _file_size(node: Optional[Dict[str, Any]]) -> Optional[int]:
    if node is None or node.get("type") != "file":
        return None
    size = node.get("size")
    return size if isinstance(size, int) else 0


def _summary(stats: Dict[str, Any]) -> str:
    """``3 changes: 1 file and 0 directories added, 1 file … removed, 1 file modified``."""
    added, removed = stats["added"], stats["removed"]
    line = (
        f"{_count(stats['changes'], 'change')}: {_count(added['files'], 'file')} and "
        f"{_count(added['dirs'], 'directory', 'directories')} added, "
        f"{_count(removed['files'], 'file')} and "
        f"{_count(removed['dirs'], 'directory', 'directories')} removed, "
        f"{_count(stats['changed_files'], 'file')} modified"
    )
    if stats["truncated"]:
        line += f" (the first {stats['reported']} are listed)"
    return line


def _count(number: int, word: str, plural: Optional[str] = None) -> str:
    return f"{number} {word if number == 1 else plural or word + 's'}"
