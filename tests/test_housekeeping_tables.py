"""Housekeeping of the tables that grow with the fleet's activity
(app/services/housekeeping.py): finished commands and agent event ids after a month, a diff
job's changes with its log, alerts resolved over RM_ALERT_RETENTION_DAYS ago with their
notification rows; what is pending, open or recent stays; each purge goes in batches and a
second pass finds nothing. SQLite by default, PostgreSQL with RM_TEST_DATABASE_URL."""

from __future__ import annotations

import sqlite3
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy import func, select

from app import ticker
from app.extensions import db
from app.models import (
    AgentEvent,
    Alert,
    AuditLog,
    Command,
    DiffEntry,
    Job,
    JobLog,
    Notification,
    NotificationChannel,
    RepoStats,
)
from app.models.types import utcnow
from app.services import audit, commands, housekeeping
from app.services.audit import Actor
from tests import factories


def _count(model, *where) -> int:
    return db.session.scalar(select(func.count()).select_from(model).where(*where))


def _command(host, name, state, age, job=None):
    db.session.add(
        Command(
            id=name,
            host_id=host.id,
            type="job.run" if job else "probe",
            payload={},
            sealed_payload=b"sealed" if job else None,
            job_id=job.id if job else None,
            state=state,
            created_at=utcnow() - age,
            acked_at=utcnow() - age if state == "acked" else None,
            lease_expires_at=utcnow() - age if state == "leased" else None,
        )
    )


def test_finished_commands_go_after_a_month_pending_ones_never(app):
    host = factories.make_host()
    job = factories.make_job(host, finished_at=utcnow() - timedelta(days=40))
    month = timedelta(days=31)
    for index in range(7):
        _command(host, f"acked-{index}", "acked", month, job)
    _command(host, "undeliverable", "undeliverable", month)
    _command(host, "expired", "expired", month)
    _command(host, "old-queued", "queued", timedelta(days=90))  # an agent away for months
    _command(host, "old-leased", "leased", timedelta(days=90))
    _command(host, "recent-acked", "acked", timedelta(days=29))
    db.session.commit()
    commits = []

    def commit():
        commits.append(_count(Command))
        db.session.commit()

    report = housekeeping.purge_commands(utcnow(), batch_rows=4, pause=0, commit=commit)
    assert report.commands == 9
    assert commits == [8, 4, 3]  # 4, 4, then the last 1: never all in one transaction
    assert set(db.session.scalars(select(Command.id))) == {
        "old-queued",
        "old-leased",
        "recent-acked",
    }
    assert db.session.get(Job, job.id) is not None  # the job keeps its row and outcome
    again = housekeeping.purge_commands(utcnow(), pause=0, commit=db.session.commit)
    assert (again.commands, again.purge_batches) == (0, 0)


def test_a_command_pass_is_bounded_and_the_next_one_continues(app):
    host = factories.make_host()
    for index in range(10):
        _command(host, f"c{index}", "acked", timedelta(days=40))
    db.session.commit()
    first = housekeeping.purge_commands(
        utcnow(), batch_rows=3, max_batches=2, pause=0, commit=db.session.commit
    )
    assert (first.commands, first.purge_batches) == (6, 2)
    second = housekeeping.purge_commands(
        utcnow(), batch_rows=3, max_rows=3, pause=0, commit=db.session.commit
    )
    assert second.commands == 3
    third = housekeeping.purge_commands(utcnow(), batch_rows=3, pause=0, commit=db.session.commit)
    assert third.commands == 1 and _count(Command) == 0


def test_a_late_ack_of_a_removed_command_is_ignored_and_delivery_continues(app):
    host = factories.make_host()
    _command(host, "gone", "acked", timedelta(days=40))
    db.session.commit()
    housekeeping.purge_commands(utcnow(), pause=0, commit=db.session.commit)
    assert commands.apply_acks(host, [{"command_id": "gone"}], now=utcnow()) == 0
    fresh = commands.enqueue(app.extensions["secretbox"], host, "probe", payload={}, now=utcnow())
    db.session.commit()
    assert [command.id for command in commands.lease(host.id, now=utcnow())] == [fresh.id]


