"""The alert rules and the alert lifecycle (issue 14), with a controllable clock.

Job results arrive the way an agent sends them (job.finished and repo.status events through
the agent API), so the hooks in app/services/events.py run; the time-based rules run through
``alerts.evaluate`` (and ``ticker.tick``) with ``now`` passed in. Notifications are the
outbox rows the engine writes per matching channel; delivering them is another module's job.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import select

from agent.actions.backup import BackupReporter
from app import ticker
from app.extensions import db
from app.models import (
    Alert,
    Host,
    Job,
    Notification,
    NotificationChannel,
    Schedule,
    SourceGroup,
)
from app.models.types import utcnow
from app.services import alerts, jobs, schedules
from app.services.audit import Actor
from tests.factories import TS, Agent, AgentCalls, make_enrolled_host

# The agent's events say they happened at TS: a backup's finished_at, and so the group's
# last successful backup, is this time.
EVENT_TIME = datetime.fromisoformat(TS.replace("Z", "+00:00"))
ADMIN = Actor.system("rules test")
MIB = 1024**2
RESTIC_FIXTURES = Path(__file__).parent / "agent" / "fixtures" / "restic"


# --- helpers ---------------------------------------------------------------------------------


def _channel(name: str, **fields) -> NotificationChannel:
    fields.setdefault("min_severity", "info")
    channel = NotificationChannel(name=name, kind="webhook", config={}, **fields)
    db.session.add(channel)
    db.session.commit()
    return channel


def _run(app, host: Host, token: str, kind="backup", status="succeeded", group="default", **data):
    """A job of ``kind`` queued by the server, then started and finished by the agent over
    the agent API (the events path, with its alert hooks)."""
    params = {"group": group} if kind == "backup" else {}
    job = jobs.create_job(
        app.extensions["secretbox"], host, kind, params=params, actor=ADMIN, now=utcnow()
    )
    db.session.commit()
    calls = AgentCalls(app, token, job)
    calls.event("job.started")
    if status == "failed":
        data.setdefault("exit_code", 1)
    calls.finish(status=status, **data)
    db.session.expire_all()
    return db.session.get(Job, job.id)


def _repo_status(app, host: Host, token: str, status: str, reason=None) -> None:
    job = jobs.create_job(
        app.extensions["secretbox"], host, "probe", params={}, actor=ADMIN, now=utcnow()
    )
    db.session.commit()
    calls = AgentCalls(app, token, job)
    calls.event("repo.status", status=status, reason=reason)
    calls.finish(status="succeeded" if status == "ready" else "failed")
    db.session.expire_all()


def _evaluate(now: datetime, **options) -> alerts.Context:
    context = alerts.evaluate(now, **options)
    db.session.commit()
    return context


def _alerts(rule: str, host: Host | None = None, *, state: str | None = None) -> list[Alert]:
    query = select(Alert).where(Alert.rule == rule).order_by(Alert.id)
    if host is not None:
        query = query.where(Alert.host_id == host.id)
    if state == "open":
        query = query.where(Alert.state != "resolved")
    elif state is not None:
        query = query.where(Alert.state == state)
    db.session.expire_all()
    return list(db.session.scalars(query))


def _one_open(rule: str, host: Host | None = None) -> Alert:
    found = _alerts(rule, host, state="open")
    assert len(found) == 1, [(alert.rule, alert.subject, alert.message) for alert in found]
    return found[0]


def _outbox(alert: Alert) -> list[tuple[str, str]]:
    """(channel name, event) of the alert's notifications, oldest first."""
    rows = db.session.execute(
        select(NotificationChannel.name, Notification.event)
        .join(NotificationChannel, NotificationChannel.id == Notification.channel_id)
        .where(Notification.alert_id == alert.id)
        .order_by(Notification.id)
    )
    return [tuple(row) for row in rows]


def _group(host: Host, name: str = "default") -> SourceGroup:
    return db.session.scalar(
        select(SourceGroup).where(SourceGroup.host_id == host.id, SourceGroup.name == name)
    )


def _add_group(host: Host, name: str, created_at: datetime) -> SourceGroup:
    group = SourceGroup(host_id=host.id, name=name, includes=[f"/{name}"], created_at=created_at)
    db.session.add(group)
    db.session.commit()
    return group


def _schedule(host: Host, cron: str, groups: list[SourceGroup], created_at: datetime) -> Schedule:
    schedule = Schedule(
        host_id=host.id,
        name=f"every-{len(schedules.schedules_of(host))}",
        cron=cron,
        created_at=created_at,
        updated_at=created_at,
    )
    schedule.source_groups = groups
    db.session.add(schedule)
    db.session.commit()
    return schedule


def _aged_group(host: Host, *, last_success: datetime | None, created_at: datetime) -> SourceGroup:
    group = _group(host)
    group.created_at = created_at
    group.last_successful_backup_at = last_success
    db.session.commit()
    return group


# --- backup_failed ---------------------------------------------------------------------------


