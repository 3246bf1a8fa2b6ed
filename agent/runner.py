"""Runs ``job.run`` commands, one thread per job, reporting through the spool.

Every job emits ``job.started`` first and ``job.finished`` last (with ``final_seq`` and
``lines_dropped``); what comes between depends on its kind. A job that needs the
repository waits for its turn first (:mod:`agent.locks`, saying so in its log), and after
a restart that cut a job short the first such job removes stale locks before it starts.
"""

import contextlib
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

from agent import facts, hooks
from agent.actions import ACTIONS
from agent.config import DEFAULT_BACKUP_PATHS, DEFAULT_RESTORE_PATHS, ConfigError
from agent.jobcontext import (
    LOCK_RETRY_DELAYS,
    Job,
    JobFailed,
    JobResult,
    ResticSetup,
    RunningJob,
    failed_result,
)
from agent.jobparams import InvalidParams, parse_params
from agent.jobspool import JobKey, JobSpool
from agent.journal import InterruptedJobs
from agent.locks import EXCLUSIVE, LOCK_MODES, RepositoryLocks, Turn, waiting_line
from agent.repository import Repository
from agent.restic import errors, execute
from agent.spool import Spool

CredentialsLoader = Callable[[], Optional[Dict[str, Any]]]
log = logging.getLogger(__name__)
_UNKNOWN = object()


