"""The agent's wiring: its files, the job runner, the uploader, the scheduler, and the
conversation with the server (:mod:`agent.loop`) whose commands :mod:`agent.commands`
carries out; jobs and uploads run on their own threads.

In-process use (tests, a contract test against a Flask server)::

    agent = Agent(home, start_delay=0)
    stop = threading.Event()
    thread = threading.Thread(target=agent.run_forever, args=(stop,))
    thread.start(); ...; stop.set(); thread.join()
"""

import logging
import threading
import uuid
from datetime import datetime
from typing import Any, Callable, Dict, List, Optional

from agent.backoff import start_delay
from agent.client import Client, HostDeleted
from agent.commands import Commands
from agent.config import AgentConfig, State, load_config, open_secret_store
from agent.facts import host_facts
from agent.journal import INTERRUPTED_JOBS_FILE, InterruptedJobs, SeenCommands
from agent.loop import BackgroundCall, ServerLoop
from agent.paths import AgentPaths, PathLike, resolve_home
from agent.repository import remove_leftover_run_dirs
from agent.rpc import RpcRunner
from agent.runner import Runner
from agent.runs import PlannedRun, QueuedRuns, RunQueue
from agent.scheduler import TICK_SECONDS, Scheduler, local_now
from agent.schedules import Schedule, ScheduleSet, ScheduleStore
from agent.spool import Spool
from agent.status import StatusFile
from agent.uploader import Uploader

SHUTDOWN_UPLOAD_SECONDS = 5.0
log = logging.getLogger(__name__)


