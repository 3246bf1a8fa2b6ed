"""The run loop in-process against the fake server, with a fake restic."""

import json
import logging
import threading

import pytest
from fake_agent_server import all_files, wait_for
from running_agent import REPO_PASSWORD, Running, config_update, job_run

from agent.client import ProtocolTooOld
from agent.service import Agent
from agent.spool import Spool


@pytest.fixture
def start_agent(agent_home, fake_restic):
    started = []

    def start(**kwargs):
        running = Running(Agent(agent_home, restic_binary=str(fake_restic), **kwargs))
        started.append(running)
        return running

    yield start
    for running in started:
        running.finish()


def acks_of(fake_server):
    return {ack["command_id"]: ack for ack in list(fake_server.acks)}


def test_probe_end_to_end_with_acks_events_and_logs(
    fake_server, start_agent, agent_home, fake_restic, caplog
):
    caplog.set_level(logging.DEBUG)
    fake_server.queue(config_update())
    fake_server.queue(job_run(12))
    running = start_agent()
    finished = wait_for(lambda: fake_server.events_of(12, "job.finished"), timeout=20)
    wait_for(lambda: "c-run-12" in acks_of(fake_server))
    assert acks_of(fake_server)["c-config"]["result"] == "accepted"
    assert acks_of(fake_server)["c-run-12"]["result"] == "accepted"

    hello = fake_server.hellos[0]
    assert hello["protocol_version"] == 1 and hello["agent_version"] == "0.1.0"
    assert hello["restic_version"] == "0.14.0" and hello["boot_id"] == running.agent.boot_id
    types = [event["type"] for event in fake_server.events_of(12)]
    assert types == ["job.started", "repo.status", "job.finished"]
    assert fake_server.events_of(12, "repo.status")[0]["data"]["status"] == "ready"
    data = finished[0]["data"]
    assert data["status"] == "succeeded" and data["final_seq"] == fake_server.committed(12) == 6
    assert all(event["attempt_id"] == "att-1" for event in fake_server.events_of(12))

    # The job's spool is deleted once everything is delivered; it leaves the running list.
    wait_for(lambda: not (agent_home / "spool" / "jobs" / "12").exists())
    wait_for(lambda: fake_server.polls[-1]["running"] == [])

    # A redelivered command is recognised and acked as a duplicate, not run again.
    calls = len(fake_restic.calls())
    fake_server.queue(dict(job_run(12), delivery_count=2))
    wait_for(lambda: acks_of(fake_server)["c-run-12"]["result"] == "duplicate")
    assert len(fake_restic.calls()) == calls

    status = json.loads((agent_home / "status.json").read_text())
    assert status["state"] == "connected" and status["last_poll_ok_at"]
    assert running.finish() == {"status": 0}
    assert json.loads((agent_home / "status.json").read_text())["state"] == "stopped"

    # The repository password is sealed; it is in no file, no log line, no request to the server
    # except the command that carried it.
    for path in all_files(agent_home):
        assert REPO_PASSWORD.encode() not in path.read_bytes(), path
    assert REPO_PASSWORD not in caplog.text
    sent = b"".join(fake_server.raw_bodies)
    assert REPO_PASSWORD.encode() not in sent
    assert "******" in json.dumps(fake_server.logs[12])  # restic printed it; it was masked


def test_unknown_commands_are_rejected_and_cancel_of_nothing_is_noop(fake_server, start_agent):
    fake_server.queue({"command_id": "c-x", "type": "agent.explode", "payload": {}})
    fake_server.queue(
        {
            "command_id": "c-cancel",
            "type": "job.cancel",
            "job_id": 99,
            "attempt_id": "a",
            "payload": {},
        }
    )
    start_agent()
    wait_for(lambda: {"c-x", "c-cancel"} <= set(acks_of(fake_server)))
    assert acks_of(fake_server)["c-x"] == {
        "command_id": "c-x",
        "result": "rejected",
        "reason": "unknown command type",
    }
    assert acks_of(fake_server)["c-cancel"]["result"] == "noop"


