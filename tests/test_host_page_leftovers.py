"""Issue 15's leftovers on the host page: snapshot size and file count, per-schedule Run now,
and the stale-lock banner with Unlock — the lock and the sizes checked with the real restic
(0.14: no summary in its snapshots) through the agent's real runner and the server's event
path."""

from __future__ import annotations

import os
import subprocess
import time
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from flask_migrate import downgrade, upgrade
from sqlalchemy import event, select

from app import create_app
from app.extensions import db
from app.models import AuditLog, Command, Host, Job, Role, Schedule, Snapshot, SourceGroup
from app.models.types import utcnow
from app.services import repo_locks, snapshot_sizes
from tests.agent.real_restic import RESTIC, RunnerJobs, needs_restic, run_restic
from tests.factories import (
    AgentCalls,
    enroll_agent,
    form_token,
    make_host,
    make_job,
    queue_job,
)

FULL = "ab" * 32
OTHER = "cd" * 32
UNKNOWN = "ef" * 32
HINT = "Needs restic 0.17+ on the host, or a backup run by restic-manager"
LOCK_ERROR = (
    "the repository stayed locked through 3 tries over 1 s; if no other restic is using it, "
    "run an unlock job (the repository is locked by another restic: unable to create lock in "
    "backend: repository is already locked by PID 4242 on web-1 by root (UID 0, GID 0) / "
    "lock was created at 2026-12-03 22:10:05 (1m2.5s ago))"
)


@pytest.fixture
def app(app_factory):
    """Long polls held 2 s, as the enrolled agents of tests/factories.py expect."""
    app = app_factory(RM_POLL_WAIT_SECONDS=2)
    with app.app_context():
        yield app


def _snapshot(host, snapshot_id, *, minutes_ago=10, summary=None):
    row = Snapshot(
        host_id=host.id,
        snapshot_id=snapshot_id,
        short_id=snapshot_id[:8],
        time=utcnow() - timedelta(minutes=minutes_ago),
        paths=["/etc"],
        tags=["default"],
        summary=summary,
    )
    db.session.add(row)
    db.session.commit()
    return row


def _statements(engine):
    seen = []

    def count(conn, cursor, statement, *args):
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    return seen, lambda: event.remove(engine, "before_cursor_execute", count)


# --- snapshot size and file count ---------------------------------------------------------


def test_sizes_come_from_the_summary_else_our_backup_job_in_one_query(app):
    host = make_host()
    summary = {"total_bytes_processed": 5 * 1024**2, "total_files_processed": 12, "data_added": 7}
    with_summary = _snapshot(host, FULL, summary=summary)
    ours = _snapshot(host, OTHER, minutes_ago=5)
    _snapshot(host, UNKNOWN, minutes_ago=1)
    job = make_job(
        host,
        finished_at=utcnow(),
        stats={
            "snapshot_id": OTHER[:8],  # restic 0.14 printed the short id
            "total_bytes_processed": 2048,
            "total_files_processed": 3,
            "data_added": 100,
        },
    )
    make_job(host, status="failed", finished_at=utcnow(), stats={"snapshot_id": UNKNOWN})
    snapshots = list(db.session.scalars(select(Snapshot).where(Snapshot.host_id == host.id)))
    for snapshot in snapshots:
        assert snapshot.summary is None or snapshot.summary  # loaded before counting
    seen, stop = _statements(db.engine)
    try:
        sizes = snapshot_sizes.sizes_of(snapshots)
    finally:
        stop()
    assert len(seen) == 1  # one query for the page's jobs, however many snapshots
    assert sizes[with_summary.snapshot_id].size_bytes == 5 * 1024**2
    assert sizes[with_summary.snapshot_id].source == "restic"
    assert sizes[ours.snapshot_id] == snapshot_sizes.SnapshotSize(2048, 100, 3, "job", job.id)
    assert UNKNOWN not in sizes  # a failed job saved nothing