class Agent:
    def __init__(
        self,
        home: Optional[PathLike] = None,
        restic_binary: str = "restic",
        start_delay: Optional[float] = None,
        grace_seconds: float = 10.0,
        clock: Optional[Callable[[], datetime]] = None,
        scheduler_tick_seconds: float = TICK_SECONDS,
    ):
        self.paths = AgentPaths(resolve_home(home))
        self.config: AgentConfig = load_config(self.paths.config)
        self.state = State.load(self.paths.state)
        self.secrets = open_secret_store(self.paths, self.state)
        self.schedules = ScheduleStore(self.paths.schedules, self.state.secrets_key())
        self.seen = SeenCommands(self.paths.seen_commands)
        self.spool = Spool(self.paths.spool, self.config.spool_max_mb * 1024 * 1024)
        self.status = StatusFile(self.paths.status)
        self.boot_id = uuid.uuid4().hex
        self.restic_binary = restic_binary
        self._start_delay = start_delay
        self.runner = Runner(
            self.spool,
            self.secrets.load,
            cache_dir=self.paths.cache,
            restic_binary=restic_binary,
            grace_seconds=grace_seconds,
            on_job_end=self._job_ended,
            allow_hooks=self.config.allow_hooks,
            hook_timeout_seconds=self.config.hook_timeout_seconds,
            restore_paths=self.config.restore_paths,
            backup_paths=self.config.backup_paths,
            agent_home=self.paths.home,
            interrupted=InterruptedJobs(self.paths.home / INTERRUPTED_JOBS_FILE),
        )
        self.client = self._new_client()
        self.rpc = RpcRunner(
            self._new_client,
            self.secrets.load,
            restic_binary=restic_binary,
            cache_dir=self.paths.cache,
            backup_paths=self.config.backup_paths,
            agent_home=self.paths.home,
            restic_version=lambda: self.runner.restic_version,
        )
        remove_leftover_run_dirs(self.paths.home)
        self.uploader = Uploader(
            self._new_client(),
            self.spool,
            settings=lambda: self.state.settings,
            cancel_job=self.runner.cancel,
            is_running=self.runner.is_running,
            on_run_registered=self.runner.adopt,
        )
        self.scheduler = Scheduler(
            self.paths.schedule_state,
            self._schedule_fired,
            now=clock or local_now,
            tick_seconds=scheduler_tick_seconds,
        )
        self.runs = RunQueue(
            self._new_client(),
            self.runner,
            self.spool,
            self._run_started,
            store=QueuedRuns(self.paths.queued_runs, self.state.secrets_key()),
        )
        self.commands = Commands(
            self.seen,
            self.secrets,
            self.runner,
            self.spool,
            self.rpc,
            self.schedules,
            self.scheduler,
            self.uploader,
            running_changed=lambda: self.status.update(running=self.running()),
        )
        self.loop = ServerLoop(
            self.config.server_url,
            self.client,
            self.status,
            self.boot_id,
            self.running,
            on_answer=self._answered,
            on_command=self.handle_command,
        )
        self.spool.on_event = self._event_spooled
        self.facts: Dict[str, Any] = {}

    def _new_client(self) -> Client:
        client = Client(
            self.config.server_url,
            agent_token=self.state.agent_token,
            ca_file=self.config.ca_file,
            pin_sha256=self.config.pin_sha256,
            poll_wait_seconds=self.state.settings["poll_wait_seconds"],
        )
        client.on_host_deleted = self._host_deleted
        return client

    # A 410 host_deleted from any call (hello, poll, events, logs, runs, rpc) stops the agent.
    deleted: Optional[HostDeleted] = None
    _stop: Optional[threading.Event] = None
    _deleted_lock = threading.Lock()

    def _host_deleted(self, error: HostDeleted) -> None:
        with self._deleted_lock:
            if self.deleted is not None:
                return
            self.deleted = error
        log.error(
            "the server says this host was deleted (%s); stopping — re-enroll it "
            "(restic-manager-agent enroll --force --server … --token …) to back it up again",
            error.message,
        )
        if self._stop is not None:
            self._stop.set()

    # -- start, run, stop --------------------------------------------------------------

    def run_forever(self, stop: Optional[threading.Event] = None) -> int:
        """Run until ``stop`` is set; returns 0. Raises :class:`ProtocolTooOld` on 426 and
        :class:`HostDeleted` once the server answered 410 host_deleted to any call."""
        stop = self._stop = stop or threading.Event()
        uploader_stop = threading.Event()
        uploader_thread = None
        background_stop = threading.Event()
        try:
            self.status.update(state="starting", running=self.running())
            self.seen.prune()
            self.runner.recover_interrupted()
            delay = start_delay() if self._start_delay is None else self._start_delay
            if stop.wait(delay):
                return 0
            self.facts = host_facts(self.restic_binary)
            self.runner.restic_version = self.facts.get("restic_version")  # asked once
            self._start_schedules(background_stop)  # server reachable or not
            self.uploader.flush_once_logged()  # spooled events before hello, if reachable
            uploader_thread = threading.Thread(
                target=self.uploader.run, args=(uploader_stop,), name="uploader", daemon=True
            )
            uploader_thread.start()
            if self.deleted is None and self.loop.hello(stop, self.facts):
                self.loop.poll_forever(stop)
            if self.deleted is not None:
                raise self.deleted
            return 0
        finally:
            background_stop.set()
            self.scheduler.wake()
            uploader_stop.set()
            self.uploader.wake()
            if uploader_thread is not None:
                uploader_thread.join(SHUTDOWN_UPLOAD_SECONDS)
                if not uploader_thread.is_alive():
                    self._final_flush()
            self.status.update(state="stopped", running=self.runner.running())

    def _start_schedules(self, stop: threading.Event) -> None:
        self.scheduler.apply(self.schedules.load())
        for name, target in (("scheduler", self.scheduler.run), ("runs", self.runs.run)):
            threading.Thread(target=target, args=(stop,), name=name, daemon=True).start()

    def _final_flush(self) -> None:
        """Deliver what finished jobs left behind, briefly (the next start sends the rest)."""
        call = BackgroundCall(self.uploader.flush_once_logged)
        call.done.wait(SHUTDOWN_UPLOAD_SECONDS)

    # -- what the server sends ---------------------------------------------------------

    def handle_command(self, command: Dict[str, Any]) -> None:
        """Write the command down, act on it, and queue its ack for the next poll."""
        ack = self.commands.handle(command)
        if ack is not None:
            self.loop.add_ack(ack)

    def pending_acks(self) -> List[Dict[str, Any]]:
        return self.loop.pending_acks()

    def _answered(self, answer: Dict[str, Any]) -> None:
        """A hello or poll answer's settings and reconcile list."""
        self._apply_settings(answer.get("settings"))
        self.commands.reconcile(answer.get("reconcile"))

    def _apply_settings(self, settings: Any) -> None:
        if settings and self.state.update_settings(settings):
            wait = self.state.settings["poll_wait_seconds"]
            self.client.poll_wait_seconds = wait
            self.uploader.client.poll_wait_seconds = wait

    # -- schedules ---------------------------------------------------------------------

    def _schedule_fired(
        self, schedule_set: ScheduleSet, schedule: Schedule, fired_at: datetime
    ) -> None:
        """One backup per group of the schedule, in the order listed, queued."""
        for group_id in schedule.group_ids:
            group = schedule_set.groups[group_id]
            self.runs.submit(
                PlannedRun(
                    kind="backup",
                    params=schedule_set.backup_params(group),
                    fired_at=fired_at,
                    schedule_id=schedule.id,
                    schedule_version=schedule_set.version,
                    retry_max=group.retry_max,
                    retry_backoff_seconds=group.retry_backoff_seconds,
                )
            )

    # -- the running list --------------------------------------------------------------

    def running(self) -> List[Dict[str, Any]]:
        """Jobs restic runs for, plus finished jobs whose data is still spooled."""
        running = self.runner.running()
        busy = {item["job_id"] for item in running}
        for job in self.spool.jobs():
            if isinstance(job.job_id, int) and job.job_id not in busy:
                running.append(
                    {"job_id": job.job_id, "attempt_id": job.attempt_id, "state": "reporting"}
                )
        return running

    def _event_spooled(self, event_type: str) -> None:
        if event_type != "job.progress":  # progress rides along with the next flush
            self.uploader.wake()

    def _run_started(self) -> None:
        self.uploader.wake()
        self._status_changed()

    def _job_ended(self, job_id: int) -> None:
        self.uploader.wake()
        self._status_changed()

    def _status_changed(self) -> None:
        try:
            self.status.update(running=self.running())
        except OSError:
            log.exception("could not write status.json")