def test_unknown_kind_fails_the_job(fake_server, start_agent):
    fake_server.queue(config_update())
    fake_server.queue(job_run(3, kind="restore-the-moon"))
    start_agent()
    (finished,) = wait_for(lambda: fake_server.events_of(3, "job.finished"))
    assert finished["data"]["status"] == "failed"
    assert finished["data"]["error"] == "this agent version cannot run restore-the-moon jobs"


def test_job_cancel_and_reconcile_kill_stop_running_jobs(fake_server, start_agent):
    fake_server.queue(config_update(url="fake:slow"))
    fake_server.queue(job_run(4))
    fake_server.queue(job_run(5, attempt_id="att-5"))
    running = start_agent()
    wait_for(lambda: len(running.agent.runner.running()) == 2)
    wait_for(lambda: running.agent.spool.job(4).next_seq > 2)
    wait_for(lambda: running.agent.spool.job(5).next_seq > 2)
    fake_server.queue(
        {
            "command_id": "c-cancel-4",
            "type": "job.cancel",
            "job_id": 4,
            "attempt_id": "att-1",
            "payload": {},
        }
    )
    with fake_server.condition:
        fake_server.reconcile.append(
            {"job_id": 5, "attempt_id": "att-5", "action": "kill", "reason": "stale_attempt"}
        )
        fake_server.condition.notify_all()
    for job_id in (4, 5):
        (finished,) = wait_for(
            lambda job_id=job_id: fake_server.events_of(job_id, "job.finished"), timeout=20
        )
        assert finished["data"]["status"] == "cancelled"
    wait_for(lambda: acks_of(fake_server).get("c-cancel-4", {}).get("result") == "accepted")


def test_offline_server_jobs_keep_running_and_everything_arrives_in_order(
    fake_server, start_agent, agent_home
):
    fake_server.queue(config_update(url="fake:ticker:60"))
    fake_server.queue(job_run(21))
    running = start_agent()
    wait_for(lambda: running.agent.runner.is_running(21))
    fake_server.down = True  # a proxy answers 502 from now on
    wait_for(lambda: not running.agent.runner.is_running(21), timeout=20)
    wait_for(lambda: json.loads((agent_home / "status.json").read_text())["state"] == "unreachable")
    assert running.agent.spool.job(21) is not None  # spooled, not lost
    fake_server.down = False
    (finished,) = wait_for(lambda: fake_server.events_of(21, "job.finished"), timeout=90)
    final_seq = finished["data"]["final_seq"]
    assert final_seq == 61  # the "$ restic …" line plus 60 ticks
    assert [record["seq"] for record in fake_server.logs[21]] == list(range(1, final_seq + 1))
    texts = [record["text"] for record in fake_server.logs[21]]
    assert texts[1:] == [f"tick {number}" for number in range(1, 61)]
    types = [event["type"] for event in fake_server.events_of(21)]
    assert types == ["job.started", "repo.status", "job.finished"]


def test_spool_left_by_a_previous_run_is_flushed_before_hello(fake_server, agent_home, start_agent):
    spool = Spool(agent_home / "spool", max_bytes=10**7)
    spool.add_event("job.started", 30, "old-attempt", {})
    job = spool.open_job(30, "old-attempt")
    job.append("stdout", "written before the crash")
    start_agent()
    (finished,) = wait_for(lambda: fake_server.events_of(30, "job.finished"))
    assert finished["data"]["status"] == "failed"
    assert "agent stopped" in finished["data"]["error"]
    wait_for(lambda: fake_server.hellos)
    assert fake_server.timeline.index("events") < fake_server.timeline.index("hello")
    assert fake_server.logs[30][0]["text"] == "written before the crash"


