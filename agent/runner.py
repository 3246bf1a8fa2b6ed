"""Runs ``job.run`` commands, one thread per job, reporting through the spool.

Every job emits ``job.started`` first and ``job.finished`` last (with ``final_seq`` and
``lines_dropped``); what comes between depends on its kind.
"""

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from agent.jobspool import JobSpool
from agent.restic import errors, execute
from agent.restic.environment import Masker, restic_environment, secrets_of
from agent.restic.probe import probe_argv
from agent.spool import Spool

CredentialsLoader = Callable[[], Optional[Dict[str, Any]]]
log = logging.getLogger(__name__)


@dataclass
class JobResult:
    status: str  # succeeded | warning | failed | cancelled
    exit_code: Optional[int] = None
    error: Optional[str] = None
    stats: Dict[str, Any] = field(default_factory=dict)


@dataclass
class RunningJob:
    job_id: int
    attempt_id: str
    kind: str
    params: Dict[str, Any]
    cancel: threading.Event = field(default_factory=threading.Event)
    cancel_reason: Optional[str] = None
    thread: Optional[threading.Thread] = None


class Runner:
    def __init__(
        self,
        spool: Spool,
        load_credentials: CredentialsLoader,
        cache_dir: Optional[Path] = None,
        restic_binary: str = "restic",
        grace_seconds: float = execute.GRACE_SECONDS,
        on_job_end: Optional[Callable[[int], None]] = None,
    ):
        self.spool = spool
        self.load_credentials = load_credentials
        self.cache_dir = cache_dir
        self.restic_binary = restic_binary
        self.grace_seconds = grace_seconds
        self.on_job_end = on_job_end
        self._lock = threading.Lock()
        self._jobs: Dict[int, RunningJob] = {}
        self._kinds: Dict[str, Callable[[RunningJob, JobSpool], JobResult]] = {
            "probe": self._run_probe,
        }

    # -- control -----------------------------------------------------------------------

    def prepare(self, job_id: int, attempt_id: str) -> JobSpool:
        """Create the job's spool on disk (before the command is acked)."""
        return self.spool.open_job(job_id, attempt_id)

    def start(self, job_id: int, attempt_id: str, kind: str, params: Dict[str, Any]) -> bool:
        """Run the job on its own thread; False if this attempt already runs."""
        job = RunningJob(job_id, attempt_id, kind, params or {})
        with self._lock:
            if job_id in self._jobs:
                return False
            self._jobs[job_id] = job
        job.thread = threading.Thread(target=self._run, args=(job,), name=f"job-{job_id}")
        job.thread.daemon = True
        job.thread.start()
        return True

    def cancel(
        self, job_id: int, attempt_id: Optional[str] = None, reason: str = "cancelled"
    ) -> bool:
        """Ask a running job to stop (SIGINT, SIGKILL after the grace); False if not running."""
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None or (attempt_id and attempt_id != job.attempt_id):
            return False
        if not job.cancel.is_set():
            log.info("job %s: stopping it (%s)", job_id, reason)
            job.cancel_reason = reason
            job.cancel.set()
        return True

    def running(self) -> List[Dict[str, Any]]:
        with self._lock:
            jobs = sorted(self._jobs.values(), key=lambda job: job.job_id)
        return [{"job_id": j.job_id, "attempt_id": j.attempt_id, "state": "running"} for j in jobs]

    def is_running(self, job_id: int) -> bool:
        with self._lock:
            return job_id in self._jobs

    def wait_idle(self, timeout: Optional[float] = None) -> bool:
        """Wait for every running job to end; False on timeout."""
        with self._lock:
            threads = [job.thread for job in self._jobs.values() if job.thread is not None]
        for thread in threads:
            thread.join(timeout)
        return not self.running()

    def recover_interrupted(self) -> List[int]:
        """At start-up: jobs whose spool never got a ``job.finished`` died with the agent."""
        recovered = []
        for job_spool in self.spool.jobs():
            if job_spool.finished or self.is_running(job_spool.job_id):
                continue
            message = "the agent stopped while this job ran; its outcome is unknown"
            job_spool.append("agent", message)
            self._finish(job_spool, JobResult("failed", error=message))
            recovered.append(job_spool.job_id)
        return recovered

    # -- the job thread ----------------------------------------------------------------

    def _run(self, job: RunningJob) -> None:
        job_spool = self.spool.open_job(job.job_id, job.attempt_id)
        try:
            self.spool.add_event("job.started", job.job_id, job.attempt_id, {})
            handler = self._kinds.get(job.kind)
            if handler is None:
                message = f"this agent version cannot run {job.kind} jobs"
                job_spool.append("agent", message)
                result = JobResult("failed", error=message)
            else:
                result = handler(job, job_spool)
        except errors.ResticNotInstalled as error:
            result = JobResult("failed", error=str(error))
        except Exception as error:  # never leave a job without its job.finished
            log.exception("job %s: the agent failed while running it", job.job_id)
            result = JobResult("failed", error=f"agent error: {error.__class__.__name__}")
        try:
            self._finish(job_spool, result)
        finally:
            with self._lock:
                self._jobs.pop(job.job_id, None)
            if self.on_job_end is not None:
                self.on_job_end(job.job_id)

    def _finish(self, job_spool: JobSpool, result: JobResult) -> None:
        final_seq, lines_dropped = job_spool.finish()
        data = {
            "status": result.status,
            "exit_code": result.exit_code,
            "error": result.error,
            "stats": result.stats,
            "final_seq": final_seq,
            "lines_dropped": lines_dropped,
        }
        self.spool.add_event("job.finished", job_spool.job_id, job_spool.attempt_id, data)
        log.info("job %s finished: %s", job_spool.job_id, result.status)

    def _restic(self, job: RunningJob, job_spool: JobSpool, argv, credentials) -> execute.Outcome:
        job_spool.append("agent", "$ " + " ".join(argv))
        return execute.run(
            argv,
            restic_environment(credentials, self.cache_dir),
            on_line=job_spool.append,
            cancel=job.cancel,
            masker=Masker(secrets_of(credentials)),
            grace_seconds=self.grace_seconds,
        )

    # -- kinds -------------------------------------------------------------------------

    def _run_probe(self, job: RunningJob, job_spool: JobSpool) -> JobResult:
        """``restic cat config``: ready / missing (the probe worked) or an error."""
        credentials = self.load_credentials()
        if not credentials or not credentials.get("url"):
            reason = "this host has no repository credentials yet"
            self._repo_status(job, "error", reason)
            return JobResult("failed", error=reason)
        try:
            outcome = self._restic(job, job_spool, probe_argv(self.restic_binary), credentials)
        except errors.ResticNotInstalled as error:
            self._repo_status(job, "error", str(error))
            raise
        if outcome.cancelled:
            return JobResult("cancelled", outcome.exit_code, f"stopped: {job.cancel_reason}")
        failure = errors.classify(outcome.exit_code, outcome.stderr_tail)
        if failure is None:
            self._repo_status(job, "ready", None)
            return JobResult("succeeded", outcome.exit_code)
        if isinstance(failure, errors.RepositoryNotFound):
            self._repo_status(job, "missing", str(failure))
            return JobResult("succeeded", outcome.exit_code)
        if isinstance(failure, errors.WrongPassword):
            reason = "wrong repository password (or no matching key)"
        elif isinstance(failure, errors.Interrupted):
            reason = "restic was interrupted by a signal the agent did not send"
        else:
            reason = str(failure)
        self._repo_status(job, "error", reason)
        return JobResult("failed", outcome.exit_code, reason)

    def _repo_status(self, job: RunningJob, status: str, reason: Optional[str]) -> None:
        data = {"status": status, "reason": reason}
        self.spool.add_event("repo.status", job.job_id, job.attempt_id, data)
