"""``stats``: ``restic --no-lock stats --json --mode raw-data`` → ``repo.stats``."""

from agent.jobcontext import Job, JobResult
from agent.jobparams import NoParams
from agent.restic.stats import parse_raw_data_stats, stats_argv, stats_line


def run(job: Job, params: NoParams) -> JobResult:
    credentials = job.require_credentials()
    outcome = job.restic(stats_argv(job.setup.binary), credentials, capture=True)
    result = job.unsuccessful(outcome)
    if result is not None:
        return result
    stats = parse_raw_data_stats(job.stdout_of(outcome))
    job.emit("repo.stats", stats)
    job.log(stats_line(stats))
    return JobResult("succeeded", outcome.exit_code, None, stats)
