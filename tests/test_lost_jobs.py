"""No stuck jobs: a job whose host stays silent ends "lost" (the ticker), a late report of the
same attempt still records the real outcome, and a restarted agent's forgotten run ends too."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace

import pytest
from sqlalchemy import func, select

from app import ticker
from app.extensions import db
from app.formatting import job_summary
from app.models import AuditLog, Command, Host, Job, JobLog, Role
from app.models.types import utcnow
from app.services import jobs
from app.services.errors import Conflict
from tests.factories import (
    TS,
    Agent,
    AgentCalls,
    enroll_agent,
    make_enrolled_host,
    make_host,
    make_job,
    queue_job,
)

LOST_AFTER = 900
OFFLINE_AFTER = 90


def _mark_lost(now=None, **options):
    options.setdefault("lost_after_seconds", LOST_AFTER)
    options.setdefault("offline_after_seconds", OFFLINE_AFTER)
    lost = jobs.mark_lost(now or utcnow(), **options)
    db.session.commit()
    return lost


def _silence(host: Host, *jobs_: Job, seconds: float = LOST_AFTER + 60) -> None:
    """The host's agent was last heard ``seconds`` ago; its jobs are older than that."""
    then = utcnow() - timedelta(seconds=seconds)
    host.last_seen_at = then
    for job in jobs_:
        job.created_at = then - timedelta(seconds=1)
    db.session.commit()


def _log_texts(job_id: int) -> list[str]:
    return list(
        db.session.scalars(select(JobLog.text).where(JobLog.job_id == job_id).order_by(JobLog.seq))
    )


# --- the rule ------------------------------------------------------------------------------


def test_jobs_of_a_long_silent_host_end_lost_with_the_reason(app):
    host = make_host("web-1", seen_seconds_ago=LOST_AFTER + 120)
    running = make_job(host, status="running", age=timedelta(hours=1), started_at=utcnow())
    queued = make_job(host, kind="check", status="queued", age=timedelta(hours=1))
    done = make_job(host, status="succeeded", age=timedelta(hours=1), finished_at=utcnow())

    lost = _mark_lost()

    assert sorted(job.id for job in lost) == [running.id, queued.id]
    db.session.expire_all()
    running, queued = db.session.get(Job, running.id), db.session.get(Job, queued.id)
    assert (running.status, queued.status) == ("lost", "lost")
    assert running.finished_at is not None and queued.finished_at is not None
    since = host.last_seen_at.strftime("%Y-%m-%d %H:%M UTC")
    assert running.error == (
        f"The agent on web-1 has not been heard from for 17 minutes (since {since}): the job "
        "was marked lost. If the agent comes back and reports it, its result is recorded."
    )
    assert queued.error.startswith("The agent on web-1 has not been heard from for 17 minutes")
    assert "never started" in queued.error
    assert db.session.get(Job, done.id).status == "succeeded"
    # The last-backup projection follows, like any other end.
    host = db.session.get(Host, host.id)
    assert (host.last_backup_job_id, host.last_backup_status) == (running.id, "lost")
    # Audited once per job, by the server itself.
    rows = db.session.scalars(select(AuditLog).where(AuditLog.action == "job.lost")).all()
    assert sorted(int(row.target_id) for row in rows) == [running.id, queued.id]
    assert {(row.actor_type, row.actor_label) for row in rows} == {("system", "lost-job timeout")}
    # Idempotent: the next tick finds nothing.
    assert _mark_lost() == []
    assert (
        db.session.scalar(
            select(func.count()).select_from(AuditLog).where(AuditLog.action == "job.lost")
        )
        == 2
    )


def test_online_hosts_recent_jobs_and_short_silences_are_left_alone(app):
    online = make_host("web-1", seen_seconds_ago=5)
    make_job(online, status="running", age=timedelta(hours=3))
    make_job(online, status="queued", age=timedelta(hours=3))  # waits its turn on the agent
    quiet = make_host("web-2", seen_seconds_ago=LOST_AFTER - 60)  # offline, not long enough
    make_job(quiet, status="running", age=timedelta(hours=3))
    silent = make_host("web-3", seen_seconds_ago=LOST_AFTER + 60)
    make_job(silent, status="queued", age=timedelta(seconds=30))  # queued just now

    assert _mark_lost() == []


def test_the_offline_time_is_the_least_silence_that_counts(app):
    host = make_host("web-1", seen_seconds_ago=75)
    make_job(host, status="running", age=timedelta(hours=1))
    # RM_LOST_JOB_AFTER_SECONDS at its minimum (60) is shorter than the offline time (90):
    # the host still counts as online, so nothing is lost yet.
    assert _mark_lost(lost_after_seconds=60) == []
    assert len(_mark_lost(lost_after_seconds=60, offline_after_seconds=70)) == 1


