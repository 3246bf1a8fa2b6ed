"""``probe``: ``restic cat config`` → ``repo.status`` ready / missing (the probe worked) or
error."""

from agent.jobcontext import Job, JobFailed, JobResult
from agent.jobparams import NoParams
from agent.restic import errors
from agent.restic.probe import probe_argv


def run(job: Job, params: NoParams) -> JobResult:
    try:
        credentials = job.require_credentials()
        outcome = job.restic(probe_argv(job.setup.binary), credentials)
    except (JobFailed, errors.ResticNotInstalled) as error:
        job.report_repository_status("error", str(error))
        raise
    if outcome.cancelled:
        return job.cancelled(outcome)
    failure = errors.classify(outcome.exit_code, outcome.stderr_tail)
    if failure is None:
        job.report_repository_status("ready", None)
        return JobResult("succeeded", outcome.exit_code)
    if isinstance(failure, errors.RepositoryNotFound):
        job.report_repository_status("missing", str(failure))
        return JobResult("succeeded", outcome.exit_code)
    reason = errors.describe(failure)
    job.report_repository_status("error", reason)
    return JobResult("failed", outcome.exit_code, reason)
