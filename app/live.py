"""Live job feeds: the engine behind the SSE stream and the log downloads.

Streams hold no database connection while they wait or write: every read runs in its own
short application context (its own session, handed back to the pool when the context
ends), and the waits are on the wakeup bus. The bus only hints; the database is re-read
every few seconds anyway, so a publish made in another worker process is noticed too.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime

from flask import Flask
from sqlalchemy import select

from app.bus import job_key
from app.extensions import db
from app.formatting import iso
from app.models import TERMINAL_STATUSES, Job, JobLog

PING_SECONDS = 15.0  # a comment line after this much silence keeps proxies from timing out
RECHECK_SECONDS = 2.0  # re-read the database this often even without a wakeup
MAX_STREAM_SECONDS = 600.0  # then end without `end`: EventSource reconnects and re-authenticates
STREAM_BATCH = 500  # log records per read while streaming
DOWNLOAD_CHUNK = 2000  # log records per read while downloading
RETRY_MILLISECONDS = 3000

_STATUS_COLUMNS = (
    Job.id,
    Job.host_id,
    Job.status,
    Job.error,
    Job.exit_code,
    Job.stats,
    Job.progress,
    Job.started_at,
    Job.finished_at,
    Job.cancel_requested_at,
    Job.log_committed_seq,
    Job.log_truncated,
    Job.lines_dropped,
)
_RECORD_COLUMNS = (JobLog.seq, JobLog.ts, JobLog.stream, JobLog.text)


def iso_ms(value: datetime) -> str:
    """ISO-8601 UTC with milliseconds, as the agent protocol writes log times."""
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def status_json(job) -> dict:
    """The `status` / `end` event data; ``job`` is a Job or a row with the same columns."""
    return {
        "id": job.id,
        "status": job.status,
        "error": job.error,
        "exit_code": job.exit_code,
        "stats": job.stats or {},
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "cancel_requested_at": iso(job.cancel_requested_at),
        "log_truncated": bool(job.log_truncated),
        "lines_dropped": job.lines_dropped or 0,
    }


def record_json(record) -> dict:
    return {
        "seq": record.seq,
        "ts": iso_ms(record.ts),
        "stream": record.stream,
        "text": record.text,
    }


# --- the live stream -------------------------------------------------------------------------


def _event(name: str, data: dict, event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    # json.dumps escapes CR and LF, so the data is always one SSE line.
    return f"{head}event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


@dataclass
class _Read:
    """One read of a job from one place in its log, encoded once for all its viewers."""

    epoch: int
    gone: bool  # the job was deleted (with its host)
    log_events: bytes
    last_seq: int  # the cursor after these records
    full: bool  # a whole batch: more may follow at once
    status: dict
    status_event: bytes
    progress: dict
    progress_event: bytes
    terminal: bool
    committed_seq: int


def _read(epoch: int, job_id: int, after_seq: int) -> _Read:
    """The job's row, then up to STREAM_BATCH records after ``after_seq``.

    The row is read first: once it says terminal, every record up to its log_committed_seq
    is already committed (the agent sends job.finished last).
    """
    job = db.session.execute(select(*_STATUS_COLUMNS).where(Job.id == job_id)).one_or_none()
    if job is None:
        gone = {"id": job_id, "status": "deleted"}
        return _Read(epoch, True, b"", after_seq, False, gone, b"", {}, b"", True, 0)
    records = db.session.execute(
        select(*_RECORD_COLUMNS)
        .where(JobLog.job_id == job_id, JobLog.seq > after_seq)
        .order_by(JobLog.seq)
        .limit(STREAM_BATCH)
    ).all()
    status, progress = status_json(job), job.progress or {}
    return _Read(
        epoch=epoch,
        gone=False,
        log_events="".join(_event("log", record_json(r), r.seq) for r in records).encode(),
        last_seq=records[-1].seq if records else after_seq,
        full=len(records) == STREAM_BATCH,
        status=status,
        status_event=_event("status", status).encode(),
        progress=progress,
        progress_event=_event("progress", progress).encode(),
        terminal=job.status in TERMINAL_STATUSES,
        committed_seq=job.log_committed_seq,
    )


class _JobFeed:
    """What the viewers of one job in this process share: reads, and their encoding.

    One publish wakes every viewer at once; without sharing, each would read and encode the
    same records (200 viewers, 200 reads). Here the first one reads, the others take that
    read. A read is good for as long as no publish has come since it began: the feed's own
    waiter (``changes``) notices each publish, which advances the epoch and drops the reads.
    A viewer that was woken (or timed out) also asks for a newer epoch than the one it last
    used, so it never reuses a read that began before its own wakeup.
    """

    def __init__(self, bus, job_id: int):
        self.job_id = job_id
        self.lock = threading.Lock()
        self.changes = bus.listen(job_key(job_id))
        self.epoch = 0
        self.reads: dict[int, _Read] = {}  # by after_seq, all of the current epoch
        self.viewers = 0

    def read(self, app: Flask, after_seq: int, *, newer_than: int) -> _Read:
        with self.lock:
            if self.changes.poll() or self.epoch <= newer_than:
                self.epoch += 1
                self.reads.clear()
            cached = self.reads.get(after_seq)
            if cached is not None:
                return cached
            with app.app_context():  # its own session, removed (connection returned) on exit
                read = _read(self.epoch, self.job_id, after_seq)
            if len(self.reads) >= 16:  # viewers far apart in the log: keep the newest
                self.reads.clear()
            self.reads[after_seq] = read
            return read


class _Feeds:
    """This process's job feeds: made by a job's first viewer, dropped with its last."""

    def __init__(self):
        self._lock = threading.Lock()
        self._feeds: dict[int, _JobFeed] = {}

    def join(self, bus, job_id: int) -> _JobFeed:
        with self._lock:
            feed = self._feeds.get(job_id)
            if feed is None:
                feed = self._feeds[job_id] = _JobFeed(bus, job_id)
            feed.viewers += 1
            return feed

    def watched(self, job_id: int) -> bool:
        with self._lock:
            return job_id in self._feeds

    def leave(self, feed: _JobFeed) -> None:
        with self._lock:
            feed.viewers -= 1
            if feed.viewers == 0:
                feed.changes.close()
                del self._feeds[feed.job_id]


def feeds(app: Flask) -> _Feeds:
    """This process's job feeds (one per watched job)."""
    return app.extensions.setdefault("job_feeds", _Feeds())


