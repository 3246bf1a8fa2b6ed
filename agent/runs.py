"""Jobs the agent starts itself (a schedule fired): registered with ``POST /runs`` when the
server answers, else run under their ``run_id`` and registered later by the uploader
(docs/protocol.md, "POST /runs").

One run at a time, in the order they were fired: two backups of the same host at once
would only compete for the disk and the network. Runs fired but not started yet are kept
sealed on disk (their params hold hook bodies), so an agent stopped in between starts them
when it comes back: the scheduler already counts their slot as fired.
"""

import logging
import queue
import threading
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from agent.client import Client, ClientError
from agent.config import ConfigError, SecretStore
from agent.journal import isoformat
from agent.runner import Runner
from agent.spool import Spool

HOOK_KEYS = ("pre_hook", "post_hook")
QUEUE_ASSOCIATED_DATA = b"restic-manager-agent:queued-runs"
MAX_RETRY_DELAY = 30 * 60  # seconds: backoff doubles up to this
_STOP_CHECK_SECONDS = 0.25
log = logging.getLogger(__name__)


@dataclass
class PlannedRun:
    kind: str
    params: Dict[str, Any]  # hooks included: they never leave this process
    fired_at: datetime
    schedule_id: Optional[int] = None
    schedule_version: Optional[int] = None
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    attempt: int = 1
    retry_max: int = 0  # the group's: a failed run is tried again this many times
    retry_backoff_seconds: int = 300
    not_before: Optional[datetime] = None  # a retry waits for its backoff

    def retry(self, now: datetime) -> Optional["PlannedRun"]:
        """The next try of a failed scheduled run, or ``None`` when none is left."""
        if self.schedule_id is None or self.attempt > self.retry_max:
            return None
        delay = min(self.retry_backoff_seconds * 2 ** (self.attempt - 1), MAX_RETRY_DELAY)
        return replace(
            self,
            run_id=uuid.uuid4().hex,
            attempt=self.attempt + 1,
            not_before=now + timedelta(seconds=delay),
        )

    def to_dict(self) -> Dict[str, Any]:
        return {
            "kind": self.kind,
            "params": self.params,
            "fired_at": isoformat(self.fired_at),
            "schedule_id": self.schedule_id,
            "schedule_version": self.schedule_version,
            "run_id": self.run_id,
            "attempt": self.attempt,
            "retry_max": self.retry_max,
            "retry_backoff_seconds": self.retry_backoff_seconds,
            "not_before": isoformat(self.not_before) if self.not_before else None,
        }

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "PlannedRun":
        fired_at = _parse_time(data["fired_at"])
        return cls(
            kind=str(data["kind"]),
            params=dict(data["params"]),
            fired_at=fired_at,
            schedule_id=data.get("schedule_id"),
            schedule_version=data.get("schedule_version"),
            run_id=str(data["run_id"]),
            attempt=int(data.get("attempt") or 1),
            retry_max=int(data.get("retry_max") or 0),
            retry_backoff_seconds=int(data.get("retry_backoff_seconds") or 300),
            not_before=_parse_time(data.get("not_before")),
        )

    def registration(self) -> Dict[str, Any]:
        """The ``POST /runs`` body (hook bodies never travel back to the server)."""
        return {
            "run_id": self.run_id,
            "schedule_id": self.schedule_id,
            "schedule_version": self.schedule_version,
            "kind": self.kind,
            "params": {k: v for k, v in self.params.items() if k not in HOOK_KEYS},
            "fired_at": isoformat(self.fired_at),
        }


def _parse_time(value: Any) -> Optional[datetime]:
    if not value:
        return None
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def registered_ids(answer: Any) -> Optional[Tuple[int, str]]:
    """``(job_id, attempt_id)`` of a ``POST /runs`` answer; ``None`` if it has none."""
    if not isinstance(answer, dict):
        return None
    job_id, attempt_id = answer.get("job_id"), answer.get("attempt_id")
    if isinstance(job_id, bool) or not isinstance(job_id, int) or not isinstance(attempt_id, str):
        return None
    return job_id, attempt_id


