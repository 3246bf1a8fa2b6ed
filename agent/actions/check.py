"""``check``: ``restic check [--read-data-subset=…]``."""

from agent.jobcontext import Job, JobResult
from agent.jobparams import CheckParams
from agent.restic.check import check_argv


def run(job: Job, params: CheckParams) -> JobResult:
    credentials = job.require_credentials()
    outcome = job.restic(check_argv(job.setup.binary, params.read_data_subset), credentials)
    return job.unsuccessful(outcome) or JobResult("succeeded", outcome.exit_code)