def job_events(app: Flask, job_id: int, after_seq: int) -> Iterator[bytes]:
    """The SSE body: log records after ``after_seq``, progress and status changes, `end`."""
    bus = app.extensions["bus"]
    feeds_here = feeds(app)
    waiter = bus.listen(job_key(job_id))  # before the first read: no wakeup is lost
    feed = feeds_here.join(bus, job_id)
    try:
        yield f"retry: {RETRY_MILLISECONDS}\n: ping\n\n".encode()
        cursor, newer_than = after_seq, -1
        sent_status: dict | None = None
        sent_progress: dict = {}
        opened = last_write = time.monotonic()
        while True:
            read = feed.read(app, cursor, newer_than=newer_than)
            if read.gone:
                yield _event("end", sent_status or read.status).encode()
                return
            chunks = [read.log_events] if read.log_events else []
            cursor = read.last_seq
            if not read.terminal and read.progress != sent_progress:
                chunks.append(read.progress_event)
                sent_progress = read.progress
            if read.status != sent_status:
                chunks.append(read.status_event)
                sent_status = read.status
            if chunks:
                yield b"".join(chunks)
                last_write = time.monotonic()
            if read.full:
                newer_than = read.epoch - 1  # catching up: read on at once, this epoch will do
                continue
            if read.terminal and cursor >= read.committed_seq:
                yield _event("end", read.status).encode()
                return
            now = time.monotonic()
            if now - opened >= MAX_STREAM_SECONDS:
                return
            if now - last_write >= PING_SECONDS:
                yield b": ping\n\n"
                last_write = now
            waiter.wait(min(RECHECK_SECONDS, max(0.0, last_write + PING_SECONDS - now)))
            newer_than = read.epoch  # woken or timed out: only a read begun after this will do
    finally:
        feeds_here.leave(feed)
        waiter.close()


# --- downloads -------------------------------------------------------------------------------


def log_chunks(app: Flask, job_id: int, upto_seq: int, render: Callable) -> Iterator[str]:
    """Records 1..upto_seq rendered in chunks, each read in its own short session."""
    cursor = 0
    while cursor < upto_seq:
        with app.app_context():
            rows = db.session.execute(
                select(*_RECORD_COLUMNS)
                .where(JobLog.job_id == job_id, JobLog.seq > cursor, JobLog.seq <= upto_seq)
                .order_by(JobLog.seq)
                .limit(DOWNLOAD_CHUNK)
            ).all()
        if not rows:
            return
        cursor = rows[-1].seq
        yield "".join(render(row) for row in rows)


def text_line(record) -> str:
    time_of_day = record.ts.strftime("%H:%M:%S.") + f"{record.ts.microsecond // 1000:03d}"
    return f"{time_of_day} {record.stream.upper():<6} {record.text}\n"


def ndjson_line(record) -> str:
    return json.dumps(record_json(record), ensure_ascii=False) + "\n"
