"""What every job kind runs with (the actions in :mod:`agent.actions`): its spool, its
cancel flag, its repository, the restic calls it makes, and the reports they share.

Every action takes a :class:`Job` and its typed params and returns a :class:`JobResult`.
Wrong params raise ``InvalidParams`` and a job that cannot go on ``JobFailed``; the runner
turns both into a failed job.
"""

import contextlib
import shlex
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from agent import hooks
from agent.config import DEFAULT_BACKUP_PATHS, DEFAULT_RESTORE_PATHS
from agent.jobparams import InvalidParams
from agent.jobspool import JobKey, JobSpool
from agent.repository import Credentials, Repository
from agent.restic import backends, errors, execute
from agent.restic.messages import stderr_text
from agent.restic.snapshots import parse_snapshots, snapshots_argv
from agent.restic.stats import parse_raw_data_stats, stats_argv, stats_line
from agent.restic.unlock import takes_lock, unlock_argv, with_retry_lock
from agent.spool import Spool

TextHandler = Callable[[str], None]
UNLOCK_TIMEOUT_SECONDS = 300.0  # the clean-up unlock cannot be cancelled; it must end
PROGRESS_INTERVAL_SECONDS = 1.0
# A maintenance job that meets another process's lock tries again after these delays:
# three tries over two minutes (restic 0.16+ also waits up to 2 min itself each time).
LOCK_RETRY_DELAYS = (30.0, 90.0)

_STOP_REASONS = {
    "cancelled": "restic was stopped because the job was cancelled",
    "stale_attempt": "restic was stopped: the server started this job again elsewhere",
    "unknown_job": "restic was stopped: the server does not know this job",
}


@dataclass
class JobResult:
    status: str  # succeeded | warning | failed | cancelled
    exit_code: Optional[int] = None
    error: Optional[str] = None
    stats: Dict[str, Any] = field(default_factory=dict)


@dataclass
class RunningJob:
    job_id: JobKey  # a run_id (str) until the server registers an agent-started run
    attempt_id: str
    kind: str
    params: Dict[str, Any]
    cancel: threading.Event = field(default_factory=threading.Event)
    cancel_reason: Optional[str] = None
    thread: Optional[threading.Thread] = None
    on_done: Optional[Callable[[str], None]] = None  # called with the final status


class JobFailed(Exception):
    """The job cannot go on; ``str()`` is its ``error`` for people to read."""


@dataclass
class ResticSetup:
    """How this agent runs restic (shared by every job)."""

    binary: str = "restic"
    version: Callable[[], Optional[str]] = lambda: None  # asked only by what needs it
    cache_dir: Optional[Path] = None
    grace_seconds: float = execute.GRACE_SECONDS
    allow_hooks: bool = True  # agent.conf's allow_hooks: the host owner's veto
    restore_paths: str = DEFAULT_RESTORE_PATHS  # agent.conf's: where restores may write
    backup_paths: str = DEFAULT_BACKUP_PATHS  # agent.conf's: what the server may read here
    agent_home: Optional[Path] = None  # kept out of backups with the secret stores
    hook_timeout_seconds: float = hooks.HOOK_TIMEOUT_SECONDS
    lock_retry_delays: Sequence[float] = LOCK_RETRY_DELAYS


