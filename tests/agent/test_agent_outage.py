"""Contract under failure: the real agent and the real server over HTTP, with the server
taken away while a job is writing output, and the agent restarted while the server is
away. Every log line and event arrives exactly once, in order."""

import threading

import pytest
from fake_agent_server import wait_for
from sqlalchemy import func, select

from agent.cli import main
from agent.service import Agent
from tests.conftest import LiveServer

pytestmark = pytest.mark.server  # drives the agent against the real server

LINES = 250


@pytest.fixture
def server(app_factory):
    app = app_factory(RM_POLL_WAIT_SECONDS=1, RM_LOG_FLUSH_SECONDS=1, RM_OFFLINE_AFTER_SECONDS=5)
    live = LiveServer(app)
    live.start()
    yield live
    live.stop()


def _enroll(server, tmp_path, repo_url):
    from app.extensions import db
    from app.models.types import utcnow
    from app.services import enrollment

    app = server.app
    with app.app_context():
        _, plain = enrollment.mint_token(
            app.extensions["secretbox"],
            created_by=None,
            hostname="outage-1",
            repo_url=repo_url,
            repo_username=None,
            repo_password="outage-pass-1234",
            paths=["/etc"],
            now=utcnow(),
        )
        db.session.commit()
    home = tmp_path / "home"
    assert main(["--home", str(home), "enroll", "--server", server.url, "--token", plain]) == 0
    return home


def _start(home, fake_restic):
    agent = Agent(home, restic_binary=str(fake_restic), start_delay=0)
    stop = threading.Event()
    thread = threading.Thread(target=agent.run_forever, args=(stop,), daemon=True)
    thread.start()
    return agent, stop, thread


def _queue_job(app, host_id):
    from app.extensions import db
    from app.models import Host
    from app.models.types import utcnow
    from app.services import jobs
    from app.services.audit import Actor

    with app.app_context():
        job = jobs.create_job(
            app.extensions["secretbox"],
            db.session.get(Host, host_id),
            "probe",
            params={},
            actor=Actor.system(),
            now=utcnow(),
        )
        db.session.commit()
        app.extensions["bus"].publish(f"host:{host_id}")
        return job.id


def _job(app, job_id):
    from app.extensions import db
    from app.models import Job

    with app.app_context():
        job = db.session.get(Job, job_id)
        db.session.expunge(job)
        return job


def _log(app, job_id):
    from app.extensions import db
    from app.models import JobLog

    with app.app_context():
        rows = db.session.execute(
            select(JobLog.seq, JobLog.text).where(JobLog.job_id == job_id).order_by(JobLog.seq)
        ).all()
        return [tuple(row) for row in rows]


def _event_count(app, job_id):
    from app.extensions import db
    from app.models import AgentEvent

    with app.app_context():
        return db.session.scalar(
            select(func.count()).select_from(AgentEvent).where(AgentEvent.job_id == job_id)
        )


def _assert_exactly_once_in_order(rows):
    seqs = [seq for seq, _ in rows]
    assert seqs == list(range(1, len(seqs) + 1))  # no gap, no duplicate
    ticks = [text for _, text in rows if text.startswith("tick ")]
    assert ticks == [f"tick {n}" for n in range(1, LINES + 1)]


def test_server_outage_during_a_job_loses_and_doubles_nothing(server, tmp_path, fake_restic):
    home = _enroll(server, tmp_path, f"fake:ticker:{LINES}")  # ~5 s of output
    agent, stop, thread = _start(home, fake_restic)
    try:
        job_id = _queue_job(server.app, agent.state.host_id)
        wait_for(lambda: len(_log(server.app, job_id)) >= 20, timeout=30)
        server.stop()  # the job keeps writing; the agent spools
        wait_for(
            lambda: agent.spool.job(job_id) is None or agent.spool.job(job_id).unsent_count() > 50,
            timeout=30,
        )
        server.start()
        job = wait_for(lambda: (j := _job(server.app, job_id)).finished_at and j, timeout=60)
        assert job.status in ("succeeded", "failed"), job.error
        _assert_exactly_once_in_order(_log(server.app, job_id))
        assert job.log_committed_seq == len(_log(server.app, job_id))
        assert _event_count(server.app, job_id) >= 2  # started + finished, each once
    finally:
        stop.set()
        thread.join(15)


def test_agent_restart_while_the_server_is_away_keeps_the_spool(server, tmp_path, fake_restic):
    home = _enroll(server, tmp_path, f"fake:chatty:{LINES}")
    agent, stop, thread = _start(home, fake_restic)
    job_id = _queue_job(server.app, agent.state.host_id)
    wait_for(lambda: _job(server.app, job_id).status != "queued", timeout=30)
    server.stop()
    # The job finishes while the server is away; its lines and result wait in the spool.
    wait_for(lambda: agent.runner.wait_idle(0.1), timeout=30)
    stop.set()
    thread.join(15)
    assert not thread.is_alive()
    # A new agent process on the same home (same spool), then the server comes back.
    agent, stop, thread = _start(home, fake_restic)
    try:
        server.start()
        job = wait_for(lambda: (j := _job(server.app, job_id)).finished_at and j, timeout=60)
        assert job.status == "succeeded", job.error
        rows = _log(server.app, job_id)
        assert [seq for seq, _ in rows] == list(range(1, len(rows) + 1))
        lines = [text for _, text in rows if text.startswith("line ")]
        assert lines == [f"line {n}" for n in range(1, LINES + 1)]
        wait_for(lambda: not (home / "spool" / "jobs" / str(job_id)).exists(), timeout=15)
    finally:
        stop.set()
        thread.join(15)
