"""The run loop: hello once, then long-poll forever; jobs and uploads on their own threads.

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

from agent.backoff import Backoff, start_delay
from agent.client import (
    Client,
    ClientError,
    PinMismatch,
    ProtocolTooOld,
    RetryableError,
    Unauthorized,
)
from agent.config import (
    AgentConfig,
    ConfigError,
    State,
    load_config,
    open_secret_store,
)
from agent.facts import host_facts
from agent.journal import SeenCommands
from agent.paths import AgentPaths, PathLike, resolve_home
from agent.rpc import RpcRunner, rpc_id_of
from agent.runner import Runner
from agent.runs import PlannedRun, QueuedRuns, RunQueue
from agent.scheduler import TICK_SECONDS, Scheduler, local_now
from agent.schedules import (
    InvalidScheduleSet,
    Schedule,
    ScheduleSet,
    ScheduleStore,
    parse_schedule_set,
)
from agent.spool import Spool
from agent.status import StatusFile
from agent.uploader import Uploader

SHUTDOWN_UPLOAD_SECONDS = 5.0
_STOP_CHECK_SECONDS = 0.25
log = logging.getLogger(__name__)


class CommandRejected(Exception):
    """A command the agent will not carry out; the message becomes the ack's reason."""


class _Call:
    """Runs one blocking request on a daemon thread, so a stop never waits for a long poll.

    An abandoned poll is harmless: commands it may have carried are redelivered when their
    lease expires.
    """

    def __init__(self, function: Callable[..., Any], *args: Any):
        self.done = threading.Event()
        self.result: Any = None
        self.error: Optional[BaseException] = None
        thread = threading.Thread(target=self._run, args=(function, args), daemon=True)
        thread.start()

    def _run(self, function, args) -> None:
        try:
            self.result = function(*args)
        except BaseException as error:
            self.error = error
        finally:
            self.done.set()

    def wait(self, stop: threading.Event) -> Any:
        """The result; raises what the call raised; ``_Stopped`` if ``stop`` came first."""
        while not self.done.wait(_STOP_CHECK_SECONDS):
            if stop.is_set():
                raise _Stopped()
        if self.error is not None:
            raise self.error
        return self.result