def test_reporting_jobs_are_listed_in_hello(fake_server, agent_home, start_agent):
    fake_server.down = True
    spool = Spool(agent_home / "spool", max_bytes=10**7)
    spool.open_job(31, "att-31").append("stdout", "pending")
    running = start_agent()
    wait_for(lambda: running.agent.running())
    assert running.agent.running() == [{"job_id": 31, "attempt_id": "att-31", "state": "reporting"}]
    fake_server.down = False
    wait_for(lambda: fake_server.hellos)
    assert fake_server.hellos[0]["running"] in (
        [{"job_id": 31, "attempt_id": "att-31", "state": "reporting"}],
        [],  # already delivered by the time hello went out
    )


def test_protocol_too_old_stops_the_agent(fake_server, agent_home, fake_restic):
    fake_server.hello_answer = (
        426,
        {"error": "protocol_too_old", "min_protocol": 2, "message": "Upgrade this agent."},
    )
    agent = Agent(agent_home, restic_binary=str(fake_restic))
    with pytest.raises(ProtocolTooOld, match=r"Upgrade this agent\."):
        agent.run_forever(threading.Event())
    assert json.loads((agent_home / "status.json").read_text())["state"] == "stopped"


def test_revoked_token_is_reported_and_retried_slowly(fake_server, agent_home, start_agent):
    state = json.loads((agent_home / "state.json").read_text())
    state["agent_token"] = "rma_revoked"
    (agent_home / "state.json").write_text(json.dumps(state))
    start_agent()
    status = wait_for(
        lambda: (
            json.loads((agent_home / "status.json").read_text())
            if (agent_home / "status.json").exists()
            and json.loads((agent_home / "status.json").read_text())["state"] == "unauthorized"
            else None
        )
    )
    assert "re-enroll" in status["last_error"]
    assert len(fake_server.hellos) == 0


def test_acks_are_resent_until_a_poll_carrying_them_succeeds(fake_server, agent_home, fake_restic):
    agent = Agent(agent_home, restic_binary=str(fake_restic))
    agent.handle_command(config_update("c-early"))
    assert agent.pending_acks() == [{"command_id": "c-early", "result": "accepted"}]
    assert "c-early" in json.loads((agent_home / "seen_commands.json").read_text())
    fake_server.down_endpoints.add("poll")
    running = Running(agent)
    wait_for(lambda: sum(b'"c-early"' in body for body in fake_server.raw_bodies) >= 2, timeout=20)
    assert agent.pending_acks()  # every failed poll carried it; it is still pending
    fake_server.down_endpoints.clear()
    wait_for(lambda: "c-early" in acks_of(fake_server), timeout=30)
    wait_for(lambda: agent.pending_acks() == [])
    assert running.finish() == {"status": 0}


def test_commands_seen_before_a_restart_are_duplicates(fake_server, agent_home, fake_restic):
    first = Agent(agent_home, restic_binary=str(fake_restic))
    first.handle_command(config_update("c-1"))
    first.handle_command(job_run(40))
    assert first.runner.wait_idle(timeout=20)

    restarted = Agent(agent_home, restic_binary=str(fake_restic))
    restarted.handle_command(config_update("c-1"))
    restarted.handle_command(job_run(40))
    assert restarted.pending_acks() == [
        {"command_id": "c-1", "result": "duplicate"},
        {"command_id": "c-run-40", "result": "duplicate"},
    ]
    # Even without the journal entry, a finished attempt on disk is never run again.
    (agent_home / "seen_commands.json").unlink()
    again = Agent(agent_home, restic_binary=str(fake_restic))
    again.handle_command(job_run(40))
    assert again.pending_acks() == [{"command_id": "c-run-40", "result": "duplicate"}]
    assert [call["argv"][1:] for call in fake_restic.calls()] == [["--no-lock", "cat", "config"]]