def test_a_failed_backup_fires_once_repeats_count_and_the_next_good_backup_resolves(app):
    host, token = make_enrolled_host()
    ops = _channel("ops")
    _channel("pager", min_severity="critical")
    _channel("off", enabled=False)
    _channel("db-team", tags=["db"])  # host has no tags: not for it

    _run(app, host, token, status="failed", error="Fatal: unable to open config file")
    alert = _one_open("backup_failed", host)
    assert (alert.state, alert.severity, alert.subject, alert.occurrences) == (
        "firing",
        "critical",
        "default",
        1,
    )
    assert alert.message == ("Backup of default on web-1 failed: Fatal: unable to open config file")
    assert _outbox(alert) == [("ops", "firing"), ("pager", "firing")]

    second = _run(app, host, token, status="failed", error="Fatal: wrong password")
    alert = _one_open("backup_failed", host)
    assert alert.occurrences == 2 and alert.job_id == second.id
    assert "wrong password" in alert.message
    assert _outbox(alert) == [("ops", "firing"), ("pager", "firing")]  # a repeat notifies no one

    _run(app, host, token, status="failed", group="db")  # another group: another alert
    assert {a.subject for a in _alerts("backup_failed", host, state="open")} == {"default", "db"}

    _run(app, host, token, status="succeeded", stats={"files_new": 1})
    db.session.expire_all()
    resolved = db.session.get(Alert, alert.id)
    assert (resolved.state, resolved.resolved_by, resolved.open_key) == (
        "resolved",
        "automatic",
        None,
    )
    assert resolved.resolved_at is not None
    assert _outbox(resolved) == [
        ("ops", "firing"),
        ("pager", "firing"),
        ("ops", "resolved"),
        ("pager", "resolved"),
    ]
    assert [a.subject for a in _alerts("backup_failed", host, state="open")] == ["db"]
    assert ops.enabled  # the channel list was read, not changed


def test_a_lost_backup_fires_and_a_late_real_result_resolves_it(app):
    host, token = make_enrolled_host()
    _channel("ops")
    long_ago = utcnow() - timedelta(hours=2)
    job = jobs.create_job(
        app.extensions["secretbox"],
        host,
        "backup",
        params={"group": "default"},
        actor=ADMIN,
        now=long_ago,
    )
    host.last_seen_at = long_ago
    db.session.commit()

    ticker.tick(app.extensions["secretbox"], utcnow())
    db.session.expire_all()
    assert db.session.get(Job, job.id).status == "lost"
    alert = _one_open("backup_failed", host)
    assert alert.message.startswith("Backup of default on web-1 was lost: The agent on web-1")
    assert _outbox(alert) == [("ops", "firing")]

    # the agent comes back and reports the real outcome of that attempt
    calls = AgentCalls(app, token, job)
    calls.finish(status="succeeded", stats={"files_new": 2})
    db.session.expire_all()
    assert db.session.get(Job, job.id).status == "succeeded"
    assert db.session.get(Alert, alert.id).state == "resolved"
    assert _outbox(alert)[-1] == ("ops", "resolved")


def test_a_cancelled_backup_neither_fires_nor_resolves(app):
    host, token = make_enrolled_host()
    _run(app, host, token, status="failed", error="boom")
    _run(app, host, token, status="cancelled", exit_code=130)
    assert _one_open("backup_failed", host).occurrences == 1


# --- backup_warning --------------------------------------------------------------------------


def test_backup_warning_names_the_count_and_the_first_unreadable_paths(app):
    host, token = make_enrolled_host()
    _channel("ops", min_severity="warning")
    _channel("pager", min_severity="critical")  # a warning is below it
    paths = [f"/srv/data/file-{number}" for number in range(10)]
    _run(
        app,
        host,
        token,
        status="warning",
        exit_code=3,
        error="some source files could not be read",
        stats={"files_new": 5, "error_count": 12, "error_paths": paths, "missing_paths": []},
    )
    alert = _one_open("backup_warning", host)
    assert alert.severity == "warning"
    assert alert.message == (
        "Backup of default on web-1 saved a snapshot, but 12 files could not be read "
        "(/srv/data/file-0, /srv/data/file-1, /srv/data/file-2, /srv/data/file-3, "
        "/srv/data/file-4 and 7 more)."
    )
    assert alert.details["error_count"] == 12 and alert.details["paths"] == paths[:5]
    assert _outbox(alert) == [("ops", "firing")]

    _run(
        app,
        host,
        token,
        status="warning",
        exit_code=0,
        stats={"error_count": 0, "missing_paths": ["/srv/gone"]},
    )
    alert = _one_open("backup_warning", host)
    assert alert.occurrences == 2
    assert alert.message.endswith("but 1 source path is missing (/srv/gone).")

    _run(app, host, token, status="succeeded", stats={"error_count": 0})
    assert _alerts("backup_warning", host, state="open") == []
    assert _outbox(alert) == [("ops", "firing"), ("ops", "resolved")]


class _Sink:
    """What BackupReporter needs of the agent's job: somewhere for events and log lines."""

    def emit(self, event_type, data):
        pass

    def log(self, text, stream="agent"):
        pass