class Runner:
    def __init__(
        self,
        spool: Spool,
        load_credentials: CredentialsLoader,
        cache_dir: Optional[Path] = None,
        restic_binary: str = "restic",
        grace_seconds: float = execute.GRACE_SECONDS,
        on_job_end: Optional[Callable[[JobKey], None]] = None,
        restic_version: Any = _UNKNOWN,
        allow_hooks: bool = True,
        hook_timeout_seconds: float = hooks.HOOK_TIMEOUT_SECONDS,
        restore_paths: str = DEFAULT_RESTORE_PATHS,
        backup_paths: str = DEFAULT_BACKUP_PATHS,
        agent_home: Optional[Path] = None,
        interrupted: Optional[InterruptedJobs] = None,
        lock_retry_delays: Sequence[float] = LOCK_RETRY_DELAYS,
    ):
        self.spool = spool
        self.load_credentials = load_credentials
        self.cache_dir = cache_dir
        self.restic_binary = restic_binary
        self.grace_seconds = grace_seconds
        self.on_job_end = on_job_end
        self.allow_hooks = allow_hooks
        self.hook_timeout_seconds = hook_timeout_seconds
        self.restore_paths = restore_paths
        self.backup_paths = backup_paths
        self.agent_home = agent_home
        self.interrupted = interrupted or InterruptedJobs()
        self.lock_retry_delays = lock_retry_delays
        self.repository_locks = RepositoryLocks()
        self._lock = threading.Lock()
        self._jobs: Dict[JobKey, RunningJob] = {}
        self._version = restic_version
        self._version_lock = threading.Lock()

    @property
    def restic_version(self) -> Optional[str]:
        """The installed restic's version, asked once when first needed (``None``: unknown)."""
        with self._version_lock:
            if self._version is _UNKNOWN:
                self._version = facts.restic_version(self.restic_binary)
            return self._version

    @restic_version.setter
    def restic_version(self, version: Optional[str]) -> None:
        with self._version_lock:
            self._version = version

    # -- control -----------------------------------------------------------------------

    def prepare(self, job_id: int, attempt_id: str) -> JobSpool:
        """Create the job's spool on disk (before the command is acked)."""
        return self.spool.open_job(job_id, attempt_id)

    def start(
        self,
        job_id: JobKey,
        attempt_id: str,
        kind: str,
        params: Dict[str, Any],
        on_done: Optional[Callable[[str], None]] = None,
    ) -> Optional[threading.Thread]:
        """Run the job on its own thread (returned); ``None`` if this job already runs.

        ``job_id`` is a run_id (str) for an agent-started run the server has not registered.
        ``on_done`` is called with the job's final status.
        """
        job = RunningJob(job_id, attempt_id, kind, params or {}, on_done=on_done)
        with self._lock:
            if job_id in self._jobs:
                return None
            self._jobs[job_id] = job
            job.thread = threading.Thread(target=self._run, args=(job,), name=f"job-{job_id}")
            job.thread.daemon = True
        job.thread.start()
        return job.thread

    def adopt(self, run_id: str, job_id: int, attempt_id: str) -> None:
        """The server registered the run: it runs on as ``job_id`` (in ``running()`` too)."""
        with self._lock:
            job = self._jobs.pop(run_id, None)
            if job is not None:
                job.job_id, job.attempt_id = job_id, attempt_id
                self._jobs[job_id] = job

    def cancel(
        self, job_id: JobKey, attempt_id: Optional[str] = None, reason: str = "cancelled"
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
        """Registered jobs that run now (a run the server does not know is not listed)."""
        with self._lock:
            jobs = [job for job in self._jobs.values() if isinstance(job.job_id, int)]
        jobs.sort(key=lambda job: job.job_id)
        return [{"job_id": j.job_id, "attempt_id": j.attempt_id, "state": "running"} for j in jobs]

    def is_running(self, job_id: JobKey) -> bool:
        with self._lock:
            return job_id in self._jobs

    def wait_idle(self, timeout: Optional[float] = None) -> bool:
        """Wait for every running job to end; False on timeout."""
        with self._lock:
            threads = [job.thread for job in self._jobs.values() if job.thread is not None]
        for thread in threads:
            thread.join(timeout)
        with self._lock:
            return not self._jobs

    def recover_interrupted(self) -> List[JobKey]:
        """At start-up: jobs whose spool never got a ``job.finished`` died with the agent.

        Their restic may have left a stale lock: the next job that needs the repository
        runs ``restic unlock`` first (remembered on disk until it has).
        """
        recovered: List[JobKey] = []
        for job_spool in self.spool.jobs():
            if job_spool.finished or self.is_running(job_spool.job_id):
                continue
            message = "the agent stopped while this job ran; its outcome is unknown"
            job_spool.append("agent", message)
            self._finish(job_spool, JobResult("failed", error=message))
            recovered.append(job_spool.job_id)
        if recovered:
            self.interrupted.add(recovered)
        return recovered

    # -- the job thread ----------------------------------------------------------------

    def _run(self, job: RunningJob) -> None:
        job_spool = self.spool.open_job(job.job_id, job.attempt_id)
        try:
            self.spool.add_event("job.started", job.job_id, job.attempt_id, {})
            result = self._run_kind(job, job_spool)
        except Exception as error:  # never leave a job without its job.finished
            log.exception("job %s: the agent failed while running it", job.job_id)
            result = JobResult("failed", error=f"agent error: {error.__class__.__name__}")
        try:
            self._finish(job_spool, result)
        finally:
            with self._lock:
                job_id = job.job_id  # the server's id if the run was registered meanwhile
                self._jobs.pop(job_id, None)
            if self.on_job_end is not None:
                self.on_job_end(job_id)
            if job.on_done is not None:
                try:
                    job.on_done(result.status)
                except Exception:
                    log.exception("job %s: its end could not be handled", job_id)

    def _run_kind(self, job: RunningJob, job_spool: JobSpool) -> JobResult:
        """The one error funnel: what stops a job early becomes a failed result."""
        action = ACTIONS.get(job.kind)
        try:
            if action is None:
                raise JobFailed(f"this agent version cannot run {job.kind} jobs")
            repository = Repository(
                self.load_credentials(),
                self.cache_dir,
                home=self.agent_home,
                restic_version=lambda: self.restic_version,
            )
            context = Job(job, job_spool, self.spool, repository, self._setup())
            params = parse_params(job.kind, job.params)
            mode = LOCK_MODES.get(job.kind)
            everyday = repository.everyday
            if mode is None or everyday is None:  # no lock, or it fails for want of credentials
                return action(context, params)
            return self._run_in_turn(
                context, everyday["url"], mode, lambda: action(context, params)
            )
        except (InvalidParams, JobFailed, errors.ResticError, ConfigError) as error:
            return failed_result(job_spool, job.kind, error)

    def _run_in_turn(
        self, job: Job, repository: str, mode: str, action: Callable[[], JobResult]
    ) -> JobResult:
        """Run ``action`` once the repository is this job's (shared, or to itself)."""
        if self.interrupted.pending():
            with self._turn(job, repository, EXCLUSIVE) as granted:
                if not granted:
                    return _cancelled_while_waiting(job)
                self._remove_stale_locks(job)
        with self._turn(job, repository, mode) as granted:
            if not granted:
                return _cancelled_while_waiting(job)
            return action()

    @contextlib.contextmanager
    def _turn(self, job: Job, repository: str, mode: str) -> Iterator[bool]:
        """Hold the repository for the block; yields False when cancelled while waiting."""
        running = job.running
        turn = Turn(repository, lambda: running.job_id, running.kind, mode)
        waited_since: List[float] = []

        def on_wait(blockers: Sequence[Turn]) -> None:
            waited_since[:] = waited_since or [time.monotonic()]
            job.log(waiting_line(turn, blockers))

        granted = self.repository_locks.acquire(turn, running.cancel, on_wait)
        if granted and waited_since:
            seconds = time.monotonic() - waited_since[0]
            job.log(f"the repository is free: {running.kind} starts (waited {seconds:.0f} s)")
        try:
            yield granted
        finally:
            if granted:
                self.repository_locks.release(turn)

    def _remove_stale_locks(self, job: Job) -> None:
        """After a restart that cut jobs short: ``restic unlock`` (stale locks only)."""
        interrupted = self.interrupted.pending()
        if not interrupted:
            return  # a job before this one did it
        names = ", ".join(str(job_id) for job_id in interrupted)
        why = (
            f"the agent was restarted while job {names} ran: running restic unlock to remove "
            "the stale locks its restic may have left (stale locks only)"
        )
        if job.remove_stale_locks(job.require_credentials(), why):
            self.interrupted.clear()

    def _setup(self) -> ResticSetup:
        return ResticSetup(
            binary=self.restic_binary,
            version=lambda: self.restic_version,
            cache_dir=self.cache_dir,
            grace_seconds=self.grace_seconds,
            allow_hooks=self.allow_hooks,
            hook_timeout_seconds=self.hook_timeout_seconds,
            restore_paths=self.restore_paths,
            backup_paths=self.backup_paths,
            agent_home=self.agent_home,
            lock_retry_delays=self.lock_retry_delays,
        )

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


def _cancelled_while_waiting(job: Job) -> JobResult:
    reason = job.running.cancel_reason or "cancelled"
    if reason == "cancelled":
        message = "the job was cancelled while it waited for the repository; restic did not run"
    else:
        message = f"the job was stopped ({reason}) while it waited for the repository"
    job.log(message)
    return JobResult("cancelled", None, message)
