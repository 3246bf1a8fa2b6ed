"""``backup``: pre-hook, ``restic backup --json``, post-hook (docs/protocol.md, "Hooks").

A failed pre-hook fails the job before restic starts; the post-hook runs whatever
happened, with the job's status in ``RM_JOB_STATUS``. restic's ``status`` lines become
``job.progress`` events (at most one a second), per-file ``error`` lines on stderr become
``error: <path>: <reason>`` log lines, source paths restic skipped because they do not
exist are collected, and the ``summary`` becomes the job's stats and one readable line.
Then the snapshot list and the repository size are reported.
"""

from typing import Any, Dict, List, Optional, Sequence

from agent.backup_policy import BackupRefused, policy_of
from agent.config import ConfigError
from agent.jobcontext import Job, JobFailed, JobResult, Throttle, failed_result
from agent.jobparams import BackupParams, InvalidParams
from agent.restic import errors
from agent.restic.backup import (
    backup_argv,
    missing_paths_error,
    nothing_exists_error,
    nothing_to_back_up,
    read_stdout_line,
    skipped_source,
    summary_line,
)
from agent.restic.messages import file_error_text, json_object, stderr_text
from agent.restic.snapshots import full_id

PARTIAL_BACKUP = "some source files could not be read; the snapshot was saved without them"
# stats["error_paths"]: the first unreadable paths, so an alert can name them (each cut to a
# sane length: the server keeps the stats with the job).
ERROR_PATHS_KEPT = 10
ERROR_PATH_CHARACTERS = 1024
BACKUP_PROGRESS_FPS = 2  # twice the event rate, so the 1 s throttle always has a fresh line
HOOKS_DISABLED = "hooks are disabled on this host (allow_hooks = false in agent.conf)"
_STOPPING_ERRORS = (InvalidParams, JobFailed, errors.ResticError, ConfigError)


def run(job: Job, params: BackupParams) -> JobResult:
    """The hooks around the backup: the post-hook runs whatever happened.

    The host owner's vetoes come first (``allow_hooks``, ``backup_paths``): a refused backup
    runs neither hook nor restic.
    """
    if params.has_hooks and not job.setup.allow_hooks:
        raise JobFailed(HOOKS_DISABLED)
    excludes = allowed_excludes(job, params)
    result = JobResult("failed", error="agent error")  # if something unexpected escapes
    try:
        result = (_pre_hook(job, params) if params.pre_hook else None) or _backup(
            job, params, excludes
        )
    except _STOPPING_ERRORS as error:
        result = failed_result(job.job_spool, "backup", error)
    finally:
        if params.post_hook:
            _post_hook(job, params, result)
    return result


def allowed_excludes(job: Job, params: BackupParams) -> List[str]:
    """The ``--exclude`` patterns that keep secret stores out of the snapshot; raises
    JobFailed when a path may not be backed up (``backup_paths`` in agent.conf)."""
    policy = policy_of(job.setup)
    try:
        policy.check(params.paths)
    except BackupRefused as refusal:
        raise JobFailed(str(refusal)) from None
    stores: List[str] = []
    excludes: List[str] = []
    for path in params.paths:
        for store, pattern in policy.excludes(path):
            if pattern not in excludes:
                stores.append(store)
                excludes.append(pattern)
    if stores:
        job.log(
            "not backing up the secret stores "
            + ", ".join(dict.fromkeys(stores))
            + " (kept out by backup_paths in agent.conf)"
        )
    return excludes


# -- hooks -----------------------------------------------------------------------------


def _hook_variables(job: Job, params: BackupParams, which: str) -> Dict[str, str]:
    return {
        "RM_HOOK": which,
        "RM_JOB_KIND": "backup",
        "RM_JOB_ID": str(job.running.job_id),
        "RM_GROUP": params.group or "",
    }


def _pre_hook(job: Job, params: BackupParams) -> Optional[JobResult]:
    """Run the pre-hook; a result (failed/cancelled) when the backup must not run."""
    assert params.pre_hook is not None
    outcome = job.hook("pre", params.pre_hook, _hook_variables(job, params, "pre"))
    if outcome.cancelled:
        message = "the job was cancelled while its pre-hook ran; restic did not run"
        job.log(message)
        return JobResult("cancelled", outcome.exit_code, message)
    if outcome.timed_out:
        message = f"pre-hook timed out after {job.setup.hook_timeout_seconds:g} s"
    elif outcome.exit_code != 0:
        message = f"pre-hook failed with status {outcome.exit_code}"
    else:
        return None
    job.log(message + "; restic did not run")
    return JobResult("failed", outcome.exit_code, message)


def _post_hook(job: Job, params: BackupParams, result: JobResult) -> None:
    """Run the post-hook; its failure is logged, the job's status stays."""
    assert params.post_hook is not None
    variables = _hook_variables(job, params, "post")
    variables["RM_JOB_STATUS"] = result.status
    snapshot_id = (result.stats or {}).get("snapshot_id")
    if snapshot_id:
        variables["RM_SNAPSHOT_ID"] = str(snapshot_id)
    try:
        # After a cancel the post-hook still runs (it may undo what the pre-hook did).
        outcome = job.hook(
            "post", params.post_hook, variables, cancellable=result.status != "cancelled"
        )
    except errors.ResticError as error:
        job.log(f"post-hook could not run: {error}")
        return
    if outcome.timed_out:
        job.log(f"post-hook timed out after {job.setup.hook_timeout_seconds:g} s")
    elif outcome.cancelled:
        job.log("post-hook stopped: the job was cancelled")
    elif outcome.exit_code != 0:
        job.log(f"post-hook failed with status {outcome.exit_code}")


