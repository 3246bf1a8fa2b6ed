"""The one way a view ends a unit of work: commit, then wake whoever waits on it.

Services flush and never commit; views call :func:`commit_and_wake` once. Wake-ups reach
waiters only once the commit is done, so a woken long poll or SSE feed always finds the
rows that woke it (publishing first would let it look before the data is there). On
PostgreSQL the bus adds ``pg_notify`` to the committing transaction itself (other worker
processes hear it only if the commit succeeds); this process's waiters are woken right
after the commit.
"""

from __future__ import annotations

from flask import current_app

from app.extensions import db


def wake(*bus_keys: str) -> None:
    """Publish wake-ups on the bus (use after a commit, or when nothing was written)."""
    bus = current_app.extensions["bus"]
    for key in dict.fromkeys(bus_keys):  # each key once, in order
        bus.publish(key)


def commit_and_wake(*bus_keys: str) -> None:
    """Commit the session, then publish ``bus_keys`` (host_key(...), job_key(...), ...)."""
    keys = list(dict.fromkeys(bus_keys))  # each key once, in order
    bus = current_app.extensions["bus"]
    if keys:
        bus.stage(db.session, keys)  # PostgreSQL: pg_notify, sent by this very commit
    db.session.commit()
    if keys:
        bus.committed(keys)
