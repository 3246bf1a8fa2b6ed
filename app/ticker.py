"""The periodic tick (maintenance cadences, lost jobs, old agent answers), run by exactly one
process.

Every serving process runs a loop; a tick runs only in the process that holds the leader
lock: a PostgreSQL advisory lock on a dedicated connection, or an exclusive ``flock`` on
``RM_DATA_DIR/ticker.lock`` with SQLite. The operating system (or PostgreSQL, when the
session ends) releases the lock when the leader dies, and another process takes over at its
next tick. Every tick is idempotent, so a tick repeated by a new leader does no harm.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Callable, Optional

import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from app import download_spool
from app.bus import job_key
from app.extensions import db
from app.models import Host
from app.models.types import utcnow
from app.secretbox import SecretBox
from app.services import alerts, housekeeping, jobs, maintenance, notifications, rpc
from app.transaction import commit_and_wake

log = logging.getLogger("restic_manager.ticker")

# pg_try_advisory_lock key: "rmtick" in ASCII, so it is recognisable in pg_locks.
ADVISORY_LOCK_KEY = 0x726D7469636B


def tick(
    box: SecretBox,
    now: datetime,
    *,
    offline_after_seconds: int = 90,
    lost_after_seconds: int = 900,
    listening_since: Optional[datetime] = None,
) -> list:
    """One pass: jobs of long-silent hosts marked lost, due maintenance tasks queued, old
    agent answers swept. Commits (needs an app context, which :func:`run` provides);
    returns the new jobs."""
    lost = jobs.mark_lost(
        now,
        lost_after_seconds=lost_after_seconds,
        offline_after_seconds=offline_after_seconds,
        listening_since=listening_since,
    )
    for job in lost:
        alerts.on_job_finished(db.session.get(Host, job.host_id), job, now)
    queued = maintenance.run_due(box, now, offline_after_seconds=offline_after_seconds)
    rpc.sweep(now)
    download_spool.sweep()  # download chunks left as files by a process that died
    alerts.evaluate(now, listening_since=listening_since, pause=_pause_for(db.engine))
    commit_and_wake(*(job_key(job.id) for job in lost))  # live job pages show the end
    return queued


def _pause_for(engine) -> Optional[Callable[[], None]]:
    """How the alert pass lets the worker's other requests run between hosts.

    On PostgreSQL a greenlet switch (``time.sleep(0)`` under gevent) in the middle of the
    tick's transaction is what every query's wait already does; without it, the pass held
    the leader worker for 0.2 s of pure Python at 20,000 hosts, and every poll parked there
    waited that long. On SQLite none: the tick's transaction holds the file's write lock
    and a query never yields, so a switch there let another greenlet block the whole
    process in SQLite's busy wait (docs/performance.md)."""
    return None if engine.dialect.name == "sqlite" else _let_others_run


def _let_others_run() -> None:
    time.sleep(0)


def deliver(box: SecretBox, now: datetime, *, base_url: str = "") -> int:
    """Send the notifications that are due, committing after each one (so a crash repeats
    at most the sends in flight, which receivers recognise by their X-RM-Delivery key)."""
    return notifications.deliver_due(box, now, base_url=base_url, after_each=commit_and_wake)


def housekeep(app, now: datetime) -> housekeeping.Report:
    """Keep the database bounded, in small batches (app/services/housekeeping.py says what
    goes and what stays); SQLite's daily optimize and incremental vacuum."""
    state = app.extensions.setdefault("housekeeping", {})
    return housekeeping.run(app.config, now, state, commit=commit_and_wake)