def test_the_agents_unreadable_paths_reach_the_warning_message(app):
    """Contract: the stats the agent's BackupReporter makes of restic's own output (a
    captured 0.14 run with an unreadable directory and file) name them in the alert."""
    captured = (RESTIC_FIXTURES / "22_backup_json_unreadable_files_exit3.txt").read_text()
    stdout, stderr = captured.split("# ===== stdout =====\n", 1)[1].split(
        "# ===== stderr =====\n", 1
    )
    reporter = BackupReporter(_Sink(), paths=["/srv/demo/permdata"])
    for line in stderr.splitlines():
        reporter.stderr_line(line)
    for line in stdout.splitlines():
        reporter.stdout_line(line)
    host, token = make_enrolled_host()
    _run(app, host, token, status="warning", exit_code=3, stats=reporter.stats())
    assert _one_open("backup_warning", host).message == (
        "Backup of default on web-1 saved a snapshot, but 3 files could not be read "
        "(/srv/demo/permdata/lockeddir, /srv/demo/permdata/secret.txt and 1 more)."
    )


def test_a_warning_backup_resolves_backup_failed(app):
    host, token = make_enrolled_host()
    _run(app, host, token, status="failed", error="boom")
    _run(app, host, token, status="warning", exit_code=3, stats={"error_count": 1})
    assert _alerts("backup_failed", host, state="open") == []
    assert _one_open("backup_warning", host).message.endswith("1 file could not be read.")


# --- backup_overdue --------------------------------------------------------------------------


def test_a_daily_schedule_is_overdue_after_its_period_plus_grace_and_a_backup_resolves_it(app):
    host, token = make_enrolled_host()
    _channel("ops")
    last = EVENT_TIME - timedelta(days=3)
    group = _aged_group(host, last_success=last, created_at=last - timedelta(days=30))
    _schedule(host, "0 2 * * *", [group], created_at=last - timedelta(days=30))
    limit = timedelta(hours=24 + 1)  # the period from the cron, plus the default grace

    _evaluate(last + limit - timedelta(minutes=1))
    assert _alerts("backup_overdue", host) == []
    _evaluate(last + limit + timedelta(minutes=1))
    alert = _one_open("backup_overdue", host)
    assert alert.subject == "default" and alert.severity == "critical"
    assert alert.message == (
        f"Source group default on web-1 has had no successful backup since "
        f"{last:%Y-%m-%d %H:%M} UTC: its schedule runs at least every 24 hours, plus 60 "
        f"minutes of grace."
    )
    assert alert.details["limit_seconds"] == 25 * 3600
    assert _outbox(alert) == [("ops", "firing")]

    # The ticker sees it again: nothing new is written, and no second alert opens.
    _evaluate(last + limit + timedelta(minutes=1))
    assert _one_open("backup_overdue", host).id == alert.id
    assert _outbox(alert) == [("ops", "firing")]

    _run(app, host, token)  # finished at EVENT_TIME
    assert _alerts("backup_overdue", host, state="open") == []
    assert _outbox(alert) == [("ops", "firing"), ("ops", "resolved")]
    assert _group(host).last_successful_backup_at == EVENT_TIME
    _evaluate(EVENT_TIME + limit - timedelta(minutes=1))
    assert _alerts("backup_overdue", host, state="open") == []
    # Overdue again later: a new alert, the first stays in the history.
    _evaluate(EVENT_TIME + limit + timedelta(minutes=1))
    again = _one_open("backup_overdue", host)
    assert again.id != alert.id and db.session.get(Alert, alert.id).state == "resolved"


def test_a_weekdays_only_schedule_is_not_overdue_over_the_weekend(app):
    host, _ = make_enrolled_host()
    friday_evening = datetime(2026, 11, 27, 17, 0, tzinfo=timezone.utc)
    long_ago = friday_evening - timedelta(days=60)
    group = _aged_group(host, last_success=friday_evening, created_at=long_ago)
    # Hourly from 09:00 to 17:00 on weekdays: the longest gap is Friday 17:00 to Monday 09:00.
    _schedule(host, "0 9-17 * * 1-5", [group], created_at=long_ago)
    daily = _add_group(host, "daily", long_ago)
    daily.last_successful_backup_at = friday_evening
    _schedule(host, "0 2 * * *", [daily], created_at=long_ago)

    _evaluate(datetime(2026, 11, 29, 12, 0, tzinfo=timezone.utc))  # Sunday noon
    assert [alert.subject for alert in _alerts("backup_overdue", host)] == ["daily"]
    _evaluate(datetime(2026, 11, 30, 9, 59, tzinfo=timezone.utc))  # Monday, 64 h 59 min later
    assert [alert.subject for alert in _alerts("backup_overdue", host)] == ["daily"]
    _evaluate(datetime(2026, 11, 30, 10, 1, tzinfo=timezone.utc))  # 64 h + 1 h grace passed
    weekday = [alert for alert in _alerts("backup_overdue", host) if alert.subject == "default"]
    assert len(weekday) == 1
    assert "runs at least every 2 days and 16 hours, plus 60 minutes of grace" in weekday[0].message


