"""Durable outbox on disk: events and per-job log records wait here until the server acks.

Layout under ``<home>/spool/``::

    events/000000000042-<event_id>.json    one event per file; lexical order = creation order
    jobs/<job_id>/records.ndjson           {"seq","ts","stream","text"} per line, seq never reused
    jobs/<job_id>/cursor.json              {"attempt_id","acked_seq","next_seq","finished",…}
    jobs/run-<run_id>/…                    the same, plus run.json, for an agent-started run
                                           the server has not registered yet
    dropped.json                           counts not yet reported as agent.spool_dropped

An event file is deleted only once the server acked its id; a job's directory only once the
job finished and every record is committed (or the server said it wants no more).
"""

import json
import logging
import os
import shutil
import threading
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from agent.jobspool import JobKey, JobSpool
from agent.journal import isoformat, utc_now
from agent.paths import (
    atomic_write_bytes,
    atomic_write_json,
    fsync_dir,
    make_private_dir,
    read_json,
)

MAX_EVENTS_PER_BATCH = 500
# Events are tiny and some (job.finished) are the only record of an outcome, so they may
# use a small reserve beyond the quota that log records cannot touch.
EVENT_RESERVE_BYTES = 1024 * 1024
ROOM_FOR_REPORT_BYTES = 64 * 1024

log = logging.getLogger(__name__)