def test_the_host_page_restore_picker_and_api_show_size_and_files(app, login_as, api):
    host = make_host()
    _snapshot(
        host,
        FULL,
        summary={
            "total_bytes_processed": 3 * 1024**2,
            "data_added": 512,
            "total_files_processed": 1204,
        },
    )
    _snapshot(host, UNKNOWN, minutes_ago=1)
    browser = login_as(Role.operator)
    for path in (f"/hosts/{host.id}", f"/hosts/{host.id}/restore"):
        html = browser.get(path).get_data(as_text=True)
        assert '<th scope="col" class="num"' in html and ">Files</th>" in html
        assert ">3.0 MiB</span>" in html and ">1,204</td>" in html
        assert "512 B of new data added to the repository" in html
        assert f'title="{HINT}"' in html  # the unknown one says why
    items = api(Role.viewer).get(f"/api/v1/hosts/{host.id}/snapshots").get_json()["items"]
    by_id = {item["id"]: item for item in items}
    assert by_id[FULL]["size_bytes"] == 3 * 1024**2
    assert by_id[FULL]["data_added_bytes"] == 512 and by_id[FULL]["file_count"] == 1204
    assert by_id[UNKNOWN]["size_bytes"] is None and by_id[UNKNOWN]["file_count"] is None


# --- per-schedule Run now -------------------------------------------------------------------


def _schedule(host, groups, *, enabled=True, name="nightly"):
    schedule = Schedule(host_id=host.id, name=name, cron="30 2 * * *", enabled=enabled)
    schedule.source_groups = groups
    db.session.add(schedule)
    db.session.commit()
    return schedule


def _run_page(browser, host, schedule):
    token = form_token(browser, f"/hosts/{host.id}/schedules")
    return browser.post(f"/hosts/{host.id}/schedules/{schedule.id}/run", data={"csrf_token": token})


def test_run_now_queues_one_backup_per_group_audited_and_goes_to_the_job(app, login_as):
    host = make_host()
    default = db.session.scalar(select(SourceGroup).where(SourceGroup.host_id == host.id))
    schedule = _schedule(host, [default], enabled=False)
    browser = login_as(Role.operator)
    page = browser.get(f"/hosts/{host.id}/schedules").get_data(as_text=True)
    assert "Run now</button>" in page and "a manual run: the schedule stays disabled" in page
    response = _run_page(browser, host, schedule)
    job = db.session.scalar(select(Job).where(Job.host_id == host.id))
    assert response.status_code == 302
    assert response.headers["Location"].endswith(f"/jobs/{job.id}#job-head")
    assert (job.kind, job.params["group"], job.params["paths"]) == ("backup", "default", ["/etc"])
    assert job.schedule_id == schedule.id and job.actor_type == "user"
    command = db.session.scalar(select(Command).where(Command.job_id == job.id))
    assert command.type == "job.run" and command.payload["params"]["group"] == "default"
    row = db.session.scalar(select(AuditLog).where(AuditLog.action == "schedule.run_now"))
    assert row.payload["job_ids"] == [job.id] and row.payload["enabled"] is False
    flashed = browser.get(f"/jobs/{job.id}").get_data(as_text=True)
    assert f"job {job.id} (default)" in flashed
    db.session.refresh(schedule)
    assert schedule.enabled is False  # a manual run does not enable it


def test_run_now_of_two_groups_names_both_jobs(app, login_as):
    host = make_host()
    db_group = SourceGroup(host_id=host.id, name="db", includes=["/var/lib/db"])
    db.session.add(db_group)
    db.session.commit()
    schedule = _schedule(host, list(db.session.scalars(select(SourceGroup))))
    browser = login_as(Role.operator)
    response = _run_page(browser, host, schedule)
    assert response.headers["Location"].endswith(f"/hosts/{host.id}/schedules")
    started = list(db.session.scalars(select(Job).order_by(Job.id)))
    assert [job.params["group"] for job in started] == ["db", "default"]
    page = browser.get(f"/hosts/{host.id}/schedules").get_data(as_text=True)
    assert f"job {started[0].id} (db), job {started[1].id} (default)" in page
    assert f'href="/jobs/{started[1].id}"' in page  # the schedule's last run now


