"""``restore``: ``restic restore <id> --target T [--include p]… [--verify]``
(docs/protocol.md, "Job kind restore").

Order matters: the host owner's veto (``restore_paths``) is checked before restic restores
anything; on restic < 0.16, which prints no progress, the selection is sized with ``ls``
first and progress is read off the target directory while restic writes it.
"""

import contextlib
import errno
import os
import posixpath
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

from agent.backup_policy import policy_of
from agent.jobcontext import Job, JobFailed, JobResult, Throttle
from agent.jobparams import InvalidParams, RestoreParams
from agent.paths import expand_home, normalise_absolute
from agent.repository import Credentials
from agent.restic import errors, execute
from agent.restic.ls import DirectoryListing, SelectionSize, ls_argv, normalise_path
from agent.restic.messages import stderr_text
from agent.restic.restore import RESTORE_JSON, ignored_error, read_stdout_line, restore_argv
from agent.restic.units import format_bytes
from agent.restic.version import at_least
from agent.restore_policy import RestorePolicy, RestoreRefused

WATCH_INTERVAL_SECONDS = 2.0
_ERRORS_KEPT = 3


class _Cancelled(Exception):
    """The job was cancelled while a preparatory ``ls`` ran."""

    def __init__(self, result: JobResult):
        super().__init__(result.error)
        self.result = result


def run(job: Job, params: RestoreParams) -> JobResult:
    try:
        return _restore(job, params)
    except _Cancelled as cancelled:
        return cancelled.result


def _restore(job: Job, params: RestoreParams) -> JobResult:
    policy = RestorePolicy(job.setup.restore_paths, backup=policy_of(job.setup))
    target = restore_target(params)
    credentials = job.require_credentials()
    if params.in_place:
        touched = [normalise_path(path) for path in params.includes] or _snapshot_paths(
            job, credentials, params.snapshot_id
        )
    else:
        touched = [target]
    try:
        policy.check(touched, in_place=params.in_place)
    except RestoreRefused as refusal:
        raise JobFailed(str(refusal)) from None
    json_output = at_least(job.setup.version(), RESTORE_JSON)
    size = None if json_output else _size_selection(job, credentials, params)
    if not params.in_place:
        make_private_directory(target)
    reporter = RestoreReporter(job, size)
    watcher = None
    if size is not None and not params.in_place:
        watcher = TargetWatcher(job, target, size)
        watcher.start()
    argv = restore_argv(
        job.setup.binary,
        params.snapshot_id,
        target,
        params.includes,
        params.verify,
        job.setup.version(),
    )
    try:
        outcome = job.restic(
            argv, credentials, on_stdout=reporter.stdout_line, on_stderr=reporter.stderr_line
        )
    finally:
        if watcher is not None:
            watcher.stop()
    stats: Dict[str, Any] = {"target": target, "in_place": params.in_place}
    if outcome.cancelled:
        return job.cancelled(outcome)
    failure = errors.classify(outcome.exit_code, outcome.stderr_tail)
    if failure is not None:
        error = reporter.error_summary() or errors.describe(failure)
        return JobResult("failed", outcome.exit_code, error, stats)
    stats.update(reporter.counts())
    job.log(
        f"restored {_files(stats['files_restored'])} "
        f"({format_bytes(stats['bytes_restored'])}) to {target}"
    )
    return JobResult("succeeded", outcome.exit_code, None, stats)


def restore_target(params: RestoreParams) -> str:
    """The target with ``$HOME``/``~`` expanded, normalised and absolute."""
    if params.in_place:
        return "/"
    try:
        return normalise_absolute(expand_home(params.target))
    except ValueError as error:
        raise InvalidParams(f"target: {error}") from None


def make_private_directory(path: str) -> None:
    """Create ``path`` and its missing parents with mode 0700; an existing one stays as is."""
    missing: List[str] = []
    current = path
    while not os.path.lexists(current):
        missing.append(current)
        current = posixpath.dirname(current)
    try:
        for directory in reversed(missing):
            with contextlib.suppress(FileExistsError):
                os.mkdir(directory, 0o700)
    except OSError as error:
        hint = ""
        if error.errno == errno.EROFS:  # the systemd sandbox (docs/agent.md)
            hint = " (read-only under the agent's sandbox: add it to ReadWritePaths)"
        message = f"cannot create the restore target {path}: {error.strerror}{hint}"
        raise JobFailed(message) from None
    if not os.path.isdir(path):
        raise JobFailed(f"the restore target {path} exists and is not a directory")


def _snapshot_paths(job: Job, credentials: Credentials, snapshot_id: str) -> List[str]:
    """The paths a snapshot was taken of (its ``ls`` snapshot line)."""
    listing = DirectoryListing("/", 0)
    outcome = job.restic(
        ls_argv(job.setup.binary, snapshot_id, ["/"]), credentials, on_stdout=listing.feed
    )
    _raise_unless_listed(job, outcome, listing.snapshot, snapshot_id)
    assert listing.snapshot is not None
    paths = listing.snapshot.get("paths") or []
    return [normalise_path(str(path)) for path in paths]


