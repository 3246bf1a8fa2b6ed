"""What each job kind does (docs/protocol.md, "Job kinds"): restic, events, outcome.

Every function takes the running :class:`~agent.job.Job` and returns its
:class:`~agent.job.JobResult`. Wrong params raise ``InvalidParams`` and missing
credentials ``JobFailed``; the runner turns both into a failed job.
"""

from typing import Callable, Dict, Optional

from agent import jobparams
from agent.config import ConfigError
from agent.diff_job import run_diff
from agent.job import Job, JobFailed, JobResult, failed_result
from agent.progress import BackupReporter
from agent.restic import errors, execute
from agent.restic.backup import (
    backup_argv,
    missing_paths_error,
    nothing_exists_error,
    nothing_to_back_up,
    summary_line,
)
from agent.restic.check import check_argv
from agent.restic.forget import counts, forget_argv, group_lines, parse_forget
from agent.restic.init import init_argv, repository_id
from agent.restic.probe import probe_argv
from agent.restic.prune import prune_argv
from agent.restic.snapshots import full_id, parse_snapshots, snapshots_argv
from agent.restic.stats import parse_raw_data_stats, stats_argv, stats_line
from agent.restic.unlock import unlock_argv
from agent.restore_job import run_restore

PARTIAL_BACKUP = "some source files could not be read; the snapshot was saved without them"
BACKUP_PROGRESS_FPS = 2  # twice the event rate, so the 1 s throttle always has a fresh line
HOOKS_DISABLED = "hooks are disabled on this host (allow_hooks = false in agent.conf)"
_STOPPING_ERRORS = (jobparams.InvalidParams, JobFailed, errors.ResticError, ConfigError)


def run_probe(job: Job) -> JobResult:
    """``restic cat config``: ready / missing (the probe worked) or an error."""
    try:
        credentials = job.require_credentials()
        outcome = job.restic(probe_argv(job.setup.binary), credentials)
    except (JobFailed, errors.ResticNotInstalled) as error:
        _repo_status(job, "error", str(error))
        raise
    if outcome.cancelled:
        return job.cancelled(outcome)
    failure = errors.classify(outcome.exit_code, outcome.stderr_tail)
    if failure is None:
        _repo_status(job, "ready", None)
        return JobResult("succeeded", outcome.exit_code)
    if isinstance(failure, errors.RepositoryNotFound):
        _repo_status(job, "missing", str(failure))
        return JobResult("succeeded", outcome.exit_code)
    reason = errors.describe(failure)
    _repo_status(job, "error", reason)
    return JobResult("failed", outcome.exit_code, reason)


def run_init(job: Job) -> JobResult:
    """``restic init``; a repository that already exists counts as done."""
    try:
        credentials = job.require_credentials()
        argv = init_argv(job.setup.binary, job.setup.version())
        outcome = job.restic(argv, credentials, on_stdout=lambda text: _init_line(job, text))
    except (JobFailed, errors.ResticNotInstalled) as error:
        _repo_status(job, "init_failed", str(error))
        raise
    if outcome.cancelled:
        return job.cancelled(outcome)
    failure = errors.classify(outcome.exit_code, outcome.stderr_tail, "init")
    if isinstance(failure, errors.AlreadyInitialised):
        job.log("a repository already exists at this location: nothing to initialise")
    elif failure is not None:
        _repo_status(job, "init_failed", errors.describe(failure))
        return job.failed(outcome, failure)
    _repo_status(job, "ready", None)
    return JobResult("succeeded", outcome.exit_code)


def _init_line(job: Job, text: str) -> None:
    # 0.15+ prints one JSON line; say it the way 0.14 does.
    identifier = repository_id([text]) if text.startswith("{") else None
    job.log(f"created restic repository {identifier}" if identifier else text, "stdout")


def run_backup(job: Job) -> JobResult:
    """pre-hook, restic backup, post-hook (docs/protocol.md, "Hooks").

    A failed pre-hook fails the job before restic starts; the post-hook runs whatever
    happened, with the job's status in ``RM_JOB_STATUS``.
    """
    params = jobparams.backup_params(job.params)
    if params.has_hooks and not job.setup.allow_hooks:
        raise JobFailed(HOOKS_DISABLED)
    result = JobResult("failed", error="agent error")  # if something unexpected escapes
    try:
        result = (_pre_hook(job, params) if params.pre_hook else None) or _backup(job, params)
    except _STOPPING_ERRORS as error:
        result = failed_result(job.job_spool, "backup", error)
    finally:
        if params.post_hook:
            _post_hook(job, params, result)
    return result