class Throttle:
    """``due()`` is true at most once per ``interval`` seconds (progress events)."""

    def __init__(
        self,
        interval: float = PROGRESS_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.interval = interval
        self.clock = clock
        self._last: Optional[float] = None

    def due(self) -> bool:
        now = self.clock()
        if self._last is not None and now - self._last < self.interval:
            return False
        self._last = now
        return True


def command_line(argv: Sequence[str]) -> str:
    """``$ restic backup --json -- '/srv/my data'``: shell-quoted, so a pasted line runs the
    same command (secrets are never on argv: they travel in the environment, or in files
    whose paths are all the line shows)."""
    return "$ " + shlex.join(argv)


def failed_result(job_spool: JobSpool, kind: str, error: Exception) -> JobResult:
    """A job stopped by ``error`` (bad params, no credentials, restic): logged, failed."""
    if isinstance(error, InvalidParams):
        message = f"invalid {kind} parameters: {error}"
    else:
        message = str(error)
    job_spool.append("agent", message)
    return JobResult("failed", error=message)


class Job:
    def __init__(
        self,
        running: RunningJob,
        job_spool: JobSpool,
        spool: Spool,
        repository: Repository,
        setup: ResticSetup,
    ):
        self.running = running
        self.job_spool = job_spool
        self.spool = spool
        self.repository = repository
        self.setup = setup
        self._locked_tries = 0  # > 1 once restic_retrying_when_locked had to try again

    # -- reporting ---------------------------------------------------------------------

    def log(self, text: str, stream: str = "agent") -> None:
        self.job_spool.append(stream, text)

    def emit(self, event_type: str, data: Dict[str, Any]) -> None:
        self.spool.add_event(event_type, self.running.job_id, self.running.attempt_id, data)

    # -- credentials -------------------------------------------------------------------

    def require_credentials(self, admin: bool = False) -> Credentials:
        """Everyday credentials; with ``admin``, the admin ones when the host has them."""
        if admin and self.repository.admin is not None:
            self.log("using the admin credentials of the repository")
            return self.repository.admin
        credentials = self.repository.everyday
        if credentials is None:
            raise JobFailed("this host has no repository credentials yet")
        return credentials

    # -- hooks -------------------------------------------------------------------------

    def hook(
        self, which: str, command: str, variables: Dict[str, str], cancellable: bool = True
    ) -> execute.Outcome:
        """Run the ``pre``/``post`` hook; its output goes to the log as ``pre-hook: …``."""
        prefix = f"{which}-hook:"
        self.log(f"{prefix} running (timeout {self.setup.hook_timeout_seconds:g} s)")
        return hooks.run_hook(
            command,
            variables,
            on_line=lambda stream, text: self.log(f"{prefix} {text}"),
            cancel=self.running.cancel if cancellable else None,
            masker=self.repository.masker,
            timeout=self.setup.hook_timeout_seconds,
            grace_seconds=self.setup.grace_seconds,
        )

    # -- running restic ----------------------------------------------------------------

    def restic(
        self,
        argv: Sequence[str],
        credentials: Credentials,
        on_stdout: Optional[TextHandler] = None,
        on_stderr: Optional[TextHandler] = None,
        capture: bool = False,
        progress_fps: float = 1,
    ) -> execute.Outcome:
        """Run restic for this job: the command line and its output go to the job log.

        A command that locks the repository gets ``--retry-lock`` where restic has it
        (0.16+). A restic that died of a signal may leave a stale lock (0.14 to 0.16 do):
        the agent then runs ``restic unlock`` at once, so the next job is not blocked.
        """
        if takes_lock(argv):
            argv = with_retry_lock(argv, self.setup.version())
        on_stdout = on_stdout or (lambda text: self.log(text, "stdout"))
        on_stderr = on_stderr or (lambda text: self.log(stderr_text(text), "stderr"))

        def on_line(stream: str, text: str) -> None:
            (on_stdout if stream == "stdout" else on_stderr)(text)

        with self.restic_setup(credentials, argv, progress_fps) as (full_argv, env):
            self.log(command_line(full_argv))
            outcome = execute.run(
                full_argv,
                env,
                on_line=on_line,
                cancel=self.running.cancel,
                masker=self.repository.masker,
                grace_seconds=self.setup.grace_seconds,
                capture_stdout=capture,
            )
        if outcome.signalled and takes_lock(argv):
            if outcome.killed:
                why = "restic did not stop within the grace period and was killed (SIGKILL)"
            else:
                why = f"restic died of signal {-(outcome.exit_code or 0)}"
            self.remove_stale_locks(
                credentials,
                f"{why}; running restic unlock to remove the stale lock it may have left",
            )
        return outcome

    @contextlib.contextmanager
    def restic_setup(
        self, credentials: Credentials, argv: Sequence[str], progress_fps: float = 1
    ) -> Iterator[Tuple[Tuple[str, ...], Dict[str, str]]]:
        """:meth:`Repository.run_setup`; settings this host refuses fail the job."""
        try:
            setup = self.repository.run_setup(credentials, argv, progress_fps)
            run = setup.__enter__()
        except backends.BackendRefused as refusal:
            raise JobFailed(f"repository settings refused by this host: {refusal}") from None
        except OSError as error:
            raise JobFailed(f"could not write the repository's key files: {error}") from None
        with contextlib.ExitStack() as stack:
            stack.push(setup)
            yield run

    def restic_retrying_when_locked(
        self, argv: Sequence[str], credentials: Credentials, **options: Any
    ) -> execute.Outcome:
        """:meth:`restic` for maintenance: when another process holds a lock, remove stale
        locks and try again after each of ``lock_retry_delays`` (cancellable)."""
        delays = list(self.setup.lock_retry_delays)
        self._locked_tries = 1
        outcome = self.restic(argv, credentials, **options)
        for delay in delays:
            failure = (
                None
                if outcome.cancelled
                else errors.classify(outcome.exit_code, outcome.stderr_tail)
            )
            if not isinstance(failure, errors.RepositoryLocked):
                break
            self.log(
                f"{errors.describe(failure)}; trying again in {delay:g} s "
                f"(try {self._locked_tries + 1} of {len(delays) + 1})"
            )
            self.remove_stale_locks(credentials, "running restic unlock first (stale locks only)")
            if self.running.cancel.wait(delay):
                return execute.Outcome(exit_code=None, cancelled=True)
            self._locked_tries += 1
            outcome = self.restic(argv, credentials, **options)
        return outcome

    def remove_stale_locks(self, credentials: Credentials, why: str) -> bool:
        """``restic unlock`` (stale locks only, never ``--remove-all``); True if it worked.

        Its failure is logged, never the job's outcome.
        """
        self.log(why)
        try:
            with self.restic_setup(credentials, unlock_argv(self.setup.binary)) as (argv, env):
                self.log(command_line(argv))
                unlocked = execute.run(
                    argv,
                    env,
                    on_line=lambda stream, text: self.log(stderr_text(text), stream),
                    masker=self.repository.masker,
                    grace_seconds=self.setup.grace_seconds,
                    timeout=UNLOCK_TIMEOUT_SECONDS,
                )
        except (errors.ResticError, JobFailed) as error:
            self.log(f"restic unlock could not run: {error}")
            return False
        failure = errors.classify(unlocked.exit_code, unlocked.stderr_tail)
        if failure is None and not unlocked.timed_out:
            self.log("restic unlock finished: stale locks are removed")
            return True
        reason = "it took too long" if unlocked.timed_out else errors.describe(failure)
        self.log(f"restic unlock failed ({reason}); run an unlock job before the next one")
        return False

    def query(self, argv: Sequence[str], credentials: Credentials) -> str:
        """stdout of a restic command that prints one JSON document; raises ResticError."""
        outcome = self.restic(argv, credentials, capture=True)
        if outcome.cancelled:
            raise errors.Interrupted(f"stopped: {self.running.cancel_reason}")
        failure = errors.classify(outcome.exit_code, outcome.stderr_tail)
        if failure is not None:
            raise errors.ResticFailed(errors.describe(failure), outcome.exit_code)
        return self.stdout_of(outcome)

    @staticmethod
    def stdout_of(outcome: execute.Outcome) -> str:
        if not outcome.stdout_complete:
            raise errors.UnexpectedOutput("restic printed more than the agent can read")
        return outcome.stdout or ""

    # -- outcomes ----------------------------------------------------------------------

    def cancelled(self, outcome: execute.Outcome) -> JobResult:
        reason = self.running.cancel_reason or "cancelled"
        message = _STOP_REASONS.get(reason, f"restic was stopped ({reason})")
        self.log(message)
        return JobResult("cancelled", outcome.exit_code, message)

    def failed(self, outcome: execute.Outcome, failure: errors.ResticError) -> JobResult:
        message = errors.describe(failure)
        if isinstance(failure, errors.RepositoryLocked) and self._locked_tries > 1:
            message = (
                f"the repository stayed locked through {self._locked_tries} tries over "
                f"{sum(self.setup.lock_retry_delays):g} s; if no other restic is using it, "
                f"run an unlock job ({message})"
            )
            self.log(message)
        return JobResult("failed", outcome.exit_code, message)

    def unsuccessful(self, outcome: execute.Outcome) -> Optional[JobResult]:
        """The result of a cancelled or failed run; ``None`` when restic succeeded."""
        if outcome.cancelled:
            return self.cancelled(outcome)
        failure = errors.classify(outcome.exit_code, outcome.stderr_tail)
        return None if failure is None else self.failed(outcome, failure)

    # -- reports -----------------------------------------------------------------------

    def report_repository_status(self, status: str, reason: Optional[str]) -> None:
        """``repo.status``: ready, missing, error or init_failed (probe and init)."""
        self.emit("repo.status", {"status": status, "reason": reason})

    def report_snapshots(self) -> Optional[List[Dict[str, Any]]]:
        """Send the complete snapshot list; a failure is logged, never the job's outcome."""
        try:
            stdout = self.query(snapshots_argv(self.setup.binary), self._follow_up())
            snapshots = parse_snapshots(stdout)
        except (errors.ResticError, JobFailed) as error:
            self.log(f"could not report the snapshot list: {error}")
            return None
        self.emit("snapshots.report", {"snapshots": snapshots})
        self.log(f"the repository has {len(snapshots)} snapshots")
        return snapshots

    def report_stats(self) -> Optional[Dict[str, Any]]:
        """Send ``repo.stats``; a failure is logged, never the job's outcome."""
        try:
            stdout = self.query(stats_argv(self.setup.binary), self._follow_up())
            stats = parse_raw_data_stats(stdout)
        except (errors.ResticError, JobFailed) as error:
            self.log(f"could not report the repository size: {error}")
            return None
        self.emit("repo.stats", stats)
        self.log(stats_line(stats))
        return stats

    def _follow_up(self) -> Credentials:
        # Read-only and --no-lock: the everyday credentials are enough, even after forget.
        return self.require_credentials()
