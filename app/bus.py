"""Wakeup bus: hints that something changed (a command queued, log lines arrived).

The database stays the source of truth. A waiter registers *before* it checks the
database, so a publish between the check and the wait is not lost. Parked requests hold no
database connection while they wait.

``InProcessBus`` serves one process: SQLite, where ``serve`` runs one gunicorn worker.
``PostgresBus`` takes its place on PostgreSQL, where several workers (or servers) share
the database: :func:`app.transaction.commit_and_wake` sends ``pg_notify`` inside the
committing transaction (PostgreSQL delivers it only if the commit succeeds), one LISTEN
connection per process fans the notifications out to its local waiters, and after a
(re)connect every local waiter is woken, because notifications sent while disconnected are
lost: each waiter re-checks the database, so no wake-up is lost either.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
from collections import defaultdict

import psycopg
from sqlalchemy import text
from sqlalchemy.engine import make_url

log = logging.getLogger("restic_manager.bus")

CHANNEL = "rm_wake"
# Keys whose waiters are announced to the other processes, for ``waiting()``.
ANNOUNCED_PREFIXES = ("job:",)


class Waiter:
    def __init__(self, bus: InProcessBus | PostgresBus, key: str):
        self._bus = bus
        self.key = key
        self._event = threading.Event()  # a gevent Event once gevent has patched threading

    def wait(self, timeout: float) -> bool:
        """True when woken, False on timeout. Clears itself for the next wait."""
        woken = self._event.wait(timeout)
        self._event.clear()
        return woken

    def poll(self) -> bool:
        """Non-blocking: True (and cleared) if woken since the last look. ``wait(0)`` would
        yield to gevent's hub for a timer tick, about a millisecond per caller."""
        if self._event.is_set():
            self._event.clear()
            return True
        return False

    def _wake(self) -> None:
        self._event.set()

    def close(self) -> None:
        self._bus._unregister(self)

    def __enter__(self) -> Waiter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class InProcessBus:
    def __init__(self):
        self._lock = threading.Lock()
        self._waiters: dict[str, set[Waiter]] = defaultdict(set)

    def listen(self, key: str) -> Waiter:
        waiter = Waiter(self, key)
        with self._lock:
            self._waiters[key].add(waiter)
        return waiter

    def publish(self, key: str) -> None:
        """Wake everyone waiting on ``key``; call after the change is committed."""
        self.wake_local(key)

    def stage(self, session, keys: list[str]) -> None:
        """Nothing to do before the commit: one process, woken after it."""

    def committed(self, keys: list[str]) -> None:
        """The transaction that :meth:`stage` saw committed: wake the keys' waiters."""
        for key in keys:
            self.wake_local(key)

    def wake_local(self, key: str) -> None:
        """Wake this process's waiters on ``key`` only."""
        with self._lock:
            waiters = list(self._waiters.get(key, ()))
        for waiter in waiters:
            waiter._wake()

    def wake_all_local(self) -> None:
        with self._lock:
            waiters = [waiter for group in self._waiters.values() for waiter in group]
        for waiter in waiters:
            waiter._wake()

    def close(self) -> None:
        """Nothing to release."""

    def waiting(self, key: str) -> int:
        with self._lock:
            return len(self._waiters.get(key, ()))

    def _unregister(self, waiter: Waiter) -> None:
        with self._lock:
            group = self._waiters.get(waiter.key)
            if group is not None:
                group.discard(waiter)
                if not group:
                    del self._waiters[waiter.key]


