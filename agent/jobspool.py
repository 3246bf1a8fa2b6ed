"""One job's log records on disk: ``records.ndjson`` plus ``cursor.json`` (see agent.spool)."""

import contextlib
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple, Union

from agent.journal import isoformat, utc_now
from agent.paths import (
    FILE_MODE,
    atomic_write_bytes,
    atomic_write_json,
    make_private_dir,
    read_json,
)

if TYPE_CHECKING:  # pragma: no cover
    from agent.spool import Spool

MAX_TEXT_BYTES = 16 * 1024
FSYNC_INTERVAL_SECONDS = 1.0
MAX_BATCH_BYTES = 900 * 1024  # the server takes at most 1 MiB per request
COMPACT_AFTER_BYTES = 1024 * 1024
STREAMS = ("stdout", "stderr", "agent")
RUN_FILE = "run.json"  # an agent-started run not yet registered: its POST /runs body

# A job's key in the spool: the server's job id, or the agent's run_id (a str) while an
# agent-started run waits for its registration (docs/protocol.md, "POST /runs").
JobKey = Union[int, str]

log = logging.getLogger(__name__)


def split_text(text: str, limit: int = MAX_TEXT_BYTES) -> List[str]:
    """Cut ``text`` into pieces of at most ``limit`` UTF-8 bytes, never inside a character."""
    encoded = text.encode("utf-8", errors="replace")
    if len(encoded) <= limit:
        return [text]
    pieces = []
    start = 0
    while start < len(encoded):
        end = min(start + limit, len(encoded))
        while end < len(encoded) and (encoded[end] & 0xC0) == 0x80:
            end -= 1  # do not split a multi-byte character
        pieces.append(encoded[start:end].decode("utf-8"))
        start = end
    return pieces


