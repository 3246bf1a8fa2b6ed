"""``check``: ``restic check [--read-data-subset=…]``, tried again while another process
holds a lock."""

from agent.jobcontext import Job, JobResult
from agent.jobparams import CheckParams
from agent.restic.check import check_argv


def run(job: Job, params: CheckParams) -> JobResult:
    credentials = job.require_credentials()
    argv = check_argv(job.setup.binary, params.read_data_subset)
    outcome = job.restic_retrying_when_locked(argv, credentials)
    return job.unsuccessful(outcome) or JobResult("succeeded", outcome.exit_code)