class PostgresBus(InProcessBus):
    """The same interface across processes, through PostgreSQL LISTEN/NOTIFY.

    A payload is ``"<origin> <key>"``: ``origin`` names this bus instance, so the listener
    skips what this process already woke directly after its own commit. Keys are short
    (``host:12``, ``rpc:<uuid>``), far below NOTIFY's 8000-byte payload limit.

    ``"<origin> +job:1 job:2"`` announces waiters instead (the first on a job at once, all
    of them every ``ANNOUNCE_SECONDS``): :meth:`waiting` then counts another worker's SSE
    viewers too, so an agent posting its lines to this worker is told it is watched.
    """

    RECONNECT_FIRST = 0.2  # seconds; doubles up to RECONNECT_MAX
    RECONNECT_MAX = 5.0
    PING_SECONDS = 30.0  # a silent LISTEN connection is checked this often
    POLL_SECONDS = 1.0  # how often the listener looks at its stop flag
    ANNOUNCE_SECONDS = 10.0  # local job waiters are re-announced this often
    INTEREST_SECONDS = 25.0  # another process's announcement counts this long

    def __init__(self, conninfo: str):
        super().__init__()
        self.conninfo = conninfo
        self.origin = secrets.token_hex(4)
        self.connects = 0  # successful LISTENs so far (tests watch reconnects)
        self.listen_pid: int | None = None  # the LISTEN connection's backend pid
        self._stopped = threading.Event()
        self._listener: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._publish_lock = threading.Lock()
        self._publish_connection = None
        self._interest: dict[str, float] = {}  # key -> monotonic time it expires

    # --- publishing ---------------------------------------------------------------------

    def payload(self, key: str) -> str:
        return f"{self.origin} {key}"

    def stage(self, session, keys: list[str]) -> None:
        """``pg_notify`` each key inside the session's transaction: sent by the commit,
        dropped by a rollback."""
        for key in keys:
            session.execute(
                text("SELECT pg_notify(:channel, :payload)"),
                {"channel": CHANNEL, "payload": self.payload(key)},
            )

    def publish(self, key: str) -> None:
        """Wake ``key`` in every process, outside any transaction (its own connection)."""
        self.wake_local(key)
        self._notify(self.payload(key))

    def _notify(self, payload: str) -> None:
        with self._publish_lock:
            for attempt in (1, 2):
                try:
                    if self._publish_connection is None or self._publish_connection.closed:
                        self._publish_connection = psycopg.connect(
                            self.conninfo, autocommit=True, connect_timeout=5
                        )
                    self._publish_connection.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))
                    return
                except psycopg.Error as error:
                    self._drop_publish_connection()
                    if attempt == 2:
                        log.warning("bus: could not send %r: %s", payload[:80], error)

    # --- interest: who follows a job, across processes ----------------------------------

    def waiting(self, key: str) -> int:
        """Local waiters, plus one if another process announced waiters on ``key`` lately
        (the agent's "watched" answer: an SSE viewer may sit in another worker)."""
        local = super().waiting(key)
        if local or not key.startswith(ANNOUNCED_PREFIXES):
            return local
        return 1 if self._interest.get(key, 0.0) > time.monotonic() else 0

    def _announced_keys(self) -> list[str]:
        with self._lock:
            return [key for key in self._waiters if key.startswith(ANNOUNCED_PREFIXES)]

    def _announcements(self, keys: list[str]) -> list[str]:
        """``"<origin> +key key …"`` payloads, each well below NOTIFY's 8000 bytes."""
        payloads, batch = [], []
        for key in keys:
            batch.append(key)
            if sum(len(k) + 1 for k in batch) > 6000:
                payloads.append(f"{self.origin} +{' '.join(batch)}")
                batch = []
        if batch:
            payloads.append(f"{self.origin} +{' '.join(batch)}")
        return payloads

    def _drop_publish_connection(self) -> None:
        connection, self._publish_connection = self._publish_connection, None
        if connection is not None:
            with contextlib.suppress(Exception):  # already broken
                connection.close()

    # --- listening ----------------------------------------------------------------------

    def listen(self, key: str) -> Waiter:
        announce = key.startswith(ANNOUNCED_PREFIXES) and not super().waiting(key)
        waiter = super().listen(key)
        self._ensure_listener()
        if announce:  # the first local waiter on a job: tell the other workers at once
            for payload in self._announcements([key]):
                self._notify(payload)
        return waiter

    def _ensure_listener(self) -> None:
        """Start the listener with the first waiter (one per process: a greenlet under
        gevent, whose monkey-patching also makes psycopg's waits cooperative)."""
        if self._listener is not None or self._stopped.is_set():
            return
        with self._start_lock:
            if self._listener is None and not self._stopped.is_set():
                self._listener = threading.Thread(
                    target=self._run, name="rm-bus-listener", daemon=True
                )
                self._listener.start()

    def _run(self) -> None:
        delay = self.RECONNECT_FIRST
        while not self._stopped.is_set():
            try:
                with psycopg.connect(self.conninfo, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.listen_pid = conn.info.backend_pid
                    self.connects += 1
                    if self.connects > 1:
                        log.info("bus: LISTEN connection re-established")
                    delay = self.RECONNECT_FIRST
                    # Whatever was published before this LISTEN (or while disconnected)
                    # never arrives: every waiter re-checks the database instead.
                    self.wake_all_local()
                    self._dispatch(conn)
            except Exception as error:  # the listener must outlive any error
                if self._stopped.is_set():
                    break
                log.warning("bus: LISTEN connection lost (%s); retrying in %.1f s", error, delay)
                self._stopped.wait(delay)
                delay = min(delay * 2, self.RECONNECT_MAX)
        self.listen_pid = None

    def _dispatch(self, conn) -> None:
        last_heard = time.monotonic()
        last_announced = 0.0  # announce at once after a (re)connect
        while not self._stopped.is_set():
            if time.monotonic() - last_announced > self.ANNOUNCE_SECONDS:
                for payload in self._announcements(self._announced_keys()):
                    conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))
                last_announced = last_heard = time.monotonic()
                self._forget_expired_interest()
            for notify in conn.notifies(timeout=self.POLL_SECONDS):
                last_heard = time.monotonic()
                origin, _, rest = notify.payload.partition(" ")
                if origin == self.origin:  # our own were woken right after our commit
                    continue
                if rest.startswith("+"):
                    until = time.monotonic() + self.INTEREST_SECONDS
                    for key in rest[1:].split():
                        self._interest[key] = until
                else:
                    self.wake_local(rest)
            if time.monotonic() - last_heard > self.PING_SECONDS:
                conn.execute("SELECT 1")  # a dead peer raises here, then we reconnect
                last_heard = time.monotonic()

    def _forget_expired_interest(self) -> None:
        now = time.monotonic()
        for key, until in list(self._interest.items()):
            if until <= now:
                self._interest.pop(key, None)

    def close(self) -> None:
        """Stop the listener and close the connections (tests; process exit needs none).
        The listener notices within ``POLL_SECONDS`` and closes its LISTEN connection."""
        self._stopped.set()
        with self._publish_lock:
            self._drop_publish_connection()


def create_bus(database_url: str) -> InProcessBus:
    """PostgresBus on PostgreSQL, InProcessBus otherwise (SQLite: one process)."""
    if not database_url.startswith("postgresql"):
        return InProcessBus()
    url = make_url(database_url).set(drivername="postgresql")
    return PostgresBus(url.render_as_string(hide_password=False))


def host_key(host_id: int) -> str:
    return f"host:{host_id}"


def job_key(job_id: int) -> str:
    return f"job:{job_id}"
