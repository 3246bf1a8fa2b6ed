"""Runs queued for offline hosts: back-off, abandonment, dispatch exactly once."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select

from app.extensions import db
from app.models import AuditLog, Host, Job, PendingRun, Schedule, SourceGroup
from app.services import pending_runs
from app.ticker import tick

DUE = datetime(2026, 3, 2, 2, 0, tzinfo=timezone.utc)


@pytest.fixture
def box(app):
    return app.extensions["secretbox"]


@pytest.fixture
def queued(app):
    """A host last seen an hour before its 02:00 backup, with one pending run."""

    def make(*, retry_max=3, backoff_seconds=300):
        host = Host(hostname="laptop", last_seen_at=DUE - timedelta(hours=1))
        group = SourceGroup(
            host=host,
            name="home",
            includes=["/home"],
            retry_max=retry_max,
            retry_backoff_seconds=backoff_seconds,
        )
        db.session.add(host)
        db.session.flush()
        schedule = Schedule(
            host_id=host.id, name="nightly", cron="0 2 * * *", source_groups=[group]
        )
        db.session.add(schedule)
        db.session.flush()
        row = pending_runs.enqueue(host, schedule, group, DUE)
        db.session.commit()
        return host, schedule, group, row

    return make


def _offline_tick(box, at):
    return tick(box, at, offline_after_seconds=90)


def _online(host, at):
    host.last_seen_at = at
    db.session.commit()


def _audits(action):
    return list(db.session.scalars(select(AuditLog).where(AuditLog.action == action)))


def test_backoff_doubles_and_is_capped_at_thirty_minutes():
    group = SourceGroup(retry_backoff_seconds=300)
    waits = [pending_runs.backoff(group, attempt).total_seconds() for attempt in range(1, 6)]
    assert waits == [300, 600, 1200, 1800, 1800]
    assert pending_runs.backoff(SourceGroup(retry_backoff_seconds=60), 60) == timedelta(minutes=30)


def test_offline_ticks_back_off_then_abandon_past_retry_max_with_audit(box, queued):
    _, _, _, row = queued(retry_max=2, backoff_seconds=600)
    assert _offline_tick(box, DUE) == []
    assert (row.attempts, row.next_attempt_at) == (1, DUE + timedelta(minutes=10))
    # Not yet due again: the tick leaves it alone.
    _offline_tick(box, DUE + timedelta(minutes=9))
    assert row.attempts == 1
    _offline_tick(box, DUE + timedelta(minutes=10))
    assert (row.attempts, row.next_attempt_at) == (2, DUE + timedelta(minutes=30))
    _offline_tick(box, DUE + timedelta(minutes=30))
    assert (row.state, row.attempts) == ("abandoned", 3)
    assert "stayed offline through 2 retries" in row.reason
    [entry] = _audits("pending_run.abandoned")
    assert entry.actor_label == "pending runs"
    assert entry.payload["host"] == "laptop" and entry.payload["attempts"] == 3
    assert db.session.scalars(select(Job)).all() == []


def test_the_tick_dispatches_once_the_host_is_back(box, queued):
    host, schedule, _, row = queued()
    _offline_tick(box, DUE)
    _online(host, DUE + timedelta(minutes=5))
    [job] = _offline_tick(box, DUE + timedelta(minutes=5))
    assert (job.kind, job.schedule_id, job.params["group"]) == ("backup", schedule.id, "home")
    assert job.params["paths"] == ["/home"] and job.actor_label == "pending runs"
    assert (row.state, row.job_id) == ("dispatched", job.id)
    assert _offline_tick(box, DUE + timedelta(hours=2)) == []


def test_reconnect_dispatches_at_once_whatever_the_back_off(box, queued):
    host, _, _, row = queued()
    _offline_tick(box, DUE)
    assert row.next_attempt_at > DUE + timedelta(minutes=1)
    [job] = pending_runs.dispatch_for_host(box, host, now=DUE + timedelta(minutes=1))
    db.session.commit()
    assert row.state == "dispatched" and row.job_id == job.id
    assert pending_runs.dispatch_for_host(box, host, now=DUE + timedelta(minutes=2)) == []


def test_deleted_group_or_schedule_abandons_the_run(box, queued):
    host, schedule, _, row = queued()
    schedule.source_groups = []
    db.session.delete(schedule)
    db.session.commit()
    _online(host, DUE)
    assert _offline_tick(box, DUE) == []
    db.session.refresh(row)
    assert row.state == "abandoned" and row.reason == "its schedule was deleted"
    assert len(_audits("pending_run.abandoned")) == 1


def test_group_removed_from_the_schedule_abandons_the_run(box, queued):
    host, schedule, _, row = queued()
    db.session.add(SourceGroup(host=host, name="other", includes=["/srv"]))
    schedule.source_groups = []
    db.session.commit()
    assert pending_runs.dispatch_for_host(box, host, now=DUE) == []
    assert row.state == "abandoned" and "no longer in the schedule" in row.reason


def test_a_row_is_claimed_once_by_two_sequential_callers(box, queued):
    _, _, _, row = queued()
    assert pending_runs.claim(row, "dispatched", DUE) is True
    assert pending_runs.claim(row, "dispatched", DUE) is False
    assert pending_runs.claim(row, "abandoned", DUE) is False
    assert row.state == "dispatched"


def test_two_processes_racing_dispatch_one_job(app, box, queued):
    """Reconnect and tick at the same moment, each in its own session and thread."""
    host, _, _, row = queued()
    _online(host, DUE)
    host_id, row_id = host.id, row.id
    barrier = threading.Barrier(2)
    results, errors = [], []

    def racer():
        try:
            with app.app_context():
                racing_host = db.session.get(Host, host_id)
                racing_row = db.session.get(PendingRun, row_id)
                barrier.wait()
                job = pending_runs.dispatch(box, racing_row, racing_host, DUE)
                db.session.commit()
                results.append(job is not None)
                db.session.remove()
        except Exception as failure:  # surfaced below
            errors.append(failure)

    threads = [threading.Thread(target=racer) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert sorted(results) == [False, True]
    db.session.expire_all()
    assert len(db.session.scalars(select(Job)).all()) == 1