def test_run_now_on_an_offline_host_is_refused_like_run_now_and_starts_nothing(app, login_as):
    host = make_host(seen_seconds_ago=3600)
    schedule = _schedule(host, list(host.source_groups))
    browser = login_as(Role.operator)
    response = _run_page(browser, host, schedule)
    assert response.headers["Location"].endswith(f"/hosts/{host.id}/schedules")
    page = browser.get(f"/hosts/{host.id}/schedules").get_data(as_text=True)
    assert "Schedule nightly did not run: web-1 is offline" in page
    assert db.session.scalar(select(Job)) is None


def test_viewers_see_no_run_now_and_cannot_post_it(app, login_as):
    host = make_host()
    schedule = _schedule(host, list(host.source_groups))
    viewer = login_as(Role.viewer)
    assert "Run now</button>" not in viewer.get(f"/hosts/{host.id}/schedules").get_data(
        as_text=True
    )
    assert _run_page(viewer, host, schedule).status_code == 403
    assert db.session.scalar(select(Job)) is None


def test_the_api_runs_a_schedule_202_with_its_jobs(app, api):
    host = make_host()
    schedule = _schedule(host, list(host.source_groups))
    operator = api(Role.operator)
    response = operator.post(f"/api/v1/hosts/{host.id}/schedules/{schedule.id}/run")
    assert response.status_code == 202
    (job,) = response.get_json()["jobs"]
    assert job["kind"] == "backup" and job["params"]["group"] == "default"
    assert job["status"] == "queued"
    assert (
        api(Role.viewer).post(f"/api/v1/hosts/{host.id}/schedules/{schedule.id}/run").status_code
        == 403
    )
    assert operator.post(f"/api/v1/hosts/{host.id}/schedules/999/run").status_code == 404
    empty = _schedule(host, [], name="empty")
    refused = operator.post(f"/api/v1/hosts/{host.id}/schedules/{empty.id}/run")
    assert refused.status_code == 409 and refused.get_json()["error"] == "schedule_empty"
    db.session.get(Host, host.id).last_seen_at = utcnow() - timedelta(hours=1)
    db.session.commit()
    offline = operator.post(f"/api/v1/hosts/{host.id}/schedules/{schedule.id}/run")
    assert offline.status_code == 409 and offline.get_json()["error"] == "host_offline"


# --- the stale-lock record ------------------------------------------------------------------


def test_lock_detail_keeps_restics_words_only():
    detail = repo_locks.lock_detail(LOCK_ERROR)
    assert detail.startswith("repository is already locked by PID 4242 on web-1 by root")
    assert "lock was created at 2026-12-03 22:10:05" in detail
    assert "stayed locked" not in detail and len(detail) <= repo_locks.MAX_DETAIL
    assert repo_locks.lock_detail("Fatal: wrong password or no key found") is None
    assert len(repo_locks.lock_detail("repository is already locked " + "x" * 900)) == 500


def _finish(app, token, host, kind, status, error=None):
    job = queue_job(app, host, kind)
    calls = AgentCalls(app, token, job)
    data = {"exit_code": 1 if status == "failed" else 0}
    if error:
        data["error"] = error
    calls.finish(status, **data)
    db.session.expire_all()
    return job