def storable(value: Any) -> Any:
    """``value`` without NUL characters in its strings: the server refuses them in event
    data (restic's stderr, decoded with replacement, can carry one into an error)."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {key: storable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [storable(item) for item in value]
    return value


class Spool:
    def __init__(self, root: Path, max_bytes: int):
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.events_dir = self.root / "events"
        self.jobs_dir = self.root / "jobs"
        self._dropped_path = self.root / "dropped.json"
        for directory in (self.root, self.events_dir, self.jobs_dir):
            make_private_dir(directory)
        self._lock = threading.RLock()
        self._bytes = 0
        self._events: Dict[str, Tuple[Path, Optional[int]]] = {}  # event_id → (file, job_id)
        self._counter = 0
        self._dropped = {"events": 0, "log_records": 0}
        self._dropped_dirty = False
        self._jobs: Dict[JobKey, JobSpool] = {}
        # run_id → (job_id, attempt_id) of runs registered while this process runs: an event
        # a job thread writes under its run_id just after the registration still finds its job.
        self._aliases: Dict[str, Tuple[int, str]] = {}
        self.on_event: Optional[Callable[[str], None]] = None  # e.g. wake the uploader
        self._load()

    # -- loading -----------------------------------------------------------------------

    def _load(self) -> None:
        dropped = read_json(self._dropped_path, default={}) or {}
        for key in self._dropped:
            self._dropped[key] = int(dropped.get(key) or 0)
        for path in sorted(self.events_dir.iterdir()):
            if path.name.startswith(".") or not path.name.endswith(".json"):
                path.unlink()  # a temporary file left by a crash mid-write
                continue
            try:
                event = json.loads(path.read_text(encoding="utf-8"))
            except ValueError:
                log.error("spool: %s is not a valid event; removing it", path.name)
                path.unlink()
                continue
            counter = path.name.partition("-")[0]
            self._events[event["event_id"]] = (path, event.get("job_id"))
            self._counter = max(self._counter, int(counter))
            self._bytes += path.stat().st_size
        for path in sorted(self.jobs_dir.iterdir()):
            job = JobSpool.load(path, self)
            if job is None:
                shutil.rmtree(path, ignore_errors=True)
                continue
            self._jobs[job.job_id] = job
            self._bytes += job.records_bytes

    # -- quota (called by JobSpool too) ------------------------------------------------

    def reserve(self, size: int, for_event: bool = False) -> bool:
        with self._lock:
            limit = self.max_bytes + (EVENT_RESERVE_BYTES if for_event else 0)
            if self._bytes + size > limit:
                return False
            self._bytes += size
            return True

    def release(self, size: int) -> None:
        with self._lock:
            self._bytes = max(0, self._bytes - size)

    def note_dropped(self, events: int = 0, log_records: int = 0) -> None:
        with self._lock:
            self._dropped["events"] += events
            self._dropped["log_records"] += log_records
            self._dropped_dirty = True

    def dropped_counts(self) -> Dict[str, int]:
        with self._lock:
            return dict(self._dropped)

    @property
    def used_bytes(self) -> int:
        with self._lock:
            return self._bytes

    # -- events ------------------------------------------------------------------------

    def add_event(
        self,
        event_type: str,
        job_id: Optional[JobKey] = None,
        attempt_id: Optional[str] = None,
        data: Optional[Dict[str, Any]] = None,
    ) -> Optional[str]:
        """Persist a new event; its id, or ``None`` when the spool is full (counted)."""
        with self._lock:
            if isinstance(job_id, str) and job_id in self._aliases:
                job_id, attempt_id = self._aliases[job_id]
            return self._add_event(event_type, job_id, attempt_id, data)

    def _add_event(
        self,
        event_type: str,
        job_id: Optional[JobKey],
        attempt_id: Optional[str],
        data: Optional[Dict[str, Any]],
    ) -> Optional[str]:
        event = {
            "event_id": uuid.uuid4().hex,
            "type": event_type,
            "job_id": job_id,
            "attempt_id": attempt_id,
            "ts": isoformat(utc_now()),
            "data": storable(data or {}),
        }
        encoded = json.dumps(event, sort_keys=True).encode() + b"\n"
        with self._lock:
            if not self.reserve(len(encoded), for_event=True):
                self.note_dropped(events=1)
                log.warning("spool full: dropped a %s event (will be reported)", event_type)
                return None
            self._counter += 1
            path = self.events_dir / f"{self._counter:012d}-{event['event_id']}.json"
            atomic_write_bytes(path, encoded)
            self._events[event["event_id"]] = (path, job_id)
        if self.on_event is not None:
            self.on_event(event_type)
        return event["event_id"]

    def pending_events(self, limit: int = MAX_EVENTS_PER_BATCH) -> List[Dict[str, Any]]:
        """The oldest spooled events, in creation order."""
        with self._lock:
            paths = sorted(path for path, _ in self._events.values())[:limit]
        events = []
        for path in paths:
            try:
                events.append(json.loads(path.read_text(encoding="utf-8")))
            except FileNotFoundError:
                continue
        return events

    def ack_events(self, event_ids: Iterable[str]) -> int:
        """Delete acked events; returns how many were removed."""
        removed = 0
        with self._lock:
            for event_id in event_ids:
                entry = self._events.pop(event_id, None)
                if entry is None:
                    continue
                path = entry[0]
                try:
                    size = path.stat().st_size
                    path.unlink()
                except FileNotFoundError:
                    continue
                self.release(size)
                removed += 1
            if removed:
                fsync_dir(self.events_dir)
        return removed

    def event_count(self) -> int:
        with self._lock:
            return len(self._events)

    def report_dropped(self) -> Optional[str]:
        """Emit ``agent.spool_dropped`` for the drops so far, once the spool has room again."""
        with self._lock:
            counts = dict(self._dropped)
            if not (counts["events"] or counts["log_records"]):
                return None
            if self._bytes + min(ROOM_FOR_REPORT_BYTES, self.max_bytes // 4) > self.max_bytes:
                return None
            event_id = self.add_event("agent.spool_dropped", data=counts)
            if event_id is not None:
                self._dropped = {"events": 0, "log_records": 0}
                self._dropped_dirty = True
                self.sync()
            return event_id

    # -- jobs --------------------------------------------------------------------------

    def open_job(self, job_id: JobKey, attempt_id: str) -> JobSpool:
        """The spool of this job attempt, created (durably) on first use."""
        with self._lock:
            if isinstance(job_id, str) and job_id in self._aliases:
                job_id, attempt_id = self._aliases[job_id]
            existing = self._jobs.get(job_id)
            if existing is not None and existing.attempt_id == attempt_id:
                return existing
            if existing is not None:
                log.info("job %s: dropping the spool of its older attempt", job_id)
                self.remove_job(job_id)
            job = JobSpool.create(self._job_dir(job_id), job_id, attempt_id, self)
            self._jobs[job_id] = job
            return job

    def open_run(self, run_id: str, registration: Dict[str, Any]) -> JobSpool:
        """The spool of an agent-started run the server does not know yet (keyed by run_id).

        ``registration`` is the body of its ``POST /runs``, kept until the server answers.
        """
        with self._lock:
            existing = self._jobs.get(run_id)
            if existing is not None:
                return existing
            job = JobSpool.create(self._job_dir(run_id), run_id, run_id, self, registration)
            self._jobs[run_id] = job
            return job

    def pending_runs(self) -> List[JobSpool]:
        """Runs still waiting for their registration, oldest first."""
        return [job for job in self.jobs() if isinstance(job.job_id, str)]

    def adopt_run(self, run_id: str, job_id: int, attempt_id: str) -> Optional[JobSpool]:
        """The server registered ``run_id`` as ``job_id``: re-key its records and events.

        Events keep their place in the queue (rewritten in place), so they go out in order.
        """
        with self._lock:
            self._aliases[run_id] = (job_id, attempt_id)
            for event_id, (path, owner) in list(self._events.items()):
                if owner == run_id:
                    self._rekey_event(event_id, path, job_id, attempt_id)
            job = self._jobs.pop(run_id, None)
            if job is None:
                return None
            if job_id in self._jobs:
                log.warning("job %s: replacing its spool with run %s", job_id, run_id)
                self.remove_job(job_id)
            job.rekey(self._job_dir(job_id), job_id, attempt_id)
            self._jobs[job_id] = job
            fsync_dir(self.jobs_dir)
            return job

    def _rekey_event(self, event_id: str, path: Path, job_id: int, attempt_id: str) -> None:
        event = json.loads(path.read_text(encoding="utf-8"))
        event["job_id"], event["attempt_id"] = job_id, attempt_id
        encoded = json.dumps(event, sort_keys=True).encode() + b"\n"
        self.release(path.stat().st_size)
        self._bytes += len(encoded)  # already spooled: never refused for lack of room
        atomic_write_bytes(path, encoded)
        self._events[event_id] = (path, job_id)

    def _job_dir(self, job_id: JobKey) -> Path:
        if isinstance(job_id, str):
            return self.jobs_dir / f"run-{job_id}"
        return self.jobs_dir / str(int(job_id))

    def job(self, job_id: JobKey) -> Optional[JobSpool]:
        with self._lock:
            return self._jobs.get(job_id)

    def jobs(self) -> List[JobSpool]:
        """Registered jobs by id, then unregistered runs."""
        with self._lock:
            return [self._jobs[job_id] for job_id in sorted(self._jobs, key=_job_order)]

    def remove_job(self, job_id: JobKey) -> None:
        with self._lock:
            job = self._jobs.pop(job_id, None)
            if job is None:
                return
            job.mark_removed()
            size = job.records_bytes
            shutil.rmtree(job.directory, ignore_errors=True)
            fsync_dir(self.jobs_dir)
            self.release(size)

    def remove_delivered_jobs(self, keep: Iterable[int] = ()) -> List[int]:
        """Delete the directories of finished jobs whose data all reached the server."""
        keep = set(keep)
        with self._lock:
            pending_job_ids = {owner for _, owner in self._events.values()}
        removed = []
        for job in self.jobs():
            if job.job_id in keep or job.job_id in pending_job_ids:
                continue
            if isinstance(job.job_id, str):
                continue  # not registered yet: the server has none of it
            if job.finished and not job.has_unsent_records():
                self.remove_job(job.job_id)
                removed.append(job.job_id)
        return removed

    # -- durability and reporting ------------------------------------------------------

    def sync(self) -> None:
        """fsync what is due (job records at most once a second) and the drop counters."""
        for job in self.jobs():
            job.sync_if_due()
        with self._lock:
            if self._dropped_dirty:
                atomic_write_json(self._dropped_path, self._dropped)
                self._dropped_dirty = False

    def stats(self) -> Dict[str, int]:
        jobs = self.jobs()
        return {
            "events": self.event_count(),
            "log_records": sum(job.unsent_count() for job in jobs),
            "jobs": len(jobs),
            "bytes": self.used_bytes,
        }


def _job_order(job_id: JobKey) -> Tuple[int, int, str]:
    return (1, 0, job_id) if isinstance(job_id, str) else (0, job_id, "")


def spool_stats_from_disk(root: Path) -> Dict[str, int]:
    """Spool size read without opening it for writing (``status`` while ``run`` runs)."""
    stats = {"events": 0, "log_records": 0, "jobs": 0, "bytes": 0}
    if not root.is_dir():
        return stats
    for directory, _, files in os.walk(root):
        for name in files:
            try:
                stats["bytes"] += (Path(directory) / name).stat().st_size
            except FileNotFoundError:
                continue
    events_dir = root / "events"
    if events_dir.is_dir():
        stats["events"] = sum(1 for path in events_dir.iterdir() if path.suffix == ".json")
    jobs_dir = root / "jobs"
    if jobs_dir.is_dir():
        for job_dir in jobs_dir.iterdir():
            cursor = read_json(job_dir / "cursor.json", default=None)
            if not isinstance(cursor, dict):
                continue
            stats["jobs"] += 1
            if not cursor.get("stopped"):
                unsent = int(cursor.get("next_seq", 1)) - 1 - int(cursor.get("acked_seq", 0))
                stats["log_records"] += max(0, unsent)
    return stats
