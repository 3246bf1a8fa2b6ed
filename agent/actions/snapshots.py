"""``snapshots``: ``restic --no-lock snapshots --json`` → ``snapshots.report`` (the complete
list)."""

from agent.jobcontext import Job, JobResult
from agent.jobparams import NoParams
from agent.restic.snapshots import parse_snapshots, snapshots_argv


def run(job: Job, params: NoParams) -> JobResult:
    credentials = job.require_credentials()
    outcome = job.restic(snapshots_argv(job.setup.binary), credentials, capture=True)
    result = job.unsuccessful(outcome)
    if result is not None:
        return result
    snapshots = parse_snapshots(job.stdout_of(outcome))
    job.emit("snapshots.report", {"snapshots": snapshots})
    job.log(f"the repository has {len(snapshots)} snapshots")
    return JobResult("succeeded", outcome.exit_code, None, {"count": len(snapshots)})