def test_schedule_periods_come_from_the_cron():
    assert alerts.schedule_period_seconds("0 2 * * *") == 86400
    assert alerts.schedule_period_seconds("*/15 * * * *") == 900
    assert alerts.schedule_period_seconds("0 2 * * 1-5") == 3 * 86400  # Friday to Monday
    assert alerts.schedule_period_seconds("0 9-17 * * 1-5") == 64 * 3600
    assert alerts.schedule_period_seconds("30 3 * * 0") == 7 * 86400
    assert alerts.schedule_period_seconds("0 4 31 * *") == 61 * 86400  # skips 30-day months
    assert alerts.schedule_period_seconds("not a cron") is None


def test_a_new_schedule_counts_from_its_start_not_from_an_old_backup(app):
    host, _ = make_enrolled_host()
    start = EVENT_TIME
    group = _aged_group(
        host, last_success=start - timedelta(days=30), created_at=start - timedelta(days=90)
    )
    _schedule(host, "0 2 * * *", [group], created_at=start)
    _evaluate(start + timedelta(hours=24))
    assert _alerts("backup_overdue", host) == []
    _evaluate(start + timedelta(hours=25, minutes=1))
    assert (
        "since " + f"{start - timedelta(days=30):%Y-%m-%d}"
        in _one_open("backup_overdue", host).message
    )


def test_a_group_never_backed_up_is_overdue_from_its_creation(app):
    host, _ = make_enrolled_host()
    created = EVENT_TIME - timedelta(days=2)
    group = _aged_group(host, last_success=None, created_at=created)
    _schedule(host, "0 * * * *", [group], created_at=created)
    _evaluate(created + timedelta(minutes=119))
    assert _alerts("backup_overdue", host) == []
    _evaluate(created + timedelta(minutes=121))
    assert "no successful backup ever (the group exists since" in (
        _one_open("backup_overdue", host).message
    )


def test_unscheduled_groups_use_the_hosts_maximum_age(app):
    host, token = make_enrolled_host()
    last = EVENT_TIME - timedelta(days=1)
    _aged_group(host, last_success=last, created_at=last - timedelta(days=10))
    _evaluate(last + timedelta(days=100))  # no schedule, no maximum age: never overdue
    assert _alerts("backup_overdue", host) == []

    alerts.set_override(
        host, "backup_overdue", {"max_age_seconds": 2 * 86400}, actor=ADMIN, now=utcnow()
    )
    db.session.commit()
    _evaluate(last + timedelta(days=2) - timedelta(minutes=1))
    assert _alerts("backup_overdue", host) == []
    _evaluate(last + timedelta(days=2, minutes=1))
    alert = _one_open("backup_overdue", host)
    assert alert.message.endswith(": the host's maximum backup age is 2 days.")

    _run(app, host, token)
    assert _alerts("backup_overdue", host, state="open") == []

    # the override removed again: nothing to be overdue against
    alerts.set_override(
        host, "backup_overdue", {"max_age_seconds": None}, actor=ADMIN, now=utcnow()
    )
    db.session.commit()
    assert alerts.host_overrides(host) == {}


def test_an_overdue_group_that_is_deleted_or_unscheduled_resolves(app):
    host, _ = make_enrolled_host()
    long_ago = EVENT_TIME - timedelta(days=30)
    group = _aged_group(host, last_success=long_ago, created_at=long_ago)
    extra = _add_group(host, "extra", long_ago)
    schedule = _schedule(host, "0 2 * * *", [group], created_at=long_ago)
    extra_schedule = _schedule(host, "0 3 * * *", [extra], created_at=long_ago)
    _evaluate(EVENT_TIME)
    assert {alert.subject for alert in _alerts("backup_overdue", host, state="open")} == {
        "default",
        "extra",
    }
    db.session.delete(extra_schedule)
    db.session.delete(extra)
    schedule.enabled = False
    db.session.commit()
    _evaluate(EVENT_TIME + timedelta(minutes=1))
    assert _alerts("backup_overdue", host, state="open") == []
    assert {alert.resolved_by for alert in _alerts("backup_overdue", host)} == {"automatic"}


# --- agent_offline ---------------------------------------------------------------------------


def test_agent_offline_after_the_threshold_once_the_server_listened_that_long(app):
    host, token = make_enrolled_host()
    _channel("ops")
    seen = utcnow() - timedelta(hours=3)
    host.last_seen_at = seen
    db.session.commit()

    _evaluate(seen + timedelta(seconds=600))
    assert _alerts("agent_offline", host) == []
    # The server itself started 9 minutes ago: its own downtime is not the agent's silence.
    _evaluate(seen + timedelta(seconds=700), listening_since=seen + timedelta(seconds=160))
    assert _alerts("agent_offline", host) == []
    _evaluate(seen + timedelta(seconds=700), listening_since=seen + timedelta(seconds=100))
    alert = _one_open("agent_offline", host)
    assert alert.severity == "warning"
    assert alert.message == (
        f"The agent on web-1 has not polled for 11 minutes (since {seen:%Y-%m-%d %H:%M} UTC)."
    )
    _evaluate(seen + timedelta(seconds=1000))  # still silent: the same alert
    assert _one_open("agent_offline", host).id == alert.id
    assert "16 minutes" in _one_open("agent_offline", host).message
    assert _outbox(alert) == [("ops", "firing")]

    agent = Agent(app, token)
    assert agent.hello().status_code == 200
    assert agent.poll().status_code in (200, 204)
    _evaluate(utcnow())
    assert _alerts("agent_offline", host, state="open") == []
    assert _outbox(alert) == [("ops", "firing"), ("ops", "resolved")]


