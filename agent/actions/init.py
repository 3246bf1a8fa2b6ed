"""``init``: ``restic init``; a repository that already exists counts as done. Reports
``repo.status`` ready or init_failed (with restic's words)."""

from agent.jobcontext import Job, JobFailed, JobResult
from agent.jobparams import NoParams
from agent.restic import errors
from agent.restic.init import init_argv, repository_id


def run(job: Job, params: NoParams) -> JobResult:
    try:
        credentials = job.require_credentials()
        argv = init_argv(job.setup.binary, job.setup.version())
        outcome = job.restic(argv, credentials, on_stdout=lambda text: _init_line(job, text))
    except (JobFailed, errors.ResticNotInstalled) as error:
        job.report_repository_status("init_failed", str(error))
        raise
    if outcome.cancelled:
        return job.cancelled(outcome)
    failure = errors.classify(outcome.exit_code, outcome.stderr_tail, "init")
    if isinstance(failure, errors.AlreadyInitialised):
        job.log("a repository already exists at this location: nothing to initialise")
    elif failure is not None:
        job.report_repository_status("init_failed", errors.describe(failure))
        return job.failed(outcome, failure)
    job.report_repository_status("ready", None)
    return JobResult("succeeded", outcome.exit_code)


def _init_line(job: Job, text: str) -> None:
    # 0.15+ prints one JSON line; say it the way 0.14 does.
    identifier = repository_id([text]) if text.startswith("{") else None
    job.log(f"created restic repository {identifier}" if identifier else text, "stdout")
