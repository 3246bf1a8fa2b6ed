"""Wakeup bus: hints that something changed (a command queued, log lines arrived).

The database stays the source of truth. A waiter registers *before* it checks the
database, so a publish between the check and the wait is not lost. Parked requests hold no
database connection while they wait.

``InProcessBus`` serves one process (the embedded default: one gunicorn worker). With
several workers or servers on PostgreSQL, a LISTEN/NOTIFY implementation of the same
interface takes its place: ``publish`` becomes ``pg_notify`` inside the committing
transaction, one LISTEN connection per worker fans out to its waiters, and every waiter is
woken after a reconnect (notifications are lost while disconnected).
"""

from __future__ import annotations

import threading
from collections import defaultdict


class Waiter:
    def __init__(self, bus: InProcessBus, key: str):
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
        with self._lock:
            waiters = list(self._waiters.get(key, ()))
        for waiter in waiters:
            waiter._wake()

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


def host_key(host_id: int) -> str:
    return f"host:{host_id}"


def job_key(job_id: int) -> str:
    return f"job:{job_id}"
