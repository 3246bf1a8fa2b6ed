"""The agent against the real Flask server over real HTTP (werkzeug, threaded): enroll with
the CLI, run the loop in-process, and let a probe job travel the whole way."""

import os
import shutil
import subprocess
import threading

import pytest
from fake_agent_server import all_files, wait_for

from agent.cli import main
from agent.service import Agent

REPO_PASSWORD = "real-server-Repo-pass-31337"
pytestmark = [
    pytest.mark.skipif(
        shutil.which("restic") is None and os.environ.get("RM_REQUIRE_RESTIC") != "1",
        reason="restic is not installed",
    ),
    pytest.mark.server,
]


@pytest.fixture
def served_app(app_factory):
    from werkzeug.serving import make_server

    app = app_factory(RM_POLL_WAIT_SECONDS=1)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    app.test_url = f"http://127.0.0.1:{server.server_port}"
    yield app
    server.shutdown()
    thread.join(10)


def init_repository(path, cache):
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "RESTIC_REPOSITORY": str(path),
        "RESTIC_PASSWORD": REPO_PASSWORD,
        "RESTIC_CACHE_DIR": str(cache),
        "HOME": str(cache),
    }
    subprocess.run(
        ["restic", "init"], env=env, stdin=subprocess.DEVNULL, check=True, capture_output=True
    )


def test_enroll_run_and_probe_against_the_real_server(served_app, tmp_path, capsys):
    from app.extensions import db
    from app.models import Host, Job, JobLog
    from app.models.types import utcnow
    from app.services import enrollment, jobs
    from app.services.audit import Actor

    repo = tmp_path / "repo"
    init_repository(repo, tmp_path / "cache")
    with served_app.app_context():
        _, plain = enrollment.mint_token(
            served_app.extensions["secretbox"],
            created_by=None,
            hostname="web-1",
            repo_url=str(repo),
            repo_username="",
            repo_password=REPO_PASSWORD,
            paths=["/etc"],
            now=utcnow(),
        )
        db.session.commit()

    home = tmp_path / "home"
    assert (
        main(["--home", str(home), "enroll", "--server", served_app.test_url, "--token", plain])
        == 0
    )
    assert "enrolled as host" in capsys.readouterr().out
    agent = Agent(home, start_delay=0)
    stop = threading.Event()
    thread = threading.Thread(target=agent.run_forever, args=(stop,), daemon=True)
    thread.start()
    try:
        with served_app.app_context():
            host = db.session.get(Host, agent.state.host_id)
            job_id = jobs.create_job(
                served_app.extensions["secretbox"],
                host,
                "probe",
                params={},
                actor=Actor.system(),
                now=utcnow(),
            ).id
            db.session.commit()

        def finished_job():
            with served_app.app_context():
                job = db.session.get(Job, job_id)
                return job if job.is_terminal else None

        job = wait_for(finished_job, timeout=60)
        assert (job.status, job.exit_code, job.error) == ("succeeded", 0, None)
        wait_for(lambda: not (home / "spool" / "jobs" / str(job_id)).exists(), timeout=15)
        with served_app.app_context():
            assert db.session.get(Host, agent.state.host_id).repo_status == "ready"
            assert db.session.query(JobLog).filter_by(job_id=job_id).count() >= 5
    finally:
        stop.set()
        thread.join(15)
    for path in all_files(home):
        assert REPO_PASSWORD.encode() not in path.read_bytes(), path