class _Stopped(Exception):
    pass


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
        self._acks: List[Dict[str, Any]] = []
        self._acks_lock = threading.Lock()
        self._backoff = Backoff()
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
        )
        self.client = self._new_client()
        self.rpc = RpcRunner(
            self._new_client,
            self.secrets.load,
            restic_binary=restic_binary,
            cache_dir=self.paths.cache,
        )
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
        self.spool.on_event = self._event_spooled
        self.facts: Dict[str, Any] = {}

    def _new_client(self) -> Client:
        return Client(
            self.config.server_url,
            agent_token=self.state.agent_token,
            ca_file=self.config.ca_file,
            pin_sha256=self.config.pin_sha256,
            poll_wait_seconds=self.state.settings["poll_wait_seconds"],
        )

    # -- the loop ----------------------------------------------------------------------

    def run_forever(self, stop: Optional[threading.Event] = None) -> int:
        """Run until ``stop`` is set; returns 0. Raises :class:`ProtocolTooOld` on 426."""
        stop = stop or threading.Event()
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
            if self._hello(stop):
                self._poll_forever(stop)
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
        call = _Call(self.uploader.flush_once_logged)
        call.done.wait(SHUTDOWN_UPLOAD_SECONDS)

    def _hello(self, stop: threading.Event) -> bool:
        while not stop.is_set():
            try:
                answer = _Call(self.client.hello, self.facts, self.boot_id, self.running()).wait(
                    stop
                )
            except _Stopped:
                return False
            except ProtocolTooOld:
                self.status.failed("protocol_too_old", "the server needs a newer agent")
                raise
            except ClientError as error:
                self._wait_after(error, stop)
                continue
            self._backoff.reset()
            log.info("connected to %s as host %s", self.config.server_url, answer.get("host_id"))
            self._apply_settings(answer.get("settings"))
            self._reconcile(answer.get("reconcile"))
            self.status.connected(self.running())
            return True
        return False

    def _poll_forever(self, stop: threading.Event) -> None:
        while not stop.is_set():
            with self._acks_lock:
                acks = list(self._acks)
            try:
                answer = _Call(self.client.poll, self.boot_id, acks, self.running()).wait(stop)
            except _Stopped:
                return
            except ProtocolTooOld:
                self.status.failed("protocol_too_old", "the server needs a newer agent")
                raise
            except ClientError as error:
                self._wait_after(error, stop)
                continue
            self._forget_acks(acks)
            self._backoff.reset()
            if answer:
                self._apply_settings(answer.get("settings"))
                self._reconcile(answer.get("reconcile"))
                for command in answer.get("commands") or []:
                    self.handle_command(command)
            self.status.connected(self.running())

    def _wait_after(self, error: ClientError, stop: threading.Event) -> None:
        if isinstance(error, Unauthorized):
            message = "the server refused this agent's token: re-enroll this host"
            delay = self._backoff.max_delay()
            state = "unauthorized"
        elif isinstance(error, PinMismatch):
            message, delay, state = str(error), self._backoff.max_delay(), "pin_mismatch"
        elif isinstance(error, RetryableError):
            message = str(error)
            delay = self._backoff.next_delay(error.retry_after)
            state = "unreachable"
        else:
            message = f"the server refused the request: {error}"
            delay = self._backoff.next_delay()
            state = "refused"
        log.warning("%s; retrying in %.1f s", message, delay)
        self.status.failed(state, message, self.running())
        stop.wait(delay)

    # -- what the server sends ---------------------------------------------------------

    def handle_command(self, command: Dict[str, Any]) -> None:
        """Write the command down, act on it, and queue its ack for the next poll."""
        command_id = command.get("command_id")
        if not isinstance(command_id, str) or not command_id:
            log.error("ignoring a command without a command_id")
            return
        if command_id in self.seen:
            self._ack(command_id, "duplicate")
            return
        handlers = {
            "config.update": self._config_update,
            "job.run": self._job_run,
            "job.cancel": self._job_cancel,
            "job.watch": self._job_watch,
            "schedule.set": self._schedule_set,
            "rpc.ls": self._rpc,
            "rpc.dump": self._rpc,
        }
        handler = handlers.get(str(command.get("type")))
        try:
            if handler is None:
                raise CommandRejected("unknown command type")
            result = handler(command)
        except CommandRejected as rejection:
            self.seen.record(command_id)
            self._ack(command_id, "rejected", str(rejection))
            return
        self._ack(command_id, result)

    def _config_update(self, command: Dict[str, Any]) -> str:
        """Seal the repository credentials; ``admin_repository`` is kept beside them.

        ``admin_repository`` absent: unchanged; ``null``: removed; an object: replaced.
        """
        payload = command.get("payload") or {}
        has_admin = "admin_repository" in payload
        everyday = payload.get("repository")
        if everyday is not None or not has_admin:
            everyday = _repository_credentials(everyday, "repository")
        admin = payload.get("admin_repository")
        if admin is not None:
            admin = _repository_credentials(admin, "admin_repository")
        try:
            stored = self.secrets.load() or {}
        except ConfigError:
            stored = {}  # unreadable: this update is what repairs it
        if everyday is not None:
            stored = dict(everyday, admin_repository=stored.get("admin_repository"))
        if has_admin:
            stored["admin_repository"] = admin
        if stored.get("admin_repository") is None:
            stored.pop("admin_repository", None)
        self.secrets.save(stored)
        self.seen.record(command["command_id"])
        log.info(
            "repository credentials updated (admin credentials: %s)",
            "yes" if stored.get("admin_repository") else "no",
        )
        return "accepted"

    def _job_run(self, command: Dict[str, Any]) -> str:
        job_id, attempt_id = command.get("job_id"), command.get("attempt_id")
        payload = command.get("payload") or {}
        kind = payload.get("kind")
        if not isinstance(job_id, int) or not isinstance(attempt_id, str) or not kind:
            raise CommandRejected("job.run needs job_id, attempt_id and payload.kind")
        if self.runner.is_running(job_id):
            raise CommandRejected(f"job {job_id} is already running on this host")
        existing = self.spool.job(job_id)
        if existing is not None and existing.attempt_id == attempt_id and existing.finished:
            # Ran here before a crash cut the journal write short: never run an attempt twice.
            self.seen.record(command["command_id"])
            return "duplicate"
        params = dict(payload.get("params") or {})
        if kind == "backup":
            params = self._with_host_limits(params)
        self.runner.prepare(job_id, attempt_id)  # on disk before the ack: survives a crash
        self.seen.record(command["command_id"])
        self.runner.start(job_id, attempt_id, str(kind), params)
        self.status.update(running=self.running())
        self.uploader.wake()
        return "accepted"

    def _rpc(self, command: Dict[str, Any]) -> str:
        """``rpc.ls`` / ``rpc.dump``: written down, then done on a worker thread."""
        payload = command.get("payload") or {}
        try:
            rpc_id_of(payload)
        except ValueError as error:
            raise CommandRejected(f"{command.get('type')}: {error}") from None
        self.seen.record(command["command_id"])
        if not self.rpc.submit(str(command["type"]), dict(payload)):
            raise CommandRejected("too many rpc calls are waiting on this host")
        return "accepted"

    def _with_host_limits(self, params: Dict[str, Any]) -> Dict[str, Any]:
        """The host-wide bandwidth caps where the job's params set none (an override wins)."""
        applied = self.schedules.load()
        if applied is not None:
            for key, cap in (
                ("limit_upload_kib", applied.limit_upload_kib),
                ("limit_download_kib", applied.limit_download_kib),
            ):
                if params.get(key) is None and cap:
                    params[key] = cap
        return params

    def _schedule_set(self, command: Dict[str, Any]) -> str:
        """Seal and apply a newer schedule set, then report ``schedule.applied``."""
        payload = command.get("payload") or {}
        try:
            schedule_set = parse_schedule_set(payload)
        except InvalidScheduleSet as error:
            raise CommandRejected(f"invalid schedule set: {error}") from None
        applied = self.schedules.load()
        if applied is not None and schedule_set.version <= applied.version:
            self.seen.record(command["command_id"])
            log.info(
                "schedule set version %s ignored: version %s is applied",
                schedule_set.version,
                applied.version,
            )
            return "noop"
        self.schedules.save(payload)
        self.seen.record(command["command_id"])
        self.scheduler.apply(schedule_set)
        self.spool.add_event("schedule.applied", data={"version": schedule_set.version})
        log.info(
            "schedule set version %s applied (%d schedules)",
            schedule_set.version,
            len(schedule_set.schedules),
        )
        return "accepted"

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

    def _run_started(self) -> None:
        self.uploader.wake()
        try:
            self.status.update(running=self.running())
        except OSError:
            log.exception("could not write status.json")

    def _job_cancel(self, command: Dict[str, Any]) -> str:
        self.seen.record(command["command_id"])
        job_id = command.get("job_id")
        if isinstance(job_id, int) and self.runner.cancel(job_id, command.get("attempt_id")):
            return "accepted"
        return "noop"

    def _job_watch(self, command: Dict[str, Any]) -> str:
        self.seen.record(command["command_id"])
        job_id = command.get("job_id")
        if isinstance(job_id, int) and self.runner.is_running(job_id):
            self.uploader.mark_watched(job_id)
            return "accepted"
        return "noop"

    def _reconcile(self, items: Any) -> None:
        for item in items or []:
            if not isinstance(item, dict) or item.get("action") != "kill":
                continue
            job_id, reason = item.get("job_id"), str(item.get("reason") or "reconcile")
            if not isinstance(job_id, int):
                continue
            if self.runner.cancel(job_id, item.get("attempt_id"), reason):
                continue
            job = self.spool.job(job_id)
            if job is not None and reason in ("stale_attempt", "unknown_job"):
                log.info("job %s: the server does not want its data (%s)", job_id, reason)
                self.spool.remove_job(job_id)

    def _apply_settings(self, settings: Any) -> None:
        if settings and self.state.update_settings(settings):
            wait = self.state.settings["poll_wait_seconds"]
            self.client.poll_wait_seconds = wait
            self.uploader.client.poll_wait_seconds = wait

    # -- acks and the running list -----------------------------------------------------

    def _ack(self, command_id: str, result: str, reason: Optional[str] = None) -> None:
        ack = {"command_id": command_id, "result": result}
        if reason:
            ack["reason"] = reason
        with self._acks_lock:
            self._acks.append(ack)

    def _forget_acks(self, delivered: List[Dict[str, Any]]) -> None:
        with self._acks_lock:
            self._acks = [ack for ack in self._acks if ack not in delivered]

    def pending_acks(self) -> List[Dict[str, Any]]:
        with self._acks_lock:
            return list(self._acks)

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

    def _job_ended(self, job_id: int) -> None:
        self.uploader.wake()
        try:
            self.status.update(running=self.running())
        except OSError:
            log.exception("could not write status.json")


def _repository_credentials(repository: Any, name: str) -> Dict[str, str]:
    """``{"url", "username", "password"}`` of a command payload; rejects a missing url."""
    if not isinstance(repository, dict) or not isinstance(repository.get("url"), str):
        raise CommandRejected(f"config.update needs {name}.url")
    return {
        key: repository[key]
        for key in ("url", "username", "password")
        if isinstance(repository.get(key), str)
    }