class QueuedRuns:
    """The runs fired but not started yet, sealed on disk (``queued-runs.sealed``)."""

    def __init__(self, path: Path, key: bytes):
        self._sealed = SecretStore(path, key, QUEUE_ASSOCIATED_DATA)

    def load(self) -> List[PlannedRun]:
        try:
            data = self._sealed.load() or {}
            return [PlannedRun.from_dict(item) for item in data.get("runs", [])]
        except (ConfigError, ValueError, KeyError, TypeError):
            log.exception("the queued runs cannot be read; they are dropped")
            return []

    def save(self, runs: List[PlannedRun]) -> None:
        self._sealed.save({"runs": [run.to_dict() for run in runs]})


class RunQueue:
    def __init__(
        self,
        client: Client,
        runner: Runner,
        spool: Spool,
        on_started: Callable[[], None] = lambda: None,
        store: Optional[QueuedRuns] = None,
        now: Optional[Callable[[], datetime]] = None,
    ):
        self.client = client  # this thread's own (a Client is not thread-safe)
        self.runner = runner
        self.spool = spool
        self.on_started = on_started
        self.store = store
        self.now = now or (lambda: datetime.now(timezone.utc))
        self._delayed: List[PlannedRun] = []  # retries waiting for their backoff
        self._lock = threading.Lock()
        self._waiting: List[PlannedRun] = store.load() if store is not None else []
        self._queue: queue.Queue[PlannedRun] = queue.Queue()
        for run in self._waiting:
            log.info("run %s was fired before the agent stopped: starting it", run.run_id)
            self._queue.put(run)

    def submit(self, run: PlannedRun) -> None:
        with self._lock:
            self._waiting.append(run)
            self._persist()
        self._queue.put(run)

    def _started(self, run: PlannedRun) -> None:
        with self._lock:
            self._waiting = [item for item in self._waiting if item.run_id != run.run_id]
            self._persist()

    def _persist(self) -> None:
        if self.store is not None:
            self.store.save(self._waiting)

    def pending(self) -> int:
        return self._queue.qsize()

    def next_due(self) -> Optional[PlannedRun]:
        """The next run to start now (waits briefly); retries wait for their backoff."""
        now = self.now()
        with self._lock:
            due = [run for run in self._delayed if run.not_before <= now]
            self._delayed = [run for run in self._delayed if run.not_before > now]
        for run in due:
            self._queue.put(run)
        try:
            planned = self._queue.get(timeout=_STOP_CHECK_SECONDS)
        except queue.Empty:
            return None
        if planned.not_before is not None and planned.not_before > now:
            with self._lock:
                self._delayed.append(planned)
            return None
        return planned

    def run(self, stop: threading.Event) -> None:
        """Start the queued runs one after the other until ``stop`` is set."""
        while not stop.is_set():
            planned = self.next_due()
            if planned is None:
                continue
            thread = self.start(planned)
            while thread is not None and thread.is_alive() and not stop.is_set():
                thread.join(_STOP_CHECK_SECONDS)

    def start(self, planned: PlannedRun) -> Optional[threading.Thread]:
        """Register (if the server answers) and start one run; returns its job thread."""
        body = planned.registration()
        try:
            ids = registered_ids(self.client.register_run(body))
            if ids is None:
                log.error("run %s: the server's answer has no job id", planned.run_id)
        except ClientError as error:
            log.warning("run %s: not registered (%s); running it anyway", planned.run_id, error)
            ids = None
        if ids is not None:
            job_id, attempt_id = ids
            self.runner.prepare(job_id, attempt_id)
            key: Any = job_id
        else:
            self.spool.open_run(planned.run_id, body)  # the uploader registers it later
            key, attempt_id = planned.run_id, planned.run_id
        thread = self.runner.start(
            key,
            attempt_id,
            planned.kind,
            planned.params,
            on_done=lambda status: self.finished(planned, status),
        )
        self._started(planned)  # from here the job's own spool remembers it
        if thread is None:
            log.error("run %s: job %s already runs here", planned.run_id, key)
            return None
        log.info("run %s started as %s", planned.run_id, f"job {key}" if ids else "offline run")
        self.on_started()
        return thread

    def finished(self, planned: PlannedRun, status: str) -> None:
        """A failed scheduled run is tried again after its backoff (the group's retry)."""
        if status != "failed":
            return
        retry = planned.retry(self.now())
        if retry is None:
            if planned.schedule_id is not None and planned.retry_max:
                log.warning("run %s failed; no retry left", planned.run_id)
            return
        log.info(
            "run %s failed; try %d of %d at %s",
            planned.run_id,
            retry.attempt,
            retry.retry_max + 1,
            isoformat(retry.not_before),
        )
        self.submit(retry)
