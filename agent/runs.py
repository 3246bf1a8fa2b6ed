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
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from agent.client import Client, ClientError
from agent.config import ConfigError, SecretStore
from agent.journal import isoformat
from agent.runner import Runner
from agent.spool import Spool

HOOK_KEYS = ("pre_hook", "post_hook")
QUEUE_ASSOCIATED_DATA = b"restic-manager-agent:queued-runs"
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

    def to_dict(self) -> Dict[str, Any]:
        return {
            "kind": self.kind,
            "params": self.params,
            "fired_at": isoformat(self.fired_at),
            "schedule_id": self.schedule_id,
            "schedule_version": self.schedule_version,
            "run_id": self.run_id,
        }

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "PlannedRun":
        fired_at = datetime.fromisoformat(str(data["fired_at"]).replace("Z", "+00:00"))
        return cls(
            kind=str(data["kind"]),
            params=dict(data["params"]),
            fired_at=fired_at,
            schedule_id=data.get("schedule_id"),
            schedule_version=data.get("schedule_version"),
            run_id=str(data["run_id"]),
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
    ):
        self.client = client  # this thread's own (a Client is not thread-safe)
        self.runner = runner
        self.spool = spool
        self.on_started = on_started
        self.store = store
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

    def run(self, stop: threading.Event) -> None:
        """Start the queued runs one after the other until ``stop`` is set."""
        while not stop.is_set():
            try:
                planned = self._queue.get(timeout=_STOP_CHECK_SECONDS)
            except queue.Empty:
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
        thread = self.runner.start(key, attempt_id, planned.kind, planned.params)
        self._started(planned)  # from here the job's own spool remembers it
        if thread is None:
            log.error("run %s: job %s already runs here", planned.run_id, key)
            return None
        log.info("run %s started as %s", planned.run_id, f"job {key}" if ids else "offline run")
        self.on_started()
        return thread