# -- restic backup ---------------------------------------------------------------------


def _backup(job: Job, params: BackupParams, secret_excludes: Sequence[str] = ()) -> JobResult:
    """restic backup, then the snapshot list and the repository size.

    A source path that does not exist makes the job a ``warning`` (restic 0.14 to 0.18 exit
    0 and only say so on stderr), none existing makes it ``failed``: either way the missing
    paths are named in the error and listed in ``stats.missing_paths``.
    """
    credentials = job.require_credentials()
    reporter = BackupReporter(job, paths=params.paths)
    argv = backup_argv(
        job.setup.binary,
        params.paths,
        [*params.excludes, *secret_excludes],
        params.tags,
        params.limit_upload_kib,
        params.limit_download_kib,
    )
    outcome = job.restic(
        argv,
        credentials,
        on_stdout=reporter.stdout_line,
        on_stderr=reporter.stderr_line,
        progress_fps=BACKUP_PROGRESS_FPS,
    )
    if outcome.cancelled:
        return job.cancelled(outcome)
    failure = errors.classify(outcome.exit_code, outcome.stderr_tail, "backup")
    missing = reporter.missing_paths
    if failure is not None and nothing_to_back_up(outcome.stderr_tail):
        missing = missing or list(params.paths)  # restic said none exists
        message = nothing_exists_error(missing)
        job.log(message)
        return JobResult("failed", outcome.exit_code, message, {"missing_paths": missing})
    if failure is not None and not isinstance(failure, errors.PartialBackup):
        return job.failed(outcome, failure)
    stats = reporter.stats()
    if stats is None:
        job.log("restic printed no summary: the backup's numbers are unknown")
        stats = {"error_count": reporter.error_count, "missing_paths": missing}
        if reporter.error_paths:
            stats["error_paths"] = list(reporter.error_paths)
    else:
        job.log(summary_line(stats), "stdout")
    snapshots = job.report_snapshots()
    if snapshots and stats.get("snapshot_id") and len(stats["snapshot_id"]) < 64:
        # 0.14 prints the short id; the list just fetched knows the full one.
        stats["snapshot_id"] = full_id(stats["snapshot_id"], snapshots) or stats["snapshot_id"]
    job.report_stats()
    problems = []
    if missing:
        problems.append(missing_paths_error(missing))
        job.log(problems[-1])
    # Exit 3 with every file read means a missing source (restic 0.19 exits 3 for those).
    if stats.get("error_count") or (failure is not None and not missing):
        problems.append(PARTIAL_BACKUP)
    if problems:
        return JobResult("warning", outcome.exit_code, "; ".join(problems), stats)
    return JobResult("succeeded", outcome.exit_code, None, stats)


# -- progress and output ---------------------------------------------------------------


class BackupReporter:
    """Receives ``backup --json`` output line by line (stdout and stderr threads)."""

    def __init__(self, job: Job, throttle: Optional[Throttle] = None, paths: Sequence[str] = ()):
        self.job = job
        self.throttle = throttle or Throttle()
        self.paths = list(paths)
        self.summary: Optional[Dict[str, Any]] = None
        self.error_count = 0  # per-file errors seen on stderr
        self.error_paths: List[str] = []  # the first ERROR_PATHS_KEPT of their items
        self._skipped: List[str] = []  # written by the stderr thread only

    def stdout_line(self, text: str) -> None:
        kind, value = read_stdout_line(text)
        if kind == "progress":
            value["error_count"] = max(value["error_count"], self.error_count)
            if self.throttle.due():
                self.job.emit("job.progress", value)
        elif kind == "summary":
            self.summary = value
        elif kind == "text":
            self.job.log(value, "stdout")

    def stderr_line(self, text: str) -> None:
        skipped = skipped_source(text, self.paths)
        if skipped is not None and skipped not in self._skipped:
            self._skipped.append(skipped)
        message = json_object(text)
        if message is not None and message.get("message_type") == "error":
            if skipped is None:  # a missing source is counted apart, not as a file error
                self.error_count += 1
                self._note_error_path(message.get("item"))
            self.job.log(file_error_text(message), "stderr")
        else:
            self.job.log(stderr_text(text), "stderr")

    def _note_error_path(self, item: Any) -> None:
        # restic reports a directory once while scanning and again while archiving it.
        if not isinstance(item, str) or not item or len(self.error_paths) >= ERROR_PATHS_KEPT:
            return
        item = item[:ERROR_PATH_CHARACTERS]
        if item not in self.error_paths:
            self.error_paths.append(item)

    @property
    def missing_paths(self) -> List[str]:
        """The source paths restic skipped, in the order the job gave them."""
        skipped = self._skipped
        given = [path for path in self.paths if path in skipped]
        return given + [path for path in skipped if path not in given]

    def stats(self) -> Optional[Dict[str, Any]]:
        """The summary's stats with the error count, the first unreadable paths (when there
        are any) and the missing paths (``None`` if restic printed no summary)."""
        if self.summary is None:
            return None
        stats = dict(self.summary, error_count=self.error_count, missing_paths=self.missing_paths)
        if self.error_paths:
            stats["error_paths"] = list(self.error_paths)
        return stats