def test_lock_is_recorded_and_cleared_by_a_later_lock_taking_success(app, api):
    agent, host_id = enroll_agent(app)
    host = db.session.get(Host, host_id)
    failed = _finish(app, agent.token, host, "forget", "failed", LOCK_ERROR)
    host = db.session.get(Host, host_id)
    assert host.lock_job_id == failed.id and host.lock_reported_at is not None
    body = api(Role.viewer).get(f"/api/v1/hosts/{host_id}").get_json()
    assert body["lock"]["job_id"] == failed.id
    assert body["lock"]["detail"].startswith("repository is already locked by PID 4242")
    _finish(app, agent.token, host, "stats", "succeeded")  # takes no exclusive lock
    _finish(app, agent.token, host, "check", "failed", "Fatal: repository contains errors")
    assert db.session.get(Host, host_id).lock_job_id == failed.id
    _finish(app, agent.token, host, "backup", "succeeded")
    assert db.session.get(Host, host_id).lock_reported_at is None
    assert api(Role.viewer).get(f"/api/v1/hosts/{host_id}").get_json()["lock"] is None


# --- real restic: a held lock, the banner, unlock ----------------------------------------------

PASSWORD = "leftovers-Lock-pass-51a"


def _direct_restic(repo, *args, **options):
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(repo.parent),
        "RESTIC_REPOSITORY": str(repo),
        "RESTIC_PASSWORD": PASSWORD,
        "RESTIC_CACHE_DIR": str(repo.parent / "direct-cache"),
    }
    return subprocess.Popen(
        [RESTIC, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **options
    )


def _wait(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("timed out")


def _forward(app, token, job, result):
    """What the agent's uploader does with a finished job's events: post them to the server
    (with the time the agent spooled them: a backup's end follows its snapshot's time)."""
    events = []
    for number, spooled in enumerate(result.events):
        if spooled["type"] not in ("job.finished", "snapshots.report"):
            continue
        data = dict(spooled["data"])
        if spooled["type"] == "job.finished":
            data["final_seq"] = 0
        events.append(
            {
                "event_id": f"{job.id}-forwarded-{number}",
                "type": spooled["type"],
                "job_id": job.id,
                "attempt_id": job.attempt_id,
                "ts": spooled["ts"],
                "data": data,
            }
        )
    response = app.test_client().post(
        "/api/agent/v1/events",
        json={"events": events},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.get_json()["rejected"] == [], response.get_json()
    db.session.expire_all()


REAL_RESTIC = needs_restic()  # [] with restic; else a skip mark (a failure when required)


def _with_real_restic(test):
    return REAL_RESTIC(test) if REAL_RESTIC else test


@_with_real_restic
def test_real_restic_lock_banner_unlock_and_sizes(app, login_as, api, tmp_path):
    repo = tmp_path / "repo"
    run_restic(repo, PASSWORD, "init")
    credentials = {"url": str(repo), "username": "", "password": PASSWORD}
    runner = RunnerJobs(tmp_path, lambda: credentials, lock_retry_delays=(0.2, 0.2))
    agent, host_id = enroll_agent(app)
    agent.hello()
    host = db.session.get(Host, host_id)
    browser = login_as(Role.admin)

    # A real backup (restic 0.14: the snapshot has no summary): size from our job's stats.
    source = tmp_path / "data"
    source.mkdir()
    for number in range(5):
        (source / f"f{number}.bin").write_bytes(os.urandom(3000))
    backup = runner.run("backup", {"paths": [str(source)], "tags": ["default"]})
    assert backup.finished["status"] == "succeeded", backup.texts
    server_backup = queue_job(app, host, "backup")
    _forward(app, agent.token, server_backup, backup)
    (snapshot,) = db.session.scalars(select(Snapshot).where(Snapshot.host_id == host_id))
    assert snapshot.summary is None
    page = browser.get(f"/hosts/{host_id}").get_data(as_text=True)
    assert ">14.6 KiB</span>" in page and ">5</td>" in page
    assert f"from the stats of backup job {server_backup.id}" in page
    item = api(Role.viewer).get(f"/api/v1/hosts/{host_id}/snapshots").get_json()["items"][0]
    assert item["size_bytes"] == 15000 and item["file_count"] == 5

    # Another restic holds a live lock: a real check fails on it.
    holder = _direct_restic(
        repo, "backup", "--stdin", "--stdin-filename", "held.txt", stdin=subprocess.PIPE
    )
    try:
        holder.stdin.write(b"held\n")
        holder.stdin.flush()
        _wait(lambda: any((repo / "locks").iterdir()))
        check = runner.run("check")
        assert check.finished["status"] == "failed"
        server_check = queue_job(app, host, "check")
        _forward(app, agent.token, server_check, check)
    finally:
        holder.stdin.close()
        holder.wait(60)
        holder.stderr.close()
    host = db.session.get(Host, host_id)
    assert host.lock_job_id == server_check.id
    assert host.lock_detail.startswith(f"repository is already locked by PID {holder.pid} on ")
    assert PASSWORD not in host.lock_detail
    for path in (f"/hosts/{host_id}", f"/hosts/{host_id}/repo"):
        html = browser.get(path).get_data(as_text=True)
        assert "The repository is locked" in html
        assert f"repository is already locked by PID {holder.pid}" in html
        assert f'href="/jobs/{server_check.id}"' in html
        assert "older than 30 minutes" in html
        assert "Unlock (stale locks)</button>" in html and "Remove all locks</button>" in html
    operator_page = login_as(Role.operator).get(f"/hosts/{host_id}").get_data(as_text=True)
    assert "Unlock (stale locks)</button>" in operator_page
    assert "Remove all locks</button>" not in operator_page  # the banner offers it to admins
    lock = api(Role.viewer).get(f"/api/v1/hosts/{host_id}").get_json()["lock"]
    assert lock["job_id"] == server_check.id and "lock was created at" in lock["detail"]

    # The banner's Unlock starts a real unlock job; its success clears the record.
    token = form_token(browser, f"/hosts/{host_id}")
    response = browser.post(f"/hosts/{host_id}/jobs", data={"csrf_token": token, "kind": "unlock"})
    assert response.status_code == 302
    unlock_job = db.session.scalar(select(Job).where(Job.kind == "unlock"))
    assert unlock_job.params == {"remove_all": False}
    unlock = runner.run("unlock")
    assert unlock.finished["status"] == "succeeded", unlock.texts
    _forward(app, agent.token, unlock_job, unlock)
    assert db.session.get(Host, host_id).lock_reported_at is None
    assert "The repository is locked" not in browser.get(f"/hosts/{host_id}").get_data(as_text=True)
    assert not list((repo / "locks").iterdir())


# --- migration 0012 ---------------------------------------------------------------------------


def test_migration_0012_adds_and_drops_the_lock_columns(tmp_path):
    app = create_app(
        {
            "TESTING": True,
            "RM_DATA_DIR": tmp_path,
            "RM_SECRET_KEY_FILE": tmp_path / "secret.key",
            "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'm0012.db'}",
        }
    )
    with app.app_context():
        upgrade(revision="0011_teams")
        with db.engine.begin() as connection:
            connection.execute(
                sa.text(
                    "INSERT INTO hosts (id, hostname, repo_status, tags, created_at,"
                    " snapshot_count, schedule_version) VALUES (1, 'web-1', 'ready', '[]',"
                    " :at, 0, 0)"
                ),
                {"at": datetime(2026, 12, 1, tzinfo=timezone.utc)},
            )
        upgrade(revision="0012_host_lock")
        columns = {column["name"] for column in sa.inspect(db.engine).get_columns("hosts")}
        assert {"lock_reported_at", "lock_detail", "lock_job_id"} <= columns
        with db.engine.begin() as connection:
            row = connection.execute(sa.text("SELECT lock_detail FROM hosts")).one()
            assert row == (None,)
        downgrade(revision="0011_teams")
        columns = {column["name"] for column in sa.inspect(db.engine).get_columns("hosts")}
        assert not {"lock_reported_at", "lock_detail", "lock_job_id"} & columns
        assert db.engine.dispose() is None
