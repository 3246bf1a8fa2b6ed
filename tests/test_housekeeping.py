"""Housekeeping by the ticker's leader (app/services/housekeeping.py): job logs older than
RM_JOB_LOG_RETENTION_DAYS removed in small batches while the job row says so, newer logs
kept, 0 keeps them forever, agent answers and expired sign-ins swept, SQLite's optimize and
incremental vacuum, and only the leader doing any of it. SQLite by default, PostgreSQL with
RM_TEST_DATABASE_URL."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from app import ticker
from app.config import ConfigError, load_config
from app.extensions import db
from app.models import Job, JobLog, LoginFailure, RpcCall, RpcChunk, UserInvite, UserSession
from app.models.types import utcnow
from app.services import housekeeping
from tests import factories


def _job_with_log(host, lines: int, *, finished_days_ago=None, status="succeeded"):
    now = utcnow()
    finished = None if finished_days_ago is None else now - timedelta(days=finished_days_ago)
    job = factories.make_job(
        host,
        status=status,
        age=timedelta(days=(finished_days_ago or 0) + 1),
        finished_at=finished,
        log_committed_seq=lines,
    )
    db.session.add_all(
        JobLog(job_id=job.id, seq=seq, ts=now, stream="stdout", text=f"line {seq}")
        for seq in range(1, lines + 1)
    )
    db.session.commit()
    return job


def _lines(job) -> int:
    return db.session.scalar(
        select(func.count()).select_from(JobLog).where(JobLog.job_id == job.id)
    )


def test_old_logs_go_in_batches_newer_and_running_ones_stay(app):
    host = factories.make_host()
    old = _job_with_log(host, 12, finished_days_ago=100)
    older_silent = _job_with_log(host, 0, finished_days_ago=200)
    recent = _job_with_log(host, 5, finished_days_ago=10)
    running = _job_with_log(host, 4, status="running")  # never finished: never purged
    commits = []

    def commit():
        commits.append(_lines(old))  # the lines left when each transaction ends
        db.session.commit()

    report = housekeeping.purge_job_logs(
        utcnow(), retention_days=90, batch_rows=5, pause=0, commit=commit
    )
    assert (report.log_rows, report.batches) == (12, 3)
    # 5 lines per transaction, never all at once; the last (empty) one ends the look for more.
    assert commits == [7, 2, 0, 0]
    assert report.log_jobs == 2  # the old job and the old job that wrote nothing
    db.session.expire_all()
    assert _lines(old) == 0 and old.log_purged_at is not None
    assert old.log_committed_seq == 12  # the row keeps what it had
    assert older_silent.log_purged_at is not None
    assert _lines(recent) == 5 and recent.log_purged_at is None
    assert _lines(running) == 4 and running.log_purged_at is None
    # Nothing more to do: the next pass finds no candidates.
    again = housekeeping.purge_job_logs(
        utcnow(), retention_days=90, pause=0, commit=db.session.commit
    )
    assert (again.log_rows, again.batches, again.log_jobs) == (0, 0, 0)


def test_a_pass_is_bounded_and_the_next_one_continues(app):
    host = factories.make_host()
    old = _job_with_log(host, 12, finished_days_ago=100)
    first = housekeeping.purge_job_logs(
        utcnow(), retention_days=90, batch_rows=5, max_rows=5, pause=0, commit=db.session.commit
    )
    assert (first.log_rows, first.log_jobs) == (5, 0)
    db.session.expire_all()
    assert _lines(old) == 7 and old.log_purged_at is None  # not yet: lines remain
    second = housekeeping.purge_job_logs(
        utcnow(), retention_days=90, batch_rows=5, pause=0, commit=db.session.commit
    )
    assert (second.log_rows, second.log_jobs) == (7, 1)
    db.session.expire_all()
    assert _lines(old) == 0 and old.log_purged_at is not None


def test_the_job_page_log_download_and_api_say_the_log_was_removed(app, login_as):
    app.config["RM_JOB_LOG_RETENTION_DAYS"] = 30
    host = factories.make_host()
    old = _job_with_log(host, 3, finished_days_ago=40)
    recent = _job_with_log(host, 2, finished_days_ago=5)
    ticker.housekeep(app, utcnow())
    browser = login_as()
    page = browser.get(f"/jobs/{old.id}").get_data(as_text=True)
    assert "The log (3 lines) was removed after 30 days (RM_JOB_LOG_RETENTION_DAYS)" in page
    assert "This job wrote no log lines" not in page
    assert "No lines are kept" in page
    text = browser.get(f"/api/v1/jobs/{old.id}/log.txt").get_data(as_text=True)
    assert "# The log (3 lines) was removed after 30 days (RM_JOB_LOG_RETENTION_DAYS)" in text
    assert "line 1" not in text
    api = browser.get(f"/api/v1/jobs/{old.id}").get_json()
    assert api["log_purged_at"] is not None and api["log_lines"] == 3
    kept = browser.get(f"/jobs/{recent.id}").get_data(as_text=True)
    assert "RM_JOB_LOG_RETENTION_DAYS" not in kept and "line 2" in kept
    assert browser.get(f"/api/v1/jobs/{recent.id}").get_json()["log_purged_at"] is None
    listed = browser.get(f"/api/v1/jobs?host_id={host.id}").get_json()
    by_id = {job["id"]: job for job in listed["items"]}
    assert by_id[old.id]["log_purged_at"] and by_id[recent.id]["log_purged_at"] is None


def test_zero_keeps_logs_forever(app_factory):
    app = app_factory(RM_JOB_LOG_RETENTION_DAYS=0)
    with app.app_context():
        host = factories.make_host()
        ancient = _job_with_log(host, 6, finished_days_ago=3650)
        report = ticker.housekeep(app, utcnow())
        assert report.log_rows == 0
        db.session.expire_all()
        assert _lines(ancient) == 6 and ancient.log_purged_at is None


@pytest.mark.parametrize(
    ("name", "default", "wordy"),
    [("RM_JOB_LOG_RETENTION_DAYS", 90, "ninety"), ("RM_ALERT_RETENTION_DAYS", 365, "a year")],
)
def test_the_retention_settings_are_validated(name, default, wordy):
    assert load_config({})[name] == default
    assert load_config({name: "0"})[name] == 0  # keep forever
    with pytest.raises(ConfigError, match=f"{name} must be at least 0"):
        load_config({name: "-1"})
    with pytest.raises(ConfigError, match=f"{name} must be a whole number"):
        load_config({name: wordy})


def test_old_agent_answers_and_their_bytes_are_purged(app):
    host = factories.make_host()
    now = utcnow()
    for name, age in (("old", timedelta(hours=2)), ("fresh", timedelta(minutes=5))):
        db.session.add(
            RpcCall(
                id=name,
                host_id=host.id,
                method="dump",
                cache_key=name,
                params={},
                status="done",
                created_at=now - age,
            )
        )
        db.session.flush()
        db.session.add_all(
            RpcChunk(rpc_id=name, byte_offset=offset, data=b"x" * 10) for offset in (0, 10)
        )
    db.session.commit()
    ticker.tick(app.extensions["secretbox"], now)
    assert db.session.scalars(select(RpcCall.id)).all() == ["fresh"]
    assert set(db.session.scalars(select(RpcChunk.rpc_id))) == {"fresh"}


def test_expired_sign_ins_are_swept(app, make_user):
    user = make_user()
    now = utcnow()
    db.session.add_all(
        [
            UserSession(token_hash="a" * 64, user_id=user.id, expires_at=now - timedelta(days=3)),
            UserSession(
                token_hash="b" * 64,
                user_id=user.id,
                expires_at=now + timedelta(hours=5),
                revoked_at=now - timedelta(days=2),
            ),
            UserSession(token_hash="c" * 64, user_id=user.id, expires_at=now + timedelta(hours=5)),
            UserInvite(user_id=user.id, token_hash="d" * 64, expires_at=now - timedelta(days=2)),
            UserInvite(user_id=user.id, token_hash="e" * 64, expires_at=now + timedelta(days=2)),
            LoginFailure(scope="address", key="1.2.3.4", attempted_at=now - timedelta(hours=2)),
            LoginFailure(scope="address", key="1.2.3.4", attempted_at=now - timedelta(minutes=1)),
        ]
    )
    db.session.commit()
    report = ticker.housekeep(app, now)
    assert (report.sessions, report.invites, report.login_failures) == (2, 1, 1)
    assert db.session.scalars(select(UserSession.token_hash)).all() == ["c" * 64]
    assert db.session.scalars(select(UserInvite.token_hash)).all() == ["e" * 64]
    assert db.session.scalar(select(func.count()).select_from(LoginFailure)) == 1


def test_sqlite_optimize_and_incremental_vacuum_once_a_day(app):
    if db.engine.dialect.name != "sqlite":
        pytest.skip("SQLite only; PostgreSQL's autovacuum does this work")
    host = factories.make_host()
    job = factories.make_job(
        host, finished_at=utcnow() - timedelta(days=100), log_committed_seq=2000
    )
    db.session.add_all(
        JobLog(job_id=job.id, seq=seq, ts=utcnow(), stream="stdout", text="x" * 2000)
        for seq in range(1, 2001)
    )
    db.session.commit()
    path = app.config["SQLALCHEMY_DATABASE_URI"].removeprefix("sqlite:///")
    state = {}
    first = housekeeping.run(app.config, utcnow(), state, pause=0, commit=db.session.commit)
    assert first.log_rows == 2000
    assert first.sqlite["optimize"] is True
    assert first.sqlite["auto_vacuum"] == "incremental"  # new databases are made so
    assert first.sqlite["pages_freed"] > 500
    with db.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA freelist_count").scalar() == 0
    assert path
    later = housekeeping.run(
        app.config, utcnow() + timedelta(hours=2), state, pause=0, commit=db.session.commit
    )
    assert later.sqlite == {}  # once a day
    next_day = housekeeping.run(
        app.config, utcnow() + timedelta(days=1, hours=1), state, pause=0, commit=db.session.commit
    )
    assert next_day.sqlite["optimize"] is True


def test_only_the_leader_keeps_house(app_factory):
    app = app_factory(RM_JOB_LOG_RETENTION_DAYS=90)
    with app.app_context():
        host = factories.make_host()
        old = _job_with_log(host, 8, finished_days_ago=120)
        job_id = old.id
    other = ticker.leadership_for(app)  # another process's claim on the leader lock
    assert other.acquire()
    passes = []

    def recorded(app_, now):
        passes.append(ticker.housekeep(app_, now))

    stop = threading.Event()
    loop = threading.Thread(
        target=ticker.run,
        args=(app, stop),
        kwargs={
            "interval": 0.05,
            "tick_function": lambda *args, **kwargs: [],
            "deliver_function": lambda *args, **kwargs: 0,
            "housekeeping_function": recorded,
        },
        daemon=True,
    )
    loop.start()
    try:
        time.sleep(0.6)
        assert passes == []  # not leading: no housekeeping
        with app.app_context():
            assert db.session.scalar(select(func.count()).where(JobLog.job_id == job_id)) == 8
        other.release()
        deadline = time.monotonic() + 10
        while not passes and time.monotonic() < deadline:
            time.sleep(0.05)
        assert passes and passes[0].log_rows == 8
        with app.app_context():
            assert db.session.get(Job, job_id).log_purged_at is not None
    finally:
        stop.set()
        loop.join(10)
        other.release()
