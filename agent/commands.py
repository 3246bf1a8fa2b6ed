"""What the server sends on the long poll: one handler per command type (docs/protocol.md,
"Commands"), and the reconcile list.

Every command is written down (``seen_commands.json``) before it is acted on, so a
redelivered one is acked ``duplicate`` and never run twice; its ack rides on the next poll.
"""

import logging
from typing import Any, Callable, Dict, Optional

from agent.config import ConfigError, SecretStore
from agent.journal import SeenCommands
from agent.repository import checked_credentials
from agent.restic.backends import BackendRefused
from agent.rpc import RpcRunner, rpc_id_of
from agent.runner import Runner
from agent.scheduler import Scheduler
from agent.schedules import InvalidScheduleSet, ScheduleStore, parse_schedule_set
from agent.spool import Spool
from agent.uploader import Uploader

Command = Dict[str, Any]
Ack = Dict[str, Any]
log = logging.getLogger(__name__)


class CommandRejected(Exception):
    """A command the agent will not carry out; the message becomes the ack's reason."""


class Commands:
    """Acts on the server's commands; :meth:`handle` returns the ack to send."""

    def __init__(
        self,
        seen: SeenCommands,
        secrets: SecretStore,
        runner: Runner,
        spool: Spool,
        rpc: RpcRunner,
        schedules: ScheduleStore,
        scheduler: Scheduler,
        uploader: Uploader,
        running_changed: Callable[[], None],  # a job started: status.json lists it
    ):
        self.seen = seen
        self.secrets = secrets
        self.runner = runner
        self.spool = spool
        self.rpc = rpc
        self.schedules = schedules
        self.scheduler = scheduler
        self.uploader = uploader
        self.running_changed = running_changed
        self._handlers: Dict[str, Callable[[Command], str]] = {
            "config.update": self.config_update,
            "job.run": self.job_run,
            "job.cancel": self.job_cancel,
            "job.watch": self.job_watch,
            "schedule.set": self.schedule_set,
            "rpc.ls": self.rpc_call,
            "rpc.dump": self.rpc_call,
            "rpc.repo_test": self.rpc_call,
        }

    def handle(self, command: Command) -> Optional[Ack]:
        """Write the command down and act on it; its ack (``None``: it has no id)."""
        command_id = command.get("command_id")
        if not isinstance(command_id, str) or not command_id:
            log.error("ignoring a command without a command_id")
            return None
        if command_id in self.seen:
            return _ack(command_id, "duplicate")
        handler = self._handlers.get(str(command.get("type")))
        try:
            if handler is None:
                raise CommandRejected("unknown command type")
            result = handler(command)
        except CommandRejected as rejection:
            self.seen.record(command_id)
            return _ack(command_id, "rejected", str(rejection))
        return _ack(command_id, result)

    # -- one handler per command type --------------------------------------------------

    def config_update(self, command: Command) -> str:
        """Seal the repository credentials; ``admin_repository`` is kept beside them.

        ``admin_repository`` absent: unchanged; ``null``: removed; an object: replaced.
        A value outside the backend's allow-list rejects the whole command: the settings
        already stored stay as they were.
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

    def job_run(self, command: Command) -> str:
        """Start the job; its params are the server's, bandwidth caps resolved included."""
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
        self.runner.prepare(job_id, attempt_id)  # on disk before the ack: survives a crash
        self.seen.record(command["command_id"])
        self.runner.start(job_id, attempt_id, str(kind), params)
        self.running_changed()
        self.uploader.wake()
        return "accepted"

    def job_cancel(self, command: Command) -> str:
        self.seen.record(command["command_id"])
        job_id = command.get("job_id")
        if isinstance(job_id, int) and self.runner.cancel(job_id, command.get("attempt_id")):
            return "accepted"
        return "noop"

    def job_watch(self, command: Command) -> str:
        self.seen.record(command["command_id"])
        job_id = command.get("job_id")
        if isinstance(job_id, int) and self.runner.is_running(job_id):
            self.uploader.mark_watched(job_id)
            return "accepted"
        return "noop"

    def schedule_set(self, command: Command) -> str:
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

    def rpc_call(self, command: Command) -> str:
        """``rpc.ls`` / ``rpc.dump`` / ``rpc.repo_test``: written down, then done on a
        worker thread."""
        payload = command.get("payload") or {}
        try:
            rpc_id_of(payload)
        except ValueError as error:
            raise CommandRejected(f"{command.get('type')}: {error}") from None
        self.seen.record(command["command_id"])
        if not self.rpc.submit(str(command["type"]), dict(payload)):
            raise CommandRejected("too many rpc calls are waiting on this host")
        return "accepted"

    # -- the reconcile list of hello and poll answers ----------------------------------

    def reconcile(self, items: Any) -> None:
        """Stop the jobs the server does not want (and drop their spooled data)."""
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


def _ack(command_id: str, result: str, reason: Optional[str] = None) -> Ack:
    ack = {"command_id": command_id, "result": result}
    if reason:
        ack["reason"] = reason
    return ack


def _repository_credentials(repository: Any, name: str) -> Dict[str, Any]:
    """The repository section of a command payload as the agent stores it; rejects a
    missing url and whatever the backend's allow-list refuses."""
    if not isinstance(repository, dict) or not isinstance(repository.get("url"), str):
        raise CommandRejected(f"config.update needs {name}.url")
    try:
        return checked_credentials(repository)
    except BackendRefused as refusal:
        raise CommandRejected(f"config.update {name}.{refusal}") from None
