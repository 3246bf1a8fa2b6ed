"""``unlock``: ``restic unlock [--remove-all]``."""

from agent.jobcontext import Job, JobResult
from agent.jobparams import UnlockParams
from agent.restic.unlock import unlock_argv


def run(job: Job, params: UnlockParams) -> JobResult:
    credentials = job.require_credentials()
    outcome = job.restic(unlock_argv(job.setup.binary, params.remove_all), credentials)
    return job.unsuccessful(outcome) or JobResult("succeeded", outcome.exit_code)
