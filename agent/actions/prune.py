"""``prune``: ``restic prune`` (text) with the admin credentials when the host has them,
tried again while another process holds a lock; then the repository size is reported."""

from agent.jobcontext import Job, JobResult
from agent.jobparams import NoParams
from agent.restic.prune import prune_argv


def run(job: Job, params: NoParams) -> JobResult:
    credentials = job.require_credentials(admin=True)
    outcome = job.restic_retrying_when_locked(prune_argv(job.setup.binary), credentials)
    result = job.unsuccessful(outcome)
    if result is not None:
        return result
    job.report_stats()
    return JobResult("succeeded", outcome.exit_code)