def _hook_variables(job: Job, params: jobparams.BackupParams, which: str) -> Dict[str, str]:
    return {
        "RM_HOOK": which,
        "RM_JOB_KIND": "backup",
        "RM_JOB_ID": str(job.running.job_id),
        "RM_GROUP": params.group or "",
    }


def _pre_hook(job: Job, params: jobparams.BackupParams) -> Optional[JobResult]:
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


def _post_hook(job: Job, params: jobparams.BackupParams, result: JobResult) -> None:
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


def _backup(job: Job, params: jobparams.BackupParams) -> JobResult:
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
        params.excludes,
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


def run_snapshots(job: Job) -> JobResult:
    credentials = job.require_credentials()
    outcome = job.restic(snapshots_argv(job.setup.binary), credentials, capture=True)
    result = _unsuccessful(job, outcome)
    if result is not None:
        return result
    snapshots = parse_snapshots(job.stdout_of(outcome))
    job.emit("snapshots.report", {"snapshots": snapshots})
    job.log(f"the repository has {len(snapshots)} snapshots")
    return JobResult("succeeded", outcome.exit_code, None, {"count": len(snapshots)})


def run_forget(job: Job) -> JobResult:
    """restic forget once per policy (one per tag for the maintenance forget)."""
    runs = jobparams.forget_params(job.params)
    credentials = job.require_credentials(admin=True)
    kept = removed = 0
    outcome = None
    for params in runs:
        argv = forget_argv(
            job.setup.binary, params.policy, params.tags, params.group_by, params.dry_run
        )
        outcome = job.restic(argv, credentials, capture=True)
        result = _unsuccessful(job, outcome)
        if result is not None:
            return result
        groups = parse_forget(job.stdout_of(outcome))
        for line in group_lines(groups, params.dry_run):
            job.log(line, "stdout")
        run_kept, run_removed = counts(groups)
        kept, removed = kept + run_kept, removed + run_removed
    dry_run = runs[0].dry_run
    if not dry_run:
        job.report_snapshots()
        job.report_stats()
    stats = {"kept": kept, "removed": removed, "dry_run": dry_run}
    return JobResult("succeeded", outcome.exit_code, None, stats)


def run_prune(job: Job) -> JobResult:
    credentials = job.require_credentials(admin=True)
    outcome = job.restic(prune_argv(job.setup.binary), credentials)
    result = _unsuccessful(job, outcome)
    if result is not None:
        return result
    job.report_stats()
    return JobResult("succeeded", outcome.exit_code)


def run_check(job: Job) -> JobResult:
    subset = jobparams.read_data_subset(job.params)
    credentials = job.require_credentials()
    outcome = job.restic(check_argv(job.setup.binary, subset), credentials)
    return _unsuccessful(job, outcome) or JobResult("succeeded", outcome.exit_code)


def run_unlock(job: Job) -> JobResult:
    remove_all = jobparams.remove_all(job.params)
    credentials = job.require_credentials()
    outcome = job.restic(unlock_argv(job.setup.binary, remove_all), credentials)
    return _unsuccessful(job, outcome) or JobResult("succeeded", outcome.exit_code)


def run_stats(job: Job) -> JobResult:
    credentials = job.require_credentials()
    outcome = job.restic(stats_argv(job.setup.binary), credentials, capture=True)
    result = _unsuccessful(job, outcome)
    if result is not None:
        return result
    stats = parse_raw_data_stats(job.stdout_of(outcome))
    job.emit("repo.stats", stats)
    job.log(stats_line(stats))
    return JobResult("succeeded", outcome.exit_code, None, stats)


def _unsuccessful(job: Job, outcome: execute.Outcome) -> Optional[JobResult]:
    """The result of a cancelled or failed run; ``None`` when restic succeeded."""
    if outcome.cancelled:
        return job.cancelled(outcome)
    failure = errors.classify(outcome.exit_code, outcome.stderr_tail)
    return None if failure is None else job.failed(outcome, failure)


def _repo_status(job: Job, status: str, reason: Optional[str]) -> None:
    job.emit("repo.status", {"status": status, "reason": reason})


KINDS: Dict[str, Callable[[Job], JobResult]] = {
    "probe": run_probe,
    "init": run_init,
    "backup": run_backup,
    "snapshots": run_snapshots,
    "forget": run_forget,
    "prune": run_prune,
    "check": run_check,
    "unlock": run_unlock,
    "stats": run_stats,
    "restore": run_restore,
    "diff": run_diff,
}