def test_agent_offline_threshold_per_host_and_a_disabled_rule(app):
    quiet, _ = make_enrolled_host("quiet")
    patient, _ = make_enrolled_host("patient")
    ignored, _ = make_enrolled_host("ignored")
    seen = utcnow() - timedelta(hours=5)
    for host in (quiet, patient, ignored):
        host.last_seen_at = seen
    alerts.set_override(
        patient, "agent_offline", {"threshold_seconds": 3600}, actor=ADMIN, now=seen
    )
    alerts.set_override(ignored, "agent_offline", {"enabled": False}, actor=ADMIN, now=seen)
    db.session.commit()

    _evaluate(seen + timedelta(minutes=30))
    assert [alert.host_id for alert in _alerts("agent_offline")] == [quiet.id]
    _evaluate(seen + timedelta(minutes=61))
    assert {alert.host_id for alert in _alerts("agent_offline")} == {quiet.id, patient.id}

    # Switching the rule off fleet-wide resolves what it opened.
    alerts.update_rule("agent_offline", {"enabled": False}, actor=ADMIN, now=utcnow())
    db.session.commit()
    _evaluate(seen + timedelta(minutes=62))
    assert _alerts("agent_offline", state="open") == []
    alerts.update_rule("agent_offline", {"enabled": True}, actor=ADMIN, now=utcnow())
    alerts.set_override(quiet, "agent_offline", {"threshold_seconds": 7200}, actor=ADMIN, now=seen)
    db.session.commit()
    _evaluate(seen + timedelta(minutes=63))
    assert {alert.host_id for alert in _alerts("agent_offline", state="open")} == {patient.id}


# --- schedule_not_applied --------------------------------------------------------------------


def test_schedule_not_applied_until_the_agent_confirms_the_version(app):
    host, token = make_enrolled_host()
    changed = utcnow()
    schedules.create(
        app.extensions["secretbox"],
        host,
        {"name": "nightly", "cron": "0 2 * * *", "source_groups": ["default"]},
        now=changed,
    )
    db.session.commit()
    assert host.schedule_version == 1

    _evaluate(changed + timedelta(seconds=600))
    assert _alerts("schedule_not_applied", host) == []
    _evaluate(changed + timedelta(seconds=601))
    alert = _one_open("schedule_not_applied", host)
    assert alert.message == (
        "The agent on web-1 has not confirmed schedule version 1 (it runs version none) "
        "for 10 minutes."
    )
    event = {"event_id": "ack-1", "type": "schedule.applied", "ts": TS, "data": {"version": 1}}
    answer = Agent(app, token).post("/events", {"events": [event]})
    assert answer.get_json()["rejected"] == []
    _evaluate(changed + timedelta(seconds=700))
    assert _alerts("schedule_not_applied", host, state="open") == []


# --- check_failed, repository_error, maintenance_failed --------------------------------------


def test_check_failed_fires_and_the_next_good_check_resolves_it(app):
    host, token = make_enrolled_host()
    _run(app, host, token, kind="check", status="failed", error="Fatal: pack 3f2a is damaged")
    alert = _one_open("check_failed", host)
    assert alert.severity == "critical"
    assert alert.message == (
        "restic check of web-1's repository failed: Fatal: pack 3f2a is damaged"
    )
    _run(app, host, token, kind="check", status="succeeded")
    assert _alerts("check_failed", host, state="open") == []


def test_repository_error_from_repo_status_resolves_when_ready(app):
    host, token = make_enrolled_host()
    _repo_status(app, host, token, "error", "wrong password: no key found")
    alert = _one_open("repository_error", host)
    assert alert.message == ("The repository of web-1 is unusable: wrong password: no key found")
    _repo_status(app, host, token, "error", "wrong password: no key found")
    assert _one_open("repository_error", host).occurrences == 2
    _repo_status(app, host, token, "ready")
    assert _alerts("repository_error", host, state="open") == []


def test_a_repository_missing_for_a_backup_is_a_repository_error(app):
    host, token = make_enrolled_host()
    job = jobs.create_job(
        app.extensions["secretbox"], host, "backup", params={}, actor=ADMIN, now=utcnow()
    )
    db.session.commit()
    calls = AgentCalls(app, token, job)
    calls.event("repo.status", status="missing", reason="config file not found")
    calls.finish(status="failed", exit_code=10, error="Fatal: repository does not exist")
    assert _one_open("repository_error", host).message == (
        "The repository of web-1 is missing: config file not found"
    )
    assert _one_open("backup_failed", host).subject == "default"


