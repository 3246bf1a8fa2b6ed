"""Repository maintenance cadences driven by the ticker (forget, prune, check)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select

from app.extensions import db
from app.models import Command, Host, Job, RepoMaintenance, SourceGroup
from app.services import maintenance
from app.ticker import tick
from tests.factories import make_host

START = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)  # a Monday


@pytest.fixture
def box(app):
    return app.extensions["secretbox"]


def _maintained_host(hostname="web1", *, seen_at=START, **settings) -> Host:
    """A host last seen at ``seen_at`` with these maintenance settings."""
    host = make_host(hostname, last_seen_at=seen_at)
    db.session.add(
        RepoMaintenance(host_id=host.id, updated_at=START - timedelta(days=30), **settings)
    )
    db.session.commit()
    return host


def _jobs(host, kind=None):
    query = select(Job).where(Job.host_id == host.id).order_by(Job.id)
    if kind:
        query = query.where(Job.kind == kind)
    return list(db.session.scalars(query))


def _tick(box, now, host):
    host.last_seen_at = now  # the agent keeps polling
    db.session.commit()
    return tick(box, now, offline_after_seconds=90)


def test_prune_is_dispatched_when_due_and_not_again_until_the_next_slot(box):
    host = _maintained_host(prune_cron="0 3 * * *")
    first = _tick(box, START, host)
    assert [job.kind for job in first] == ["prune"]
    assert first[0].actor_type == "system" and first[0].actor_label == "maintenance"
    command = db.session.scalar(select(Command).where(Command.job_id == first[0].id))
    assert command.payload == {"kind": "prune", "params": {}}
    first[0].status = "succeeded"
    db.session.commit()
    # Same slot (and ticks repeated by a new leader): nothing new.
    for minutes in (0, 1, 30, 60 * 17):
        assert _tick(box, START + timedelta(minutes=minutes), host) == []
    # The next 03:00 slot.
    assert [job.kind for job in _tick(box, START + timedelta(hours=18, minutes=1), host)] == [
        "prune"
    ]
    assert len(_jobs(host, "prune")) == 2


@pytest.mark.parametrize("status", ["queued", "running"])
def test_a_prune_still_queued_or_running_suppresses_the_next(box, status):
    host = _maintained_host(prune_cron="*/10 * * * *")
    [job] = _tick(box, START, host)
    job.status = status
    db.session.commit()
    # Two slots pass while it is still queued or running: nothing joins it.
    assert _tick(box, START + timedelta(minutes=10, seconds=5), host) == []
    assert _tick(box, START + timedelta(minutes=20, seconds=5), host) == []
    job.status = "succeeded"
    db.session.commit()
    # Once it ended, the missed slots are caught up once.
    assert len(_tick(box, START + timedelta(minutes=21), host)) == 1
    assert _tick(box, START + timedelta(minutes=22), host) == []


def test_a_new_cadence_waits_for_its_first_slot(box):
    host = _maintained_host(check_cron="0 4 * * *", check_subset_percent=2.5)
    settings = db.session.get(RepoMaintenance, host.id)
    settings.updated_at = START
    db.session.commit()
    assert _tick(box, START, host) == []
    [check] = _tick(box, START + timedelta(hours=19, minutes=1), host)
    assert check.params == {"read_data_subset": "2.5%"}


def test_offline_hosts_are_skipped_and_logged(box, caplog):
    host = _maintained_host(prune_cron="0 3 * * *", seen_at=START - timedelta(hours=2))
    caplog.set_level("DEBUG", logger="restic_manager.maintenance")  # every tick: debug only
    assert tick(box, START, offline_after_seconds=90) == []
    assert _jobs(host) == []
    assert "web1 is offline: maintenance (prune) skipped" in caplog.text
    # Nothing was queued for later: once back, the due task runs on the next tick.
    assert [job.kind for job in _tick(box, START + timedelta(minutes=5), host)] == ["prune"]


def test_disabled_maintenance_and_empty_crons_do_nothing(box):
    _maintained_host("off", enabled=False, prune_cron="* * * * *")
    host = _maintained_host("none")
    assert _tick(box, START, host) == []


def test_forget_applies_each_groups_retention_to_its_tag_in_one_job(box):
    host = _maintained_host(forget_cron="0 2 * * *")
    default = db.session.scalar(select(SourceGroup).where(SourceGroup.host_id == host.id))
    default.retention = {"keep_daily": 7, "keep_within": "30d"}
    db.session.add(
        SourceGroup(host=host, name="databases", includes=["/var/db"], retention={"keep_last": 3})
    )
    db.session.add(SourceGroup(host=host, name="scratch", includes=["/tmp"], retention={}))
    db.session.commit()
    [job] = _tick(box, START, host)
    assert job.kind == "forget"
    assert job.params == {
        "groups": [
            {"tag": "databases", "policy": {"keep_last": 3}},
            {"tag": "default", "policy": {"keep_daily": 7, "keep_within": "30d"}},
        ],
        "group_by": "host,paths",
        "dry_run": False,
    }


def test_forget_without_any_retention_dispatches_nothing(box):
    host = _maintained_host(forget_cron="0 2 * * *", prune_cron="0 2 * * *")
    assert [job.kind for job in _tick(box, START, host)] == ["prune"]


def test_last_job_counts_operator_runs_too(box):
    host = _maintained_host(check_cron="0 8 * * *")
    db.session.add(
        Job(
            host_id=host.id,
            kind="check",
            status="succeeded",
            attempt_id="a" * 32,
            actor_type="user",
            actor_label="alice",
            created_at=START - timedelta(minutes=30),
        )
    )
    db.session.commit()
    assert _tick(box, START, host) == []
    assert maintenance.last_job(host, "check").actor_label == "alice"
