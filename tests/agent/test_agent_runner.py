"""The job runner with a fake restic: events, statuses, cancellation, recovery."""

import threading

import pytest
from fake_agent_server import wait_for

from agent.runner import Runner
from agent.spool import Spool


@pytest.fixture
def spool(tmp_path):
    return Spool(tmp_path / "spool", max_bytes=10**7)


def make_runner(spool, fake_restic, credentials, **kwargs):
    return Runner(spool, lambda: credentials, restic_binary=str(fake_restic), **kwargs)


def run_job(runner, job_id=1, kind="probe", attempt="att-1"):
    runner.prepare(job_id, attempt)
    assert runner.start(job_id, attempt, kind, {})
    assert runner.wait_idle(timeout=20)
    return [(event["type"], event["data"]) for event in runner.spool.pending_events()]


def test_probe_of_a_ready_repository(spool, fake_restic):
    runner = make_runner(spool, fake_restic, {"url": "fake:ready", "password": "Pw-123456"})
    events = run_job(runner)
    assert [kind for kind, _ in events] == ["job.started", "repo.status", "job.finished"]
    assert events[1][1] == {"status": "ready", "reason": None}
    finished = events[2][1]
    assert finished["status"] == "succeeded" and finished["exit_code"] == 0
    assert finished["lines_dropped"] == 0 and finished["error"] is None
    job = spool.job(1)
    assert job.finished and finished["final_seq"] == job.next_seq - 1 == 6
    _first_seq, records = job.pending_batch()
    texts = [record["text"] for record in records]
    assert texts[0] == "$ " + " ".join((str(fake_restic), "--no-lock", "cat", "config"))
    assert "debug: using password ******" in texts
    assert {record["stream"] for record in records} == {"agent", "stdout", "stderr"}


def test_probe_of_a_missing_repository_succeeds_with_missing(spool, fake_restic):
    runner = make_runner(spool, fake_restic, {"url": "fake:missing", "password": "x"})
    events = run_job(runner)
    assert events[1][1]["status"] == "missing"
    assert "unable to open config file" in events[1][1]["reason"]
    assert events[2][1]["status"] == "succeeded"


def test_probe_with_a_wrong_password_fails(spool, fake_restic):
    runner = make_runner(spool, fake_restic, {"url": "fake:wrongpw", "password": "x"})
    events = run_job(runner)
    assert events[1][1] == {
        "status": "error",
        "reason": "wrong repository password (or no matching key)",
    }
    assert events[2][1]["status"] == "failed" and events[2][1]["exit_code"] == 1


def test_probe_without_credentials_fails_clearly(spool, fake_restic):
    events = run_job(make_runner(spool, fake_restic, None))
    assert events[1][1]["status"] == "error"
    assert events[2][1]["error"] == "this host has no repository credentials yet"
    assert fake_restic.calls() == []


def test_unknown_kind_fails_with_a_clear_message(spool, fake_restic):
    runner = make_runner(spool, fake_restic, {"url": "fake:ready", "password": "x"})
    events = run_job(runner, kind="teleport")
    assert [kind for kind, _ in events] == ["job.started", "job.finished"]
    assert events[1][1]["status"] == "failed"
    assert events[1][1]["error"] == "this agent version cannot run teleport jobs"


def test_cancel_stops_restic_and_reports_cancelled(spool, fake_restic):
    ended = threading.Event()
    runner = make_runner(
        spool, fake_restic, {"url": "fake:slow", "password": "x"}, on_job_end=lambda _: ended.set()
    )
    runner.prepare(4, "a")
    runner.start(4, "a", "probe", {})
    assert runner.running() == [{"job_id": 4, "attempt_id": "a", "state": "running"}]
    assert not runner.start(4, "a", "probe", {})  # already running
    wait_for(lambda: spool.job(4).next_seq > 2)  # restic printed "working"
    assert not runner.cancel(4, attempt_id="other-attempt")
    assert runner.cancel(4, "a")
    assert ended.wait(15)
    finished = spool.pending_events()[-1]
    assert finished["type"] == "job.finished"
    assert finished["data"]["status"] == "cancelled"
    assert finished["data"]["exit_code"] == 130
    assert runner.running() == [] and not runner.cancel(4)


def test_jobs_interrupted_by_an_agent_restart_are_reported_failed(tmp_path, fake_restic):
    spool = Spool(tmp_path / "spool", max_bytes=10**7)
    job = spool.open_job(8, "a")
    job.append("stdout", "half-way")
    restarted = Spool(tmp_path / "spool", max_bytes=10**7)
    runner = make_runner(restarted, fake_restic, None)
    assert runner.recover_interrupted() == [8]
    (event,) = restarted.pending_events()
    assert event["type"] == "job.finished" and event["data"]["status"] == "failed"
    assert event["data"]["final_seq"] == 2
    assert "agent stopped" in event["data"]["error"]
    assert runner.recover_interrupted() == []


def test_the_caller_learns_how_the_job_ended(spool, fake_restic):
    """on_done gets the final status (a failed scheduled run is retried from there)."""
    statuses = []
    runner = make_runner(spool, fake_restic, {"url": "fake:wrongpw", "password": "Pw-123456"})
    runner.prepare(5, "att-5")
    assert runner.start(5, "att-5", "probe", {}, on_done=statuses.append)
    assert runner.wait_idle(timeout=20)
    wait_for(lambda: statuses)
    assert statuses == ["failed"]