def test_maintenance_failed_is_kept_per_task(app):
    host, token = make_enrolled_host()
    _run(app, host, token, kind="forget", status="failed", error="forget broke")
    _run(app, host, token, kind="prune", status="failed", error="prune broke")
    open_ = _alerts("maintenance_failed", host, state="open")
    assert [(alert.subject, alert.message) for alert in open_] == [
        ("forget", "forget on web-1 failed: forget broke"),
        ("prune", "prune on web-1 failed: prune broke"),
    ]
    _run(app, host, token, kind="prune", status="succeeded")
    assert [alert.subject for alert in _alerts("maintenance_failed", host, state="open")] == [
        "forget"
    ]


# --- backup_size_anomaly ---------------------------------------------------------------------


def _stats(changed=500, added=200 * MIB, total=10_000):
    return {
        "files_new": changed // 2,
        "files_changed": changed - changed // 2,
        "data_added": added,
        "total_files_processed": total,
        "error_count": 0,
    }


def test_no_anomaly_before_three_previous_backups(app):
    host, token = make_enrolled_host()
    _run(app, host, token, stats=_stats())
    _run(app, host, token, stats=_stats())
    _run(app, host, token, stats=_stats(changed=50_000, added=50_000 * MIB, total=100))
    assert _alerts("backup_size_anomaly", host) == []


def test_a_mass_change_is_an_anomaly_with_its_numbers(app):
    host, token = make_enrolled_host()
    _channel("ops")
    for changed in (400, 500, 600):
        _run(app, host, token, stats=_stats(changed=changed))
    _run(app, host, token, stats=_stats(changed=4_999))  # under 10x the median of 500
    assert _alerts("backup_size_anomaly", host) == []

    job = _run(app, host, token, stats=_stats(changed=6_000))
    alert = _one_open("backup_size_anomaly", host)
    assert alert.severity == "critical" and alert.job_id == job.id
    assert alert.message == (
        "Backup of default on web-1 is unusual compared with its last 4 backups: "
        "6,000 files new or changed, 11x the median of 550 (alert above 10x the median, "
        "at least 5,500)."
    )
    assert alert.details["files_changed"] == 6_000
    assert _outbox(alert) == [("ops", "firing")]

    _run(app, host, token, stats=_stats())  # a normal backup explains nothing: still open
    assert _one_open("backup_size_anomaly", host).id == alert.id
    assert _outbox(alert) == [("ops", "firing")]


def test_added_bytes_and_a_file_count_drop_are_anomalies(app):
    host, token = make_enrolled_host()
    for _ in range(3):
        _run(app, host, token, stats=_stats())
    _run(app, host, token, stats=_stats(added=3000 * MIB, total=6_000))
    alert = _one_open("backup_size_anomaly", host)
    assert "2.9 GiB added against a median of 200 MiB (alert above 2.0 GiB)" in alert.message
    assert (
        "the file count fell to 6,000 from a median of 10,000 (-40 %, alert above 30 %)"
        in alert.message
    )
    assert alert.details["total_files"] == 6_000 and alert.details["data_added"] == 3000 * MIB

    other, other_token = make_enrolled_host("db-1")
    for _ in range(3):
        _run(app, other, other_token, stats=_stats())
    _run(app, other, other_token, stats=_stats(total=7_100))  # -29 %: normal churn
    assert _alerts("backup_size_anomaly", other) == []


def test_the_anomaly_factor_can_be_set_per_group(app):
    host, token = make_enrolled_host()
    db_group = _add_group(host, "db", utcnow())
    alerts.set_override(
        host, "backup_size_anomaly", {"factor": 20}, actor=ADMIN, now=utcnow(), group=db_group
    )
    db.session.commit()
    for group in ("default", "db"):
        for _ in range(3):
            _run(app, host, token, group=group, stats=_stats())
        _run(app, host, token, group=group, stats=_stats(changed=6_000))
    assert [alert.subject for alert in _alerts("backup_size_anomaly", host)] == ["default"]
    _run(app, host, token, group="db", stats=_stats(changed=10_001))
    assert {alert.subject for alert in _alerts("backup_size_anomaly", host)} == {"default", "db"}


# --- acknowledge, reminders, manual resolve --------------------------------------------------


def test_reminders_per_channel_while_firing_until_acknowledged(app):
    host, token = make_enrolled_host()
    _channel("often", remind_every_hours=2)
    _channel("daily")  # the default: 24 h
    _channel("never", remind_every_hours=0)
    _run(app, host, token, status="failed", error="boom")
    alert = _one_open("backup_failed", host)
    fired = alert.fired_at
    reminders = lambda: [name for name, event in _outbox(alert) if event == "reminder"]  # noqa: E731

    _evaluate(fired + timedelta(hours=1))
    assert reminders() == []
    _evaluate(fired + timedelta(hours=2, seconds=1))
    assert reminders() == ["often"]
    _evaluate(fired + timedelta(hours=3))  # two hours from the last reminder, not from firing
    assert reminders() == ["often"]
    _evaluate(fired + timedelta(hours=4, seconds=2))
    assert reminders() == ["often", "often"]
    _evaluate(fired + timedelta(hours=24, seconds=1))
    assert reminders() == ["often", "often", "often", "daily"]

    alerts.acknowledge(alert, actor=ADMIN, now=fired + timedelta(hours=25), note="on it")
    db.session.commit()
    assert (alert.state, alert.acknowledged_by, alert.ack_note) == (
        "acknowledged",
        "rules test",
        "on it",
    )
    _evaluate(fired + timedelta(hours=60))
    assert len(reminders()) == 4

    # acknowledged still resolves by itself, with a notification
    _run(app, host, token)
    db.session.expire_all()
    assert db.session.get(Alert, alert.id).state == "resolved"
    assert [name for name, event in _outbox(alert) if event == "resolved"] == [
        "often",
        "daily",
        "never",
    ]