class JobSpool:
    def __init__(self, directory: Path, spool: "Spool", cursor: Dict[str, Any]):
        self.directory = directory
        self.records_path = directory / "records.ndjson"
        self.cursor_path = directory / "cursor.json"
        self._spool = spool
        self._lock = threading.RLock()
        job_id = cursor["job_id"]
        self.job_id: JobKey = job_id if isinstance(job_id, str) else int(job_id)
        self.attempt_id = str(cursor["attempt_id"])
        self.registration: Optional[Dict[str, Any]] = None  # run.json, for a run
        self.acked_seq = int(cursor.get("acked_seq", 0))
        self.next_seq = int(cursor.get("next_seq", 1))
        self.finished = bool(cursor.get("finished", False))
        self.lines_dropped = int(cursor.get("lines_dropped", 0))
        self.stopped: Optional[str] = cursor.get("stopped")
        self.removed = False  # the spool deleted this job's directory (stale attempt, …)
        self._unsynced = False
        self._cursor_dirty = False
        self._last_fsync = time.monotonic()
        self._acked_offset = 0
        self._file_bytes = 0

    # -- creation and recovery ---------------------------------------------------------

    @classmethod
    def create(
        cls,
        directory: Path,
        job_id: JobKey,
        attempt_id: str,
        spool: "Spool",
        registration: Optional[Dict[str, Any]] = None,
    ) -> "JobSpool":
        make_private_dir(directory)
        job = cls(directory, spool, {"job_id": job_id, "attempt_id": attempt_id})
        if registration is not None:
            atomic_write_json(directory / RUN_FILE, registration)
            job.registration = registration
        job._write_cursor()
        return job

    @classmethod
    def load(cls, directory: Path, spool: "Spool") -> Optional["JobSpool"]:
        """Re-open a job spool after a restart; ``None`` if it was never fully created."""
        cursor = read_json(directory / "cursor.json", default=None)
        if not isinstance(cursor, dict) or "attempt_id" not in cursor:
            return None
        if "job_id" not in cursor:
            if not directory.name.isdigit():
                return None
            cursor["job_id"] = int(directory.name)
        job = cls(directory, spool, cursor)
        if isinstance(job.job_id, str):
            registration = read_json(directory / RUN_FILE, default=None)
            job.registration = registration if isinstance(registration, dict) else None
        job._recover_records()
        return job

    def rekey(self, directory: Path, job_id: int, attempt_id: str) -> None:
        """The run was registered: from now on it is job ``job_id`` in ``directory``."""
        with self._lock:
            os.replace(self.directory, directory)
            self.directory = directory
            self.records_path = directory / "records.ndjson"
            self.cursor_path = directory / "cursor.json"
            self.job_id, self.attempt_id, self.registration = job_id, attempt_id, None
            self._write_cursor()
            with contextlib.suppress(FileNotFoundError):
                (directory / RUN_FILE).unlink()

    def _recover_records(self) -> None:
        """Find the last complete record, cut a torn tail, and locate the first unacked one."""
        last_seq = 0
        good_end = 0
        self._acked_offset = 0
        if self.records_path.exists():
            with open(self.records_path, "rb") as handle:
                offset = 0
                for line in handle:
                    if not line.endswith(b"\n"):
                        break
                    try:
                        seq = int(json.loads(line)["seq"])
                    except (ValueError, KeyError, TypeError):
                        break
                    offset += len(line)
                    good_end = offset
                    last_seq = seq
                    if seq <= self.acked_seq:
                        self._acked_offset = offset
            if good_end != self.records_path.stat().st_size:
                log.warning("job %s: cutting a torn record off the end of its spool", self.job_id)
                os.truncate(self.records_path, good_end)
        self._file_bytes = good_end
        self.next_seq = max(self.next_seq, last_seq + 1, self.acked_seq + 1)

    # -- writing -----------------------------------------------------------------------

    def append(self, stream: str, text: str, ts: Optional[str] = None) -> int:
        """Spool one output line (split when longer than 16 KiB); returns records written."""
        if stream not in STREAMS:
            raise ValueError(f"unknown stream {stream!r}")
        ts = ts or isoformat(utc_now())
        written = 0
        with self._lock:
            for piece in split_text(text):
                if self.stopped or self.finished or self.removed:
                    self.lines_dropped += 1
                    self._cursor_dirty = True
                    continue
                record = {"seq": self.next_seq, "ts": ts, "stream": stream, "text": piece}
                line = json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n"
                if not self._spool.reserve(len(line)):
                    self.lines_dropped += 1
                    self._cursor_dirty = True
                    self._spool.note_dropped(log_records=1)
                    continue
                self._write(line)
                self._file_bytes += len(line)
                self.next_seq += 1
                self._unsynced = True
                self._cursor_dirty = True
                written += 1
            self.sync_if_due()
        return written

    def _write(self, line: bytes) -> None:
        # Opened per line (O_APPEND): no descriptor outlives a call, and the uploader reads
        # complete lines at once. The data reaches the disk at the next fsync (≤ 1 s).
        descriptor = os.open(
            str(self.records_path), os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE
        )
        try:
            os.write(descriptor, line)
        finally:
            os.close(descriptor)

    def _fsync_records(self) -> None:
        descriptor = os.open(str(self.records_path), os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    def sync_if_due(self, force: bool = False) -> None:
        """fsync the records at most once a second (or now, with ``force``)."""
        with self._lock:
            due = force or time.monotonic() - self._last_fsync >= FSYNC_INTERVAL_SECONDS
            if not due or self.removed:
                return
            if self._unsynced:
                self._fsync_records()
                self._unsynced = False
            self._last_fsync = time.monotonic()
            if self._cursor_dirty:
                self._write_cursor()

    def finish(self) -> Tuple[int, int]:
        """No more records for this job; returns ``(final_seq, lines_dropped)``."""
        with self._lock:
            self.finished = True
            self._cursor_dirty = True
            self.sync_if_due(force=True)
            return self.next_seq - 1, self.lines_dropped

    def _write_cursor(self) -> None:
        if self.removed:
            return
        atomic_write_json(
            self.cursor_path,
            {
                "job_id": self.job_id,
                "attempt_id": self.attempt_id,
                "acked_seq": self.acked_seq,
                "next_seq": self.next_seq,
                "finished": self.finished,
                "lines_dropped": self.lines_dropped,
                "stopped": self.stopped,
            },
        )
        self._cursor_dirty = False

    # -- sending -----------------------------------------------------------------------

    def pending_batch(
        self, max_records: int = 500, max_bytes: int = MAX_BATCH_BYTES
    ) -> Optional[Tuple[int, List[Dict[str, str]]]]:
        """``(first_seq, records)`` to send next, or ``None`` when nothing is due."""
        with self._lock:
            if self.stopped or self.removed or not self.has_unsent_records():
                return None
            offset, acked_seq = self._acked_offset, self.acked_seq
        records: List[Dict[str, str]] = []
        first_seq = None
        size = 0
        with open(self.records_path, "rb") as handle:
            handle.seek(offset)
            for line in handle:
                if not line.endswith(b"\n"):
                    break
                record = json.loads(line)
                if record["seq"] <= acked_seq:
                    continue
                if first_seq is None:
                    first_seq = record["seq"]
                if records and (len(records) >= max_records or size + len(line) > max_bytes):
                    break
                records.append({key: record[key] for key in ("ts", "stream", "text")})
                size += len(line) + 16
        if first_seq is None:
            return None
        return first_seq, records

    def set_committed(self, committed_seq: int) -> None:
        """The server holds every record up to ``committed_seq`` (200, or a 416 rewind)."""
        with self._lock:
            if self.removed:
                return
            committed_seq = min(int(committed_seq), self.next_seq - 1)
            if committed_seq == self.acked_seq:
                return
            start = self._acked_offset if committed_seq > self.acked_seq else 0
            offset, earliest = self._offset_after(start, committed_seq)
            if committed_seq < self.acked_seq and (
                earliest is None or earliest > committed_seq + 1
            ):
                log.error(
                    "job %s: the server lost log records %s..%s the agent already deleted; "
                    "no more records are sent for this job",
                    self.job_id,
                    committed_seq + 1,
                    (earliest or self.next_seq) - 1,
                )
                self.stop("gap_unfillable")
                return
            self.acked_seq = committed_seq
            self._acked_offset = offset
            self._write_cursor()
            self._compact_if_worthwhile()

    def _offset_after(self, start: int, seq: int) -> Tuple[int, Optional[int]]:
        """Offset just past record ``seq`` (scanning from ``start``) and the first seq seen."""
        offset = start
        earliest = None
        with open(self.records_path, "rb") as handle:
            handle.seek(start)
            for line in handle:
                record_seq = json.loads(line)["seq"]
                if earliest is None:
                    earliest = record_seq
                if record_seq > seq:
                    break
                offset += len(line)
        return offset, earliest

    def _compact_if_worthwhile(self) -> None:
        """Drop committed records from the file once they are most of it."""
        if self._acked_offset < COMPACT_AFTER_BYTES or self._acked_offset * 2 < self._file_bytes:
            return
        with open(self.records_path, "rb") as handle:
            handle.seek(self._acked_offset)
            tail = handle.read()
        atomic_write_bytes(self.records_path, tail)
        self._spool.release(self._acked_offset)
        self._file_bytes = len(tail)
        self._acked_offset = 0

    def mark_removed(self) -> None:
        with self._lock:
            self.removed = True

    def stop(self, reason: str) -> None:
        """Send no more records (``truncated`` by the server, …); unsent ones count as dropped."""
        with self._lock:
            if self.stopped:
                return
            self.lines_dropped += max(0, self.next_seq - 1 - self.acked_seq)
            self.stopped = reason
            self._write_cursor()

    # -- questions ---------------------------------------------------------------------

    def has_unsent_records(self) -> bool:
        with self._lock:
            return not (self.stopped or self.removed) and self.acked_seq < self.next_seq - 1

    def unsent_count(self) -> int:
        with self._lock:
            return 0 if self.stopped else max(0, self.next_seq - 1 - self.acked_seq)

    @property
    def records_bytes(self) -> int:
        """Bytes of records on disk: what counts against the spool quota."""
        with self._lock:
            return self._file_bytes

    def __repr__(self) -> str:
        return f"JobSpool(job_id={self.job_id}, attempt_id={self.attempt_id!r})"