def test_agent_event_ids_go_after_a_month_progress_ones_after_a_day(app):
    host = factories.make_host()
    now = utcnow()

    def event(event_id, type_, age):
        db.session.add(
            AgentEvent(event_id=event_id, host_id=host.id, type=type_, received_at=now - age)
        )

    for index in range(4):
        event(f"old-{index}", "job.finished", timedelta(days=31))
    event("old-progress", "job.progress", timedelta(days=31))
    event("progress-2d", "job.progress", timedelta(days=2))
    event("progress-12h", "job.progress", timedelta(hours=12))
    event("finished-29d", "job.finished", timedelta(days=29))
    db.session.commit()
    report = housekeeping.purge_agent_events(now, batch_rows=2, pause=0, commit=db.session.commit)
    # 2 job.progress ids in one batch, then the 4 month-old others in two
    assert (report.agent_events, report.purge_batches) == (6, 3)
    assert set(db.session.scalars(select(AgentEvent.event_id))) == {"progress-12h", "finished-29d"}
    again = housekeeping.purge_agent_events(now, pause=0, commit=db.session.commit)
    assert again.agent_events == 0


def test_the_progress_purge_uses_its_partial_index(app):
    """The statement the purge sends (its job.progress condition a literal) is planned on
    the partial index, on SQLite and on PostgreSQL."""
    sent = []

    def capture(connection, cursor, statement, parameters, context, executemany):
        if "job.progress" in statement:
            sent.append((statement, parameters))

    sa.event.listen(db.engine, "before_cursor_execute", capture)
    try:
        housekeeping.purge_agent_events(utcnow(), pause=0, commit=db.session.commit)
    finally:
        sa.event.remove(db.engine, "before_cursor_execute", capture)
    assert len(sent) == 1  # the job.progress condition is in the statement, not a parameter
    statement, parameters = sent[0]
    connection = db.session.connection()
    if db.engine.dialect.name == "sqlite":
        rows = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)
        plan = " ".join(str(row[-1]) for row in rows)
    else:
        # An empty table: a sequential scan would win; the question is whether the index can serve.
        connection.exec_driver_sql("SET LOCAL enable_seqscan = off")
        plan = " ".join(
            row[0] for row in connection.exec_driver_sql(f"EXPLAIN {statement}", parameters)
        )
    db.session.rollback()
    assert "ix_agent_events_progress_received_at" in plan


def _diff_job(host, entries: int, lines: int, *, finished_days_ago: float):
    now = utcnow()
    job = factories.make_job(
        host,
        kind="diff",
        age=timedelta(days=finished_days_ago + 1),
        finished_at=now - timedelta(days=finished_days_ago),
        log_committed_seq=lines,
        params={"snapshot_a": "a" * 64, "snapshot_b": "b" * 64},
        stats={"added": {"files": entries}},
    )
    db.session.add_all(
        JobLog(job_id=job.id, seq=seq, ts=now, stream="stdout", text=f"+ /f{seq}")
        for seq in range(1, lines + 1)
    )
    db.session.add_all(
        DiffEntry(job_id=job.id, seq=seq, path=f"/f{seq}", modifier="+", type="file")
        for seq in range(1, entries + 1)
    )
    db.session.commit()
    return job