def test_a_manual_resolve_notifies_and_a_condition_still_true_opens_a_new_alert(app):
    host, _ = make_enrolled_host()
    _channel("ops")
    seen = utcnow() - timedelta(hours=1)
    host.last_seen_at = seen
    db.session.commit()
    _evaluate(seen + timedelta(minutes=15))
    first = _one_open("agent_offline", host)
    alerts.resolve(first, actor=ADMIN, now=seen + timedelta(minutes=16), note="known")
    db.session.commit()
    assert (first.state, first.resolved_by, first.resolve_note) == (
        "resolved",
        "rules test",
        "known",
    )
    assert _outbox(first) == [("ops", "firing"), ("ops", "resolved")]
    _evaluate(seen + timedelta(minutes=17))
    second = _one_open("agent_offline", host)
    assert second.id != first.id
    assert [alert.state for alert in _alerts("agent_offline", host)] == ["resolved", "firing"]


# --- silences --------------------------------------------------------------------------------


def _silence(now: datetime, **fields):
    values = {"reason": "planned maintenance", "ends_at": (now + timedelta(hours=4)).isoformat()}
    values.update(fields)
    silence = alerts.create_silence(values, actor=ADMIN, now=now)
    db.session.commit()
    return silence


def test_silences_mute_notifications_but_the_alert_is_there(app):
    by_host, by_host_token = make_enrolled_host("by-host")
    by_tag, by_tag_token = make_enrolled_host("by-tag")
    by_rule, by_rule_token = make_enrolled_host("by-rule")
    loud, loud_token = make_enrolled_host("loud")
    by_tag.tags = ["lab"]
    db.session.commit()
    _channel("ops", remind_every_hours=1)
    now = utcnow()
    _silence(now, host_id=by_host.id)
    _silence(now, tag="lab")
    _silence(now, rule="backup_failed", host_id=by_rule.id)
    _silence(now, host_id=loud.id, rule="check_failed")  # another rule: does not mute
    _silence(now + timedelta(hours=10), host_id=loud.id)  # starts later

    for host, token in (
        (by_host, by_host_token),
        (by_tag, by_tag_token),
        (by_rule, by_rule_token),
        (loud, loud_token),
    ):
        _run(app, host, token, status="failed", error="boom")
    fired = {alert.host_id: alert for alert in _alerts("backup_failed", state="firing")}
    assert set(fired) == {by_host.id, by_tag.id, by_rule.id, loud.id}
    assert [_outbox(fired[host.id]) for host in (by_host, by_tag, by_rule)] == [[], [], []]
    assert _outbox(fired[loud.id]) == [("ops", "firing")]
    hosts = {host.id: host for host in (by_host, by_tag, by_rule, loud)}
    muted = alerts.muted_by(fired.values(), hosts, now)
    assert set(muted) == {fired[by_host.id].id, fired[by_tag.id].id, fired[by_rule.id].id}
    assert muted[fired[by_tag.id].id].tag == "lab"

    # no reminders while muted either; once the silences end, the channels hear of it
    for host in hosts.values():
        host.last_seen_at = now + timedelta(hours=8)  # keep agent_offline out of this
    db.session.commit()
    _evaluate(now + timedelta(hours=2))
    assert [len(_outbox(fired[host.id])) for host in (by_host, by_tag, by_rule, loud)] == [
        0,
        0,
        0,
        2,
    ]
    _evaluate(now + timedelta(hours=5))
    assert [_outbox(fired[host.id]) for host in (by_host, by_tag, by_rule)] == [
        [("ops", "firing")],
        [("ops", "firing")],
        [("ops", "firing")],
    ]
    assert alerts.muted_by(fired.values(), hosts, now + timedelta(hours=5)) == {}
    _evaluate(now + timedelta(hours=5, minutes=30))  # told once; reminders from then on
    assert len(_outbox(fired[by_host.id])) == 1
    _evaluate(now + timedelta(hours=6, minutes=1))
    assert _outbox(fired[by_host.id]) == [("ops", "firing"), ("ops", "reminder")]


def test_an_alert_resolved_meanwhile_by_another_transaction_is_not_resolved_twice(app):
    host, token = make_enrolled_host()
    _channel("ops")
    _run(app, host, token, status="failed", error="boom")
    alert = _one_open("backup_failed", host)
    stale = alerts.Context(utcnow(), host_ids=[host.id])  # read before the other resolve
    assert stale.open
    other = app.extensions["sqlalchemy"].engine.connect()
    try:
        other.execute(
            Alert.__table__.update()
            .where(Alert.id == alert.id)
            .values(state="resolved", open_key=None, resolved_at=utcnow(), resolved_by="bob")
        )
        other.commit()
    finally:
        other.close()
    assert alerts.clear(stale, host, "backup_failed", "default") is None
    db.session.commit()
    db.session.expire_all()
    assert db.session.get(Alert, alert.id).resolved_by == "bob"
    assert _outbox(alert) == [("ops", "firing")]  # no second "resolved"


