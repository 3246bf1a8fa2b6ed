"""What the agent must remember across a restart: the commands it has seen (written down
before they are acked) and the jobs a stop cut short (their locks may be stale)."""

import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union

from agent.paths import atomic_write_json, read_json

KEEP_FOR = timedelta(days=7)
INTERRUPTED_JOBS_FILE = "interrupted_jobs.json"  # in the agent's home
JobKey = Union[int, str]  # as in agent.jobspool


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def isoformat(moment: datetime) -> str:
    """``2026-11-25T20:31:00.123Z`` (the protocol's time format)."""
    moment = moment.astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_time(text: str) -> Optional[datetime]:
    try:
        value = datetime.strptime(text.replace("Z", "+0000"), "%Y-%m-%dT%H:%M:%S.%f%z")
    except (AttributeError, ValueError):
        return None
    return value


class SeenCommands:
    """``seen_commands.json``: command_id → received_at, entries older than 7 days pruned.

    A redelivered command is recognised here and acked as a duplicate, never run twice.
    """

    def __init__(self, path: Path, clock: Callable[[], datetime] = utc_now):
        self.path = path
        self._clock = clock
        self._lock = threading.Lock()
        loaded = read_json(path, default={})
        self._entries: Dict[str, str] = loaded if isinstance(loaded, dict) else {}

    def __contains__(self, command_id: object) -> bool:
        with self._lock:
            return command_id in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def record(self, command_id: str) -> None:
        """Durably remember ``command_id`` (pruning old entries on the way)."""
        with self._lock:
            now = self._clock()
            self._entries[command_id] = isoformat(now)
            self._prune_locked(now)
            atomic_write_json(self.path, self._entries)

    def prune(self) -> int:
        """Forget entries older than 7 days; returns how many were removed."""
        with self._lock:
            removed = self._prune_locked(self._clock())
            if removed:
                atomic_write_json(self.path, self._entries)
            return removed

    def _prune_locked(self, now: datetime) -> int:
        cutoff = now - KEEP_FOR
        stale = [
            command_id
            for command_id, received_at in self._entries.items()
            if (parse_time(received_at) or now) < cutoff
        ]
        for command_id in stale:
            del self._entries[command_id]
        return len(stale)


class InterruptedJobs:
    """``interrupted_jobs.json``: jobs an agent stop cut short, whose restic may have left
    a stale lock. Written when the restarted agent reports them; cleared once ``restic
    unlock`` has run, so a second restart in between does not forget them.

    Without a ``path`` (tests) the list lives in memory only.
    """

    def __init__(self, path: Optional[Path] = None):
        self.path = path
        self._lock = threading.Lock()
        loaded = read_json(path, default=[]) if path is not None else []
        self._job_ids: List[JobKey] = list(loaded) if isinstance(loaded, list) else []

    def add(self, job_ids: Sequence[JobKey]) -> None:
        with self._lock:
            self._job_ids += [job_id for job_id in job_ids if job_id not in self._job_ids]
            self._write()

    def pending(self) -> List[JobKey]:
        with self._lock:
            return list(self._job_ids)

    def clear(self) -> None:
        with self._lock:
            if self._job_ids:
                self._job_ids = []
                self._write()

    def _write(self) -> None:
        if self.path is not None:
            atomic_write_json(self.path, self._job_ids)