def test_diff_changes_go_with_the_log_and_the_job_is_marked_after_both(app):
    host = factories.make_host()
    old = _diff_job(host, 12, 2, finished_days_ago=100)
    silent = _diff_job(host, 3, 0, finished_days_ago=100)  # changes but no log lines
    recent = _diff_job(host, 4, 4, finished_days_ago=10)
    first = housekeeping.purge_job_logs(
        utcnow(), retention_days=90, batch_rows=5, max_batches=1, pause=0, commit=db.session.commit
    )
    assert (first.log_rows, first.diff_rows, first.log_jobs) == (2, 5, 0)
    db.session.expire_all()
    assert old.log_purged_at is None  # changes remain: not marked yet
    rest = housekeeping.purge_job_logs(
        utcnow(), retention_days=90, batch_rows=5, pause=0, commit=db.session.commit
    )
    assert (rest.log_rows, rest.diff_rows, rest.log_jobs) == (0, 10, 2)
    db.session.expire_all()
    assert _count(DiffEntry, DiffEntry.job_id.in_([old.id, silent.id])) == 0
    assert old.log_purged_at is not None and silent.log_purged_at is not None
    assert _count(DiffEntry, DiffEntry.job_id == recent.id) == 4
    assert recent.log_purged_at is None
    again = housekeeping.purge_job_logs(
        utcnow(), retention_days=90, pause=0, commit=db.session.commit
    )
    assert (again.log_rows, again.diff_rows, again.log_jobs, again.batches) == (0, 0, 0, 0)


def test_the_diff_page_says_the_changes_were_removed(app, login_as):
    app.config["RM_JOB_LOG_RETENTION_DAYS"] = 30
    host = factories.make_host()
    old = _diff_job(host, 3, 3, finished_days_ago=40)
    recent = _diff_job(host, 2, 2, finished_days_ago=5)
    report = ticker.housekeep(app, utcnow())
    assert (report.diff_rows, report.log_rows) == (3, 3)
    browser = login_as()
    page = browser.get(f"/jobs/{old.id}").get_data(as_text=True)
    assert "The list of changes was removed with the job's log on" in page
    assert "All <span" not in page and "0 B" not in page  # no counts of an empty table
    assert "No changes: the two snapshots hold the same files" not in page
    kept = browser.get(f"/jobs/{recent.id}").get_data(as_text=True)
    assert "/f2" in kept and "list of changes was removed" not in kept


def _channel():
    channel = NotificationChannel(name="ops", kind="webhook", config={"url": "http://x"})
    db.session.add(channel)
    db.session.commit()
    return channel


def _notification(alert, channel, key, *, days_ago, event="reminder", state="sent"):
    return Notification(
        idempotency_key=key,
        alert_id=alert.id,
        channel_id=channel.id,
        event=event,
        state=state,
        created_at=utcnow() - timedelta(days=days_ago),
    )


def _alert(host, channel, *, state, days_ago, deliveries=2):
    now = utcnow()
    at = now - timedelta(days=days_ago)
    alert = Alert(
        rule="backup_failed",
        host_id=host.id,
        subject=f"{state}-{days_ago}",
        severity="warning",
        state=state,
        message="m",
        details={},
        fired_at=at - timedelta(days=1),
        last_fired_at=at,
        resolved_at=at if state == "resolved" else None,
        open_key=None if state == "resolved" else f"backup_failed:{host.id}:{state}-{days_ago}",
    )
    db.session.add(alert)
    db.session.flush()
    db.session.add_all(
        _notification(alert, channel, f"{alert.id}-{index}", event="firing", days_ago=days_ago)
        for index in range(deliveries)
    )
    db.session.commit()
    return alert


def test_alerts_resolved_long_ago_go_with_their_deliveries_open_ones_stay(app):
    host = factories.make_host()
    channel = _channel()
    old = [_alert(host, channel, state="resolved", days_ago=400 + n) for n in range(5)]
    firing = _alert(host, channel, state="firing", days_ago=800)
    acknowledged = _alert(host, channel, state="acknowledged", days_ago=500)
    recent = _alert(host, channel, state="resolved", days_ago=100)
    audit.record(Actor.system(), "alert.resolved", target_type="alert", target_id=old[0].id)
    db.session.commit()
    audited = _count(AuditLog)
    report = housekeeping.purge_resolved_alerts(
        utcnow(), retention_days=365, batch_alerts=2, pause=0, commit=db.session.commit
    )
    assert (report.alerts, report.notifications, report.purge_batches) == (5, 10, 3)
    assert set(db.session.scalars(select(Alert.id))) == {firing.id, acknowledged.id, recent.id}
    assert _count(Notification) == 6  # the kept alerts' deliveries
    assert _count(AuditLog) == audited  # the audit log is a record: kept
    again = housekeeping.purge_resolved_alerts(
        utcnow(), retention_days=365, pause=0, commit=db.session.commit
    )
    assert again.alerts == 0 and again.purge_batches == 0