def test_a_server_that_was_down_does_not_blame_the_agents(app):
    host = make_host("web-1", seen_seconds_ago=3 * 3600)  # the server was down 3 hours
    make_job(host, status="running", age=timedelta(hours=4))
    now = utcnow()
    assert _mark_lost(now, listening_since=now - timedelta(seconds=30)) == []
    later = now + timedelta(seconds=LOST_AFTER)
    assert len(_mark_lost(later, listening_since=now - timedelta(seconds=30))) == 1


def test_a_host_never_heard_from(app):
    host = make_host("web-1", seen_seconds_ago=None)
    job = make_job(host, status="queued", age=timedelta(hours=1))
    _mark_lost()
    db.session.expire_all()
    job = db.session.get(Job, job.id)
    assert job.status == "lost"
    assert job.error.startswith("The agent on web-1 has never been heard from, so the job")


def test_the_ticker_marks_lost_and_keeps_ticking(app_factory):
    app = app_factory(RM_LOST_JOB_AFTER_SECONDS=60)
    with app.app_context():
        host, _ = make_enrolled_host()
        job = queue_job(app, host, kind="backup")
        _silence(host, job, seconds=120)
        ticker.tick(
            app.extensions["secretbox"],
            utcnow(),
            offline_after_seconds=app.config["RM_OFFLINE_AFTER_SECONDS"],
            lost_after_seconds=app.config["RM_LOST_JOB_AFTER_SECONDS"],
        )
        db.session.expire_all()
        assert db.session.get(Job, job.id).status == "lost"


# --- a queued job's command ----------------------------------------------------------------


def test_a_lost_queued_job_is_not_sent_to_the_agent_when_it_returns(protocol_app):
    agent, host_id = enroll_agent(protocol_app)
    agent.hello()
    agent.poll()  # enrollment's config.update out of the way
    host = db.session.get(Host, host_id)
    job = queue_job(protocol_app, host, kind="backup")
    _silence(host, job)
    _mark_lost()
    command = db.session.scalar(select(Command).where(Command.job_id == job.id))
    assert (command.state, command.result) == (
        "undeliverable",
        "withdrawn: the job was marked lost",
    )
    answer = agent.poll(wait=0)
    commands = answer.get_json()["commands"] if answer.status_code == 200 else []
    assert [c for c in commands if c["job_id"] == job.id] == []


# --- late reports --------------------------------------------------------------------------


def test_an_agent_back_from_an_outage_revives_its_job_and_reports_it_once(protocol_app):
    agent, host_id = enroll_agent(protocol_app)
    agent.hello()
    host = db.session.get(Host, host_id)
    job = queue_job(protocol_app, host, kind="backup")
    calls = AgentCalls(protocol_app, agent.token, job)
    calls.event("job.started")
    calls.logs(["open repository", "scan /etc"])
    _silence(db.session.get(Host, host_id), db.session.get(Job, job.id))
    assert [lost.id for lost in _mark_lost()] == [job.id]

    # The network comes back: the agent still runs the job. It is not killed, it runs on.
    running = [{"job_id": job.id, "attempt_id": job.attempt_id, "state": "running"}]
    answer = agent.poll(running=running, wait=0)
    reconcile = answer.get_json()["reconcile"] if answer.status_code == 200 else []
    assert reconcile == []
    db.session.expire_all()
    revived = db.session.get(Job, job.id)
    assert (revived.status, revived.finished_at, revived.error) == ("running", None, None)

    # Its log goes on where it was; a blind resend of the whole log stores nothing twice.
    calls.next_seq = 1
    assert calls.logs(["open repository", "scan /etc", "saved"])["job_state"] == "running"
    calls.event("job.progress", percent=90.0)
    calls.finish(stats={"snapshot_id": "ab" * 32, "data_added": 10})
    db.session.expire_all()
    job = db.session.get(Job, job.id)
    assert (job.status, job.error, job.log_committed_seq) == ("succeeded", None, 3)
    assert _log_texts(job.id) == ["open repository", "scan /etc", "saved"]
    host = db.session.get(Host, host_id)
    assert (host.last_backup_status, host.last_successful_backup_job_id) == ("succeeded", job.id)


def test_a_late_finish_replaces_lost_without_the_agent_polling(protocol_app):
    agent, host_id = enroll_agent(protocol_app)
    agent.hello()
    job = queue_job(protocol_app, db.session.get(Host, host_id), kind="check")
    calls = AgentCalls(protocol_app, agent.token, job)
    calls.event("job.started")
    calls.logs(["check started"])
    _silence(db.session.get(Host, host_id), db.session.get(Job, job.id))
    _mark_lost()
    # Log records of a lost job are still stored, in order, once.
    answer = calls.logs(["no errors were found"])
    assert answer == {
        "committed_seq": 2,
        "job_state": "lost",
        "truncated": False,
        "watched": False,
    }
    calls.finish(status="failed", exit_code=1)  # no error text from the agent
    db.session.expire_all()
    job = db.session.get(Job, job.id)
    assert job.status == "failed" and job.exit_code == 1
    assert job.error is None  # the guess's reason went with the guess
    assert _log_texts(job.id) == ["check started", "no errors were found"]
    # A second finish (another event id) does not change the real result.
    calls.finish(status="succeeded")
    db.session.expire_all()
    assert db.session.get(Job, job.id).status == "failed"


