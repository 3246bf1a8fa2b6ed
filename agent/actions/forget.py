"""``forget``: restic forget once per policy (one per tag for the maintenance forget), with
the admin credentials when the host has them; kept/removed counts in the log and the
stats, then the snapshot list and the repository size are reported (not on a dry run).
Each restic forget is tried again while another process holds a lock."""

from typing import List

from agent.jobcontext import Job, JobResult
from agent.jobparams import ForgetParams
from agent.restic.forget import counts, forget_argv, group_lines, parse_forget


def run(job: Job, runs: List[ForgetParams]) -> JobResult:
    credentials = job.require_credentials(admin=True)
    kept = removed = 0
    outcome = None
    for params in runs:
        argv = forget_argv(
            job.setup.binary, params.policy, params.tags, params.group_by, params.dry_run
        )
        outcome = job.restic_retrying_when_locked(argv, credentials, capture=True)
        result = job.unsuccessful(outcome)
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
    assert outcome is not None  # parse_params gives at least one run
    return JobResult("succeeded", outcome.exit_code, None, stats)