def test_config_update_keeps_admin_credentials_beside_the_everyday_ones(agent_home, fake_restic):
    agent = Agent(agent_home, restic_binary=str(fake_restic))
    admin = {"url": "/srv/repo", "username": "admin", "password": "Admin-Secret-7"}
    update = config_update("c1")
    update["payload"]["admin_repository"] = admin
    agent.handle_command(update)
    assert agent.secrets.load() == {
        "url": "fake:ready",
        "username": "",
        "password": REPO_PASSWORD,
        "admin_repository": admin,
    }
    # Absent: the admin credentials stay; the everyday ones are replaced.
    agent.handle_command(config_update("c2", url="fake:missing"))
    stored = agent.secrets.load()
    assert stored["url"] == "fake:missing" and stored["admin_repository"] == admin
    # null removes them; a payload with only admin_repository keeps the everyday ones.
    agent.handle_command(
        {"command_id": "c3", "type": "config.update", "payload": {"admin_repository": None}}
    )
    assert "admin_repository" not in agent.secrets.load()
    agent.handle_command(
        {"command_id": "c4", "type": "config.update", "payload": {"admin_repository": admin}}
    )
    assert agent.secrets.load()["url"] == "fake:missing"
    assert agent.secrets.load()["admin_repository"] == admin
    agent.handle_command(
        {
            "command_id": "c5",
            "type": "config.update",
            "payload": {"admin_repository": {"password": "x"}},
        }
    )
    assert [ack["result"] for ack in agent.pending_acks()] == ["accepted"] * 4 + ["rejected"]
    assert agent.pending_acks()[-1]["reason"] == "config.update needs admin_repository.url"
    assert b"Admin-Secret-7" not in (agent_home / "secrets.sealed").read_bytes()


def test_backup_end_to_end_with_its_reports(fake_server, start_agent, fake_restic):
    fake_restic.set_version("0.15.1")
    fake_server.queue(config_update(url="fake:missing"))
    fake_server.queue(job_run(20, kind="init"))
    start_agent()
    wait_for(lambda: fake_server.events_of(20, "job.finished"), timeout=20)
    assert fake_server.events_of(20, "repo.status")[0]["data"]["status"] == "ready"
    # The version asked at start-up gates init --json; restic is not asked again.
    assert [call["argv"][1:] for call in fake_restic.calls()] == [["version"], ["init", "--json"]]

    fake_server.queue(config_update("c-config-2", url="fake:ready"))
    backup = job_run(21, kind="backup")
    backup["payload"]["params"] = {"group": "default", "paths": ["/etc"], "tags": ["default"]}
    fake_server.queue(backup)
    (finished,) = wait_for(lambda: fake_server.events_of(21, "job.finished"), timeout=20)
    types = [event["type"] for event in fake_server.events_of(21)]
    assert types == [
        "job.started",
        "job.progress",
        "snapshots.report",
        "repo.stats",
        "job.finished",
    ]
    assert finished["data"]["status"] == "succeeded"
    assert len(finished["data"]["stats"]["snapshot_id"]) == 64
    texts = [record["text"] for record in fake_server.logs[21]]
    assert any(text.startswith("snapshot 39cddcb5 saved: 4 new") for text in texts)


def test_job_watch_makes_a_running_job_flush_at_the_watched_interval(fake_server, start_agent):
    fake_server.queue(config_update(url="fake:slow"))
    fake_server.queue(job_run(6))
    running = start_agent()
    wait_for(lambda: running.agent.runner.is_running(6))
    assert not running.agent.uploader.is_watched(6)
    for command_id, job_id in (("c-watch-6", 6), ("c-watch-77", 77)):
        fake_server.queue(
            {"command_id": command_id, "type": "job.watch", "job_id": job_id, "payload": {}}
        )
    wait_for(lambda: acks_of(fake_server).get("c-watch-6", {}).get("result") == "accepted")
    assert acks_of(fake_server)["c-watch-77"]["result"] == "noop"  # not running here
    # (Whether it stays watched is the server's to say on the next answers; this fake
    # server says "not watched", see test_agent_uploader for the flag itself.)
    running.agent.runner.cancel(6)