def test_an_alert_open_for_long_keeps_its_newest_and_recent_reminders(app):
    host = factories.make_host()
    channel, other = _channel(), NotificationChannel(name="pager", kind="ntfy", config={})
    db.session.add(other)
    db.session.commit()
    alert = _alert(host, channel, state="firing", days_ago=800, deliveries=1)  # "firing"
    now = utcnow()
    for days in range(700, 300, -20):  # 20 reminders a channel, 3 of them recent
        for to in (channel, other):
            state = "sent" if days % 40 else "failed"
            db.session.add(
                _notification(alert, to, f"r-{to.id}-{days}", days_ago=days, state=state)
            )
    # Not delivered yet: kept whatever its age.
    db.session.add(_notification(alert, channel, "pending", days_ago=500, state="pending"))
    db.session.commit()
    report = housekeeping.purge_old_reminders(
        now, retention_days=365, batch_rows=10, pause=0, commit=db.session.commit
    )
    assert (report.reminders, report.purge_batches) == (34, 4)
    left = db.session.execute(
        select(Notification.event, Notification.channel_id, Notification.created_at).where(
            Notification.state != "pending"
        )
    ).all()
    assert sorted(event for event, _, _ in left) == ["firing"] + ["reminder"] * 6
    for to in (channel, other):  # the newest reminder of each channel is the recent one
        newest = max(at for event, channel_id, at in left if channel_id == to.id)
        assert newest > now - timedelta(days=365)
    assert db.session.scalar(select(Notification.id).where(Notification.state == "pending"))
    again = housekeeping.purge_old_reminders(
        now, retention_days=365, pause=0, commit=db.session.commit
    )
    assert again.reminders == 0


def test_the_newest_reminder_stays_even_when_old(app):
    host = factories.make_host()
    channel = _channel()
    alert = _alert(host, channel, state="firing", days_ago=900, deliveries=0)
    for index, days in enumerate((800, 600)):
        db.session.add(_notification(alert, channel, f"r{index}", days_ago=days))
    db.session.commit()
    report = housekeeping.purge_old_reminders(
        utcnow(), retention_days=365, pause=0, commit=db.session.commit
    )
    assert report.reminders == 1  # the 600-day-old one stays: reminders count from it
    assert db.session.scalars(select(Notification.idempotency_key)).all() == ["r1"]


def test_zero_keeps_resolved_alerts_forever(app_factory):
    app = app_factory(RM_ALERT_RETENTION_DAYS=0)
    with app.app_context():
        host = factories.make_host()
        ancient = _alert(host, _channel(), state="resolved", days_ago=3650)
        report = ticker.housekeep(app, utcnow())
        assert report.alerts == 0
        assert db.session.get(Alert, ancient.id) is not None


def test_the_ticker_pass_bounds_every_table(app):
    host = factories.make_host()
    _command(host, "old", "acked", timedelta(days=40))
    _command(host, "waiting", "queued", timedelta(days=40))
    db.session.add(
        AgentEvent(
            event_id="e",
            host_id=host.id,
            type="job.finished",
            received_at=utcnow() - timedelta(days=40),
        )
    )
    db.session.commit()
    _alert(host, _channel(), state="resolved", days_ago=400)
    diff = _diff_job(host, 2, 1, finished_days_ago=100)
    _stats(host, housekeeping.REPO_STATS_PER_HOST + 2)
    report = ticker.housekeep(app, utcnow())
    assert report.repo_stats == 2 and _sizes(host)[0] == 2
    assert (report.commands, report.agent_events, report.alerts, report.notifications) == (
        1,
        1,
        1,
        2,
    )
    assert (report.log_rows, report.diff_rows, report.log_jobs) == (1, 2, 1)
    assert db.session.scalars(select(Command.id)).all() == ["waiting"]
    assert _count(DiffEntry, DiffEntry.job_id == diff.id) == 0
    second = ticker.housekeep(app, utcnow())
    assert (second.commands, second.agent_events, second.alerts, second.diff_rows) == (0, 0, 0, 0)
    assert second.repo_stats == 0


