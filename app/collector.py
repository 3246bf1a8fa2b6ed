"""The worker's garbage collector, tuned for thousands of parked long polls (issue 17).

Each parked poll keeps about a hundred container objects alive for its 25 s hold, so they
all reach the oldest generation, and CPython then runs a full collection every few seconds
that walks every one of them: at 5,000 parked polls a single worker stopped for 350-420 ms
each time (docs/performance.md), and every command sent meanwhile waited.

Reference counting frees almost everything a request leaves behind (a worker with its
collector off held a steady RSS under 5,000 agents); the collector is only there for
cycles. So:

- ``gc.freeze()`` once the application is loaded: the ~100,000 import-time objects leave
  every collection;
- the youngest generation is collected as usual, the middle one after every
  :data:`MIDDLE_EVERY` young collections instead of CPython's 10. A parked poll's objects
  survive the young collection and wait in the middle generation; with 5,000-7,000 polls
  parked in a worker, each middle collection walked about 20,000 objects and took 20-64
  ms of CPU (a command sent meanwhile waits). After every third young collection they
  take 6-35 ms, about the same CPU in all (docs/performance.md, "On a faster machine");
- the oldest generation by the clock instead of by allocation counts: a full collection
  every :data:`FULL_COLLECTION_SECONDS` (10 minutes) from a background thread (a greenlet
  under gevent), so its pause comes once in 10 minutes rather than every few seconds.
"""

from __future__ import annotations

import gc
import logging
import threading
import time

log = logging.getLogger("restic_manager.collector")

FULL_COLLECTION_SECONDS = 600
MIDDLE_EVERY = 3  # young collections per middle-generation collection (CPython: 10)
_NEVER_BY_COUNT = 1_000_000_000  # gen-1 collections before an automatic full one


def tune(full_collection_seconds: float = FULL_COLLECTION_SECONDS) -> threading.Thread:
    gc.collect()
    gc.freeze()
    young, _, _ = gc.get_threshold()
    gc.set_threshold(young, MIDDLE_EVERY, _NEVER_BY_COUNT)
    thread = threading.Thread(
        target=collect_every,
        args=(full_collection_seconds, threading.Event()),
        name="gc",
        daemon=True,
    )
    thread.start()
    return thread


def collect_every(interval: float, stop: threading.Event) -> None:
    """A full collection every ``interval`` seconds until ``stop`` is set."""
    while not stop.wait(interval):
        started = time.monotonic()
        found = gc.collect()
        log.debug(
            "full collection: %d unreachable objects in %.0f ms",
            found,
            (time.monotonic() - started) * 1000,
        )
