"""``prune``: ``restic prune`` (text) with the admin credentials when the host has them,
then the repository size is reported."""

from agent.jobcontext import Job, JobResult
from agent.jobparams import NoParams
from agent.restic.prune import prune_argv


def run(job: Job, params: NoParams) -> JobResult:
    credentials = job.require_credentials(admin=True)
    outcome = job.restic(prune_argv(job.setup.binary), credentials)
    result = job.unsuccessful(outcome)
    if result is not None:
        return result
    job.report_stats()
    return JobResult("succeeded", outcome.exit_code)