def test_a_muted_alert_resolves_silently(app):
    host, token = make_enrolled_host()
    _channel("ops")
    _run(app, host, token, status="failed", error="boom")
    alert = _one_open("backup_failed", host)
    _silence(utcnow(), host_id=host.id)
    _run(app, host, token)
    assert db.session.get(Alert, alert.id).state == "resolved"
    assert _outbox(alert) == [("ops", "firing")]


# --- channels and settings -------------------------------------------------------------------


def test_channels_filter_by_enabled_severity_and_tags(app):
    tagged, tagged_token = make_enrolled_host("db-1")
    plain, plain_token = make_enrolled_host("web-1")
    tagged.tags = ["db", "prod"]
    db.session.commit()
    _channel("all-warnings", min_severity="warning")
    _channel("critical-only", min_severity="critical")
    _channel("db-team", tags=["db"])
    _channel("disabled", enabled=False)

    for host, token in ((tagged, tagged_token), (plain, plain_token)):
        _run(app, host, token, status="warning", exit_code=3, stats={"error_count": 1})
        _run(app, host, token, kind="check", status="failed", error="damaged")
    assert _outbox(_one_open("backup_warning", tagged)) == [
        ("all-warnings", "firing"),
        ("db-team", "firing"),
    ]
    assert _outbox(_one_open("check_failed", tagged)) == [
        ("all-warnings", "firing"),
        ("critical-only", "firing"),
        ("db-team", "firing"),
    ]
    assert _outbox(_one_open("backup_warning", plain)) == [("all-warnings", "firing")]
    assert _outbox(_one_open("check_failed", plain)) == [
        ("all-warnings", "firing"),
        ("critical-only", "firing"),
    ]


def test_a_rule_disabled_for_a_host_fires_nothing_and_severity_is_settable(app):
    host, token = make_enrolled_host()
    other, other_token = make_enrolled_host("db-1")
    alerts.set_override(host, "backup_failed", {"enabled": False}, actor=ADMIN, now=utcnow())
    alerts.update_rule("check_failed", {"severity": "warning"}, actor=ADMIN, now=utcnow())
    db.session.commit()
    _run(app, host, token, status="failed", error="boom")
    _run(app, other, other_token, status="failed", error="boom")
    assert [alert.host_id for alert in _alerts("backup_failed")] == [other.id]
    _run(app, other, other_token, kind="check", status="failed", error="damaged")
    assert _one_open("check_failed", other).severity == "warning"
    assert alerts.rule_view("check_failed")["severity"] == "warning"


def test_a_severity_change_reaches_open_time_based_alerts(app):
    host, _ = make_enrolled_host()
    seen = utcnow() - timedelta(hours=1)
    host.last_seen_at = seen
    db.session.commit()
    _evaluate(seen + timedelta(minutes=20))
    assert _one_open("agent_offline", host).severity == "warning"
    alerts.update_rule("agent_offline", {"severity": "critical"}, actor=ADMIN, now=utcnow())
    db.session.commit()
    _evaluate(seen + timedelta(minutes=20, seconds=10))  # the same message as before
    assert _one_open("agent_offline", host).severity == "critical"
    assert alerts.critical_firing_count() == 1


def test_history_keeps_every_episode(app):
    host, token = make_enrolled_host()
    for _ in range(3):
        _run(app, host, token, status="failed", error="boom")
        _run(app, host, token)
    history = _alerts("backup_failed", host)
    assert [alert.state for alert in history] == ["resolved"] * 3
    assert len({alert.id for alert in history}) == 3
    assert alerts.list_alerts(host_id=host.id, rule="backup_failed", state="resolved")[0].id == (
        history[-1].id
    )
    assert alerts.open_summary([host.id]) == {}


def test_the_pass_pauses_between_hosts_and_evaluates_every_one(app, monkeypatch):
    """The ticker's pause is called every PAUSE_HOSTS hosts (the worker's other requests
    run there on PostgreSQL), and every host is still evaluated."""
    monkeypatch.setattr(alerts, "PAUSE_HOSTS", 2)
    seen = utcnow() - timedelta(hours=3)
    hosts = []
    for number in range(5):
        host, _ = make_enrolled_host(f"web-{number}")
        host.last_seen_at = seen
        hosts.append(host)
    db.session.commit()
    pauses = []
    _evaluate(utcnow(), pause=lambda: pauses.append(1))
    assert len(pauses) == 2  # after hosts 2 and 4 of 5
    assert len(_alerts("agent_offline", state="open")) == 5


def test_the_ticker_pauses_on_postgresql_only():
    sqlite = sa.create_engine("sqlite://")
    postgresql = sa.create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")
    assert ticker._pause_for(sqlite) is None  # a switch inside SQLite's write lock stalls
    assert ticker._pause_for(postgresql) is ticker._let_others_run