def _size_selection(job: Job, credentials: Credentials, params: RestoreParams) -> SelectionSize:
    """Files and bytes the restore will write (restic < 0.16 does not say)."""
    size = SelectionSize()
    argv = ls_argv(job.setup.binary, params.snapshot_id, params.includes, recursive=True)
    outcome = job.restic(argv, credentials, on_stdout=size.feed)
    _raise_unless_listed(job, outcome, size.snapshot, params.snapshot_id)
    job.log(f"to restore: {_files(size.files)} ({format_bytes(size.bytes)})")
    return size


def _raise_unless_listed(
    job: Job, outcome: execute.Outcome, snapshot: Optional[Dict[str, Any]], snapshot_id: str
) -> None:
    if outcome.cancelled:
        raise _Cancelled(job.cancelled(outcome))
    failure = errors.classify(outcome.exit_code, outcome.stderr_tail)
    if failure is not None:
        raise JobFailed(errors.describe(failure))
    if snapshot is None:  # 0.14 exits 0 for an unknown id
        reason = errors.error_message(outcome.stderr_tail, outcome.exit_code)
        raise JobFailed(f"snapshot {snapshot_id[:8]} cannot be read: {reason}")


def _files(count: int) -> str:
    return f"{count} file" if count == 1 else f"{count} files"


class RestoreReporter:
    """restic's restore output: progress (0.16+), the summary, per-file errors."""

    def __init__(self, job: Job, size: Optional[SelectionSize]):
        self.job = job
        self.size = size
        self.throttle = Throttle()
        self.summary: Optional[Dict[str, int]] = None
        self.error_count = 0
        self.first_errors: List[str] = []

    def stdout_line(self, text: str) -> None:
        kind, value = read_stdout_line(text)
        if kind == "progress":
            if self.throttle.due():
                self.job.emit("job.progress", value)
        elif kind == "summary":
            self.summary = value
        elif kind == "text" and value:
            self.job.log(value, "stdout")

    def stderr_line(self, text: str) -> None:
        problem = ignored_error(text)
        if problem is None:
            self.job.log(stderr_text(text), "stderr")
            return
        self.error_count += 1
        if len(self.first_errors) < _ERRORS_KEPT:
            self.first_errors.append(problem)
        self.job.log(f"error: {problem}", "stderr")

    def error_summary(self) -> Optional[str]:
        """``restic could not restore 2 items: /a: …; /b: …`` (``None`` without errors)."""
        if not self.error_count:
            return None
        items = "1 item" if self.error_count == 1 else f"{self.error_count} items"
        more = self.error_count - len(self.first_errors)
        text = f"restic could not restore {items}: " + "; ".join(self.first_errors)
        return text + (f" (and {more} more)" if more > 0 else "")

    def counts(self) -> Dict[str, int]:
        if self.summary is not None:
            return dict(self.summary)
        files = self.size.files if self.size is not None else 0
        size = self.size.bytes if self.size is not None else 0
        return {
            "files_restored": files,
            "bytes_restored": size,
            "total_files": files,
            "total_bytes": size,
        }


class TargetWatcher:
    """restic < 0.16: ``job.progress`` every 2 s from what has appeared under the target."""

    def __init__(
        self, job: Job, target: str, size: SelectionSize, interval: float = WATCH_INTERVAL_SECONDS
    ):
        self.job = job
        self.target = target
        self.size = size
        self.interval = interval
        self._stop = threading.Event()
        self._started_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="restore-progress", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self.interval + 5)

    def _run(self) -> None:
        last: Optional[Tuple[int, int]] = None
        while not self._stop.wait(self.interval):
            try:
                seen = tree_size(self.target)
            except OSError:
                continue
            if seen != last:
                last = seen
                self.job.emit("job.progress", self.progress(*seen))

    def progress(self, files: int, size: int) -> Dict[str, Any]:
        files, size = min(files, self.size.files), min(size, self.size.bytes)
        if self.size.bytes:
            percent = 100.0 * size / self.size.bytes
        else:
            percent = 100.0 * files / self.size.files if self.size.files else 0.0
        return {
            "percent": round(percent, 2),
            "files_done": files,
            "total_files": self.size.files,
            "bytes_done": size,
            "total_bytes": self.size.bytes,
            "seconds_elapsed": int(time.monotonic() - self._started_at),
        }


def tree_size(root: str) -> Tuple[int, int]:
    """Regular files under ``root`` and their bytes written so far (symlinks not followed).

    restic 0.14 creates each file at its full size before it writes the blobs (a sparse
    file): the blocks allocated, not the size, tell how much has arrived.
    """
    files = size = 0
    for directory, _, names in os.walk(root):
        for name in names:
            try:
                status = os.lstat(os.path.join(directory, name))
            except OSError:
                continue
            if status.st_mode & 0o170000 == 0o100000:
                files += 1
                size += min(status.st_size, status.st_blocks * 512)
    return files, size