def _stats(host, count: int, *, same_time: bool = False):
    now = utcnow()
    db.session.add_all(
        RepoStats(
            host_id=host.id,
            taken_at=now - timedelta(days=0 if same_time else count - index),
            total_size=index,  # 0 is the oldest
        )
        for index in range(count)
    )
    db.session.commit()


def _sizes(host) -> list:
    return sorted(
        db.session.scalars(select(RepoStats.total_size).where(RepoStats.host_id == host.id))
    )


def test_each_host_keeps_its_newest_size_history_rows_a_cursor_going_round(app):
    a, b, c = (factories.make_host(name) for name in ("a", "b", "c"))
    _stats(a, 7)
    _stats(b, 2)
    _stats(c, 5, same_time=True)  # one moment: the newest ids are kept
    state = {}

    def purge(**bounds):
        return housekeeping.purge_repo_stats(
            state,
            keep=3,
            hosts_per_pass=2,
            batch_rows=2,
            pause=0,
            commit=db.session.commit,
            **bounds,
        )

    first = purge()
    assert first.repo_stats == 4 and state["repo_stats_after"] == b.id
    assert _sizes(a) == [4, 5, 6] and _sizes(b) == [0, 1] and len(_sizes(c)) == 5
    second = purge()
    assert second.repo_stats == 2 and state["repo_stats_after"] == 0  # round done
    assert _sizes(c) == [2, 3, 4]
    assert purge().repo_stats == 0 and purge().repo_stats == 0  # nothing more, round after round
    _stats(a, 3)  # new rows push older ones out
    assert purge().repo_stats == 3 and len(_sizes(a)) == 3


def test_a_size_history_pass_is_bounded_and_continues_with_the_same_host(app):
    host = factories.make_host()
    _stats(host, 5)
    state = {}
    bounded = dict(keep=1, batch_rows=2, max_rows=2, pause=0, commit=db.session.commit)
    assert housekeeping.purge_repo_stats(state, **bounded).repo_stats == 2
    assert state.get("repo_stats_after", 0) == 0  # not done with this host
    assert housekeeping.purge_repo_stats(state, **bounded).repo_stats == 2
    assert housekeeping.purge_repo_stats(state, **bounded).repo_stats == 0
    assert _sizes(host) == [4]


def test_a_purge_with_nothing_to_do_leaves_no_write_lock(app):
    """SQLite: a DELETE or UPDATE that matches nothing still begins a write transaction;
    each purge ends it at once, so agents' writes never wait on an idle pass."""
    if db.engine.dialect.name != "sqlite":
        pytest.skip("SQLite's single writer lock")
    host = factories.make_host()
    _stats(host, 3)
    path = app.config["SQLALCHEMY_DATABASE_URI"].removeprefix("sqlite:///")
    now = utcnow()
    for purge in (
        lambda: housekeeping.purge_job_logs(
            now, retention_days=90, pause=0, commit=db.session.commit
        ),
        lambda: housekeeping.purge_commands(now, pause=0, commit=db.session.commit),
        lambda: housekeeping.purge_agent_events(now, pause=0, commit=db.session.commit),
        lambda: housekeeping.purge_resolved_alerts(
            now, retention_days=365, pause=0, commit=db.session.commit
        ),
        lambda: housekeeping.purge_old_reminders(
            now, retention_days=365, pause=0, commit=db.session.commit
        ),
        lambda: housekeeping.purge_repo_stats({}, keep=5, pause=0, commit=db.session.commit),
    ):
        purge()
        other = sqlite3.connect(path, timeout=0)
        try:
            other.execute("BEGIN IMMEDIATE")  # fails at once if the session kept the lock
            other.rollback()
        finally:
            other.close()