class FileLeadership:
    """SQLite: whoever holds an exclusive lock on the file leads."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd: Optional[int] = None

    def acquire(self) -> bool:
        if self._fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None


class AdvisoryLeadership:
    """PostgreSQL: whoever holds the advisory lock on its own connection leads."""

    def __init__(self, url: str):
        self._engine = sa.create_engine(url, poolclass=NullPool)
        self._connection: Optional[sa.Connection] = None

    def acquire(self) -> bool:
        if self._connection is not None:
            try:
                self._connection.execute(sa.text("SELECT 1"))
                return True
            except sa.exc.DBAPIError:
                # The session ended, and with it the lock: compete again.
                log.warning("ticker: lost the leader connection; competing again")
                self.release()
        connection = self._engine.connect()
        try:
            held = connection.execute(
                sa.text("SELECT pg_try_advisory_lock(:key)"), {"key": ADVISORY_LOCK_KEY}
            ).scalar()
            connection.commit()  # the lock is session-level; no transaction stays open
        except Exception:
            connection.close()
            raise
        if not held:
            connection.close()
            return False
        self._connection = connection
        return True

    def release(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(sa.exc.DBAPIError):
                self._connection.close()  # ends the session, which releases the lock
            self._connection = None


def leadership_for(app):
    url = app.config["SQLALCHEMY_DATABASE_URI"]
    if url.startswith("postgresql"):
        return AdvisoryLeadership(url)
    return FileLeadership(Path(app.config["RM_DATA_DIR"]) / "ticker.lock")


def run(
    app,
    stop: threading.Event,
    *,
    interval: Optional[float] = None,
    tick_function: Callable = tick,
    notify_interval: Optional[float] = None,
    deliver_function: Callable = deliver,
    housekeeping_function: Callable = housekeep,
) -> None:
    """Tick (then keep house) every ``interval`` seconds and deliver due notifications
    every ``notify_interval`` seconds while leading, until ``stop`` is set."""
    interval = interval if interval is not None else app.config["RM_TICKER_SECONDS"]
    notify_interval = (
        notify_interval if notify_interval is not None else app.config["RM_NOTIFY_SECONDS"]
    )
    leadership = leadership_for(app)
    leading = False
    listening_since = utcnow()  # agents' silence before this is the server's own downtime
    next_tick = next_delivery = time.monotonic()
    try:
        while True:
            with app.app_context():
                ticked = False
                try:
                    now_leading = leadership.acquire()
                    if now_leading and not leading:
                        log.info("ticker: process %s leads", os.getpid())
                    leading = now_leading
                    if leading and time.monotonic() >= next_tick:
                        next_tick = time.monotonic() + interval
                        ticked = True
                        tick_function(
                            app.extensions["secretbox"],
                            utcnow(),
                            offline_after_seconds=app.config["RM_OFFLINE_AFTER_SECONDS"],
                            lost_after_seconds=app.config["RM_LOST_JOB_AFTER_SECONDS"],
                            listening_since=listening_since,
                        )
                except Exception:
                    log.exception("ticker: the tick failed; trying again at the next one")
                    db.session.rollback()
                finally:
                    db.session.remove()
                if ticked:  # even after a failed tick: it is independent work
                    try:
                        housekeeping_function(app, utcnow())
                    except Exception:
                        log.exception("ticker: housekeeping failed; trying again at the next tick")
                        db.session.rollback()
                    finally:
                        db.session.remove()
                if leading and time.monotonic() >= next_delivery:
                    next_delivery = time.monotonic() + notify_interval
                    try:
                        deliver_function(
                            app.extensions["secretbox"],
                            utcnow(),
                            base_url=app.config.get("RM_BASE_URL") or "",
                        )
                    except Exception:
                        log.exception("ticker: sending notifications failed; trying again soon")
                        db.session.rollback()
                    finally:
                        db.session.remove()
            wait = (
                max(0.0, min(next_tick, next_delivery) - time.monotonic()) if leading else interval
            )
            if stop.wait(min(wait, interval)):
                return
    finally:
        leadership.release()


def start(app) -> Optional[threading.Thread]:
    """Start the loop in the background (a greenlet under gevent) when enabled."""
    if not app.config["RM_TICKER_ENABLED"]:
        return None
    stop = threading.Event()
    thread = threading.Thread(target=run, args=(app, stop), name="ticker", daemon=True)
    thread.start()
    app.extensions["ticker_stop"] = stop
    return thread