def test_a_stale_attempt_cannot_touch_a_lost_job(protocol_app):
    agent, host_id = enroll_agent(protocol_app)
    agent.hello()
    job = queue_job(protocol_app, db.session.get(Host, host_id))
    _silence(db.session.get(Host, host_id), db.session.get(Job, job.id))
    _mark_lost()
    event = {
        "event_id": "stale-1",
        "type": "job.finished",
        "job_id": job.id,
        "attempt_id": "f" * 32,
        "ts": TS,
        "data": {"status": "succeeded", "exit_code": 0},
    }
    answer = agent.post("/events", {"events": [event]}).get_json()
    assert answer["rejected"][0]["error"] == "stale_attempt"
    db.session.expire_all()
    assert db.session.get(Job, job.id).status == "lost"


def test_a_lost_job_cannot_be_cancelled(app):
    host = make_host("web-1", seen_seconds_ago=LOST_AFTER + 120)
    job = make_job(host, status="running", age=timedelta(hours=1))
    _mark_lost()
    with pytest.raises(Conflict, match=r"already ended \(lost\)"):
        jobs.request_cancel(
            app.extensions["secretbox"], db.session.get(Job, job.id), host, now=utcnow()
        )


# --- runs the agent registered -------------------------------------------------------------


def _register(agent: Agent, run_id: str) -> dict:
    body = {
        "run_id": run_id,
        "schedule_id": None,
        "kind": "backup",
        "params": {"group": "default", "paths": ["/etc"], "excludes": [], "tags": ["default"]},
        "fired_at": TS,
    }
    response = agent.post("/runs", body)
    assert response.status_code in (200, 201), response.get_json()
    return response.get_json()


def test_a_registered_run_that_never_starts_on_a_silent_host_ends_lost(protocol_app):
    agent, host_id = enroll_agent(protocol_app)
    agent.hello()
    ids = _register(agent, "r" * 32)
    job = db.session.get(Job, ids["job_id"])
    _silence(db.session.get(Host, host_id), job)
    _mark_lost()
    db.session.expire_all()
    job = db.session.get(Job, ids["job_id"])
    assert job.status == "lost" and "never started" in job.error
    # The agent ran it after all (it was cut off, not dead): its report is the truth.
    calls = AgentCalls(protocol_app, agent.token, job)
    calls.event("job.started")
    db.session.expire_all()
    assert db.session.get(Job, job.id).status == "running"
    calls.finish(status="warning", exit_code=3)
    db.session.expire_all()
    assert db.session.get(Job, job.id).status == "warning"


def test_a_run_a_restarted_agent_no_longer_lists_ends_lost(protocol_app):
    agent, _ = enroll_agent(protocol_app)
    agent.hello()
    ids = _register(agent, "s" * 32)
    # The same boot polling without it (registration and start race the poll): not lost.
    agent.poll(running=[], wait=0)
    db.session.expire_all()
    assert db.session.get(Job, ids["job_id"]).status == "queued"
    # A new agent process that does not list it: it will never start it.
    restarted = Agent(protocol_app, agent.token, boot_id="boot-2")
    restarted.hello(running=[])
    db.session.expire_all()
    job = db.session.get(Job, ids["job_id"])
    assert job.status == "lost" and "restarted before this run started" in job.error
    # Unless it had the run still queued: registering it again gets the same job, which runs.
    assert _register(restarted, "s" * 32) == ids
    AgentCalls(protocol_app, restarted.token, job).event("job.started")
    db.session.expire_all()
    assert db.session.get(Job, job.id).status == "running"


# --- pages ---------------------------------------------------------------------------------


def test_a_lost_job_reads_clearly_on_its_page_and_in_the_list(app, login_as):
    viewer = login_as(Role.operator)
    host, _ = make_enrolled_host()
    job = queue_job(app, host, kind="backup")
    _silence(db.session.get(Host, host.id), db.session.get(Job, job.id))
    _mark_lost()
    page = viewer.get(f"/jobs/{job.id}").get_data(as_text=True)
    assert 'id="job-status">lost</span>' in page
    assert "What went wrong" in page and "has not been heard from for 16 minutes" in page
    assert "Cancel job" not in page
    listing = viewer.get("/jobs/").get_data(as_text=True)
    assert "jobsummary--error" in listing and "has not been heard from" in listing


@pytest.mark.parametrize(
    ("error", "summary"),
    [
        (
            "The agent on web-1 has not been heard from …",
            "The agent on web-1 has not been heard from …",
        ),
        (None, "outcome unknown: the server lost touch with the agent"),
    ],
)
def test_the_summary_of_a_lost_job(error, summary):
    job = SimpleNamespace(
        status="lost", kind="backup", stats={}, error=error, params={}, progress={}
    )
    assert job_summary(job) == summary
