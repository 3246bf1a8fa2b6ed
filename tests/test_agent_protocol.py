"""The server side of the agent protocol (docs/protocol.md), spoken in raw HTTP."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

from sqlalchemy import func, select

from app.extensions import db
from app.models import (
    AgentEvent,
    AuditLog,
    Command,
    EnrollmentToken,
    Host,
    HostCredential,
    Job,
    JobLog,
    Role,
    SourceGroup,
)
from app.models.types import utcnow
from app.services import enrollment, jobs
from app.services.audit import Actor
from tests.factories import (
    ENROLLED_REPO_PASSWORD,
    TS,
    Agent,
    enroll_agent,
    mint_enrollment_token,
    park_poll,
)

# --- enrollment ------------------------------------------------------------------------------


def test_enrollment_creates_host_group_credentials_and_config_command(protocol_app):
    agent, host_id = enroll_agent(protocol_app)
    host = db.session.get(Host, host_id)
    assert host.hostname == "web-1"
    assert host.enrolled_at is not None and host.last_seen_at is None
    group = db.session.scalar(select(SourceGroup).where(SourceGroup.host_id == host_id))
    assert (group.name, group.includes) == ("default", ["/etc", "/home"])
    credential = db.session.scalar(select(HostCredential))
    assert ENROLLED_REPO_PASSWORD.encode() not in credential.sealed_password
    command = db.session.scalar(select(Command))
    assert command.type == "config.update"
    assert ENROLLED_REPO_PASSWORD not in str(command.payload)
    token_row = db.session.scalar(select(EnrollmentToken))
    assert token_row.sealed_credentials is None and token_row.used_by_host_id == host_id
    assert "host.enrolled" in db.session.scalars(select(AuditLog.action)).all()

    # The credentials reach the agent only over the authenticated poll.
    response = agent.poll()
    assert response.status_code == 200
    (delivered,) = response.get_json()["commands"]
    assert delivered["payload"]["repository"] == {
        "url": "rest:https://backup:pw@backup.example.com/web-1",
        "username": "backup",
        "password": ENROLLED_REPO_PASSWORD,
    }
    for row in db.session.scalars(select(AuditLog)):
        assert ENROLLED_REPO_PASSWORD not in str(row.payload)


def test_enrollment_token_is_single_use(protocol_app):
    _, plain = mint_enrollment_token(protocol_app)
    client = protocol_app.test_client()
    body = {"token": plain, "os": "linux", "protocol_version": 1}
    assert client.post("/api/agent/v1/enroll", json=body).status_code == 201
    again = client.post("/api/agent/v1/enroll", json=body)
    assert again.status_code == 409
    assert again.get_json()["error"] == "token_used"
    assert "already used" in again.get_json()["message"]
    assert db.session.scalar(select(func.count()).select_from(Host)) == 1


def test_enrollment_token_expires_after_an_hour(protocol_app):
    token, plain = mint_enrollment_token(protocol_app)
    token.expires_at = utcnow() - timedelta(seconds=1)
    db.session.commit()
    response = protocol_app.test_client().post(
        "/api/agent/v1/enroll", json={"token": plain, "protocol_version": 1}
    )
    assert response.status_code == 410
    assert response.get_json()["error"] == "token_expired"
    assert db.session.scalar(select(func.count()).select_from(Host)) == 0
    # Regenerating gives a working token for the same details; the old value is dead.
    fresh = enrollment.regenerate(db.session.get(EnrollmentToken, token.id), now=utcnow())
    db.session.commit()
    client = protocol_app.test_client()
    assert client.post("/api/agent/v1/enroll", json={"token": plain}).status_code == 401
    assert client.post("/api/agent/v1/enroll", json={"token": fresh}).status_code == 201


def test_enrollment_refusals_are_precise(protocol_app):
    client = protocol_app.test_client()
    unknown = client.post("/api/agent/v1/enroll", json={"token": "rme_nope"})
    assert (unknown.status_code, unknown.get_json()["error"]) == (401, "invalid_token")
    assert client.post("/api/agent/v1/enroll", json={}).status_code == 422
    assert client.post("/api/agent/v1/enroll", data="x").status_code == 415
    _, plain = mint_enrollment_token(protocol_app, hostname=None)
    bad_name = client.post("/api/agent/v1/enroll", json={"token": plain, "hostname": "a b;rm"})
    assert bad_name.status_code == 422
    assert db.session.scalar(select(func.count()).select_from(Host)) == 0


def test_enrollment_token_api_for_automation(protocol_app, make_user):
    from app.services import api_tokens

    admin = make_user(Role.admin)
    _, bearer = api_tokens.create_token(admin, "ci", now=utcnow())
    db.session.commit()
    api = protocol_app.test_client()
    auth = {"Authorization": f"Bearer {bearer}"}
    created = api.post(
        "/api/v1/enrollment-tokens",
        headers=auth,
        json={
            "hostname": "db-1",
            "repo_url": "/srv/restic/db-1",
            "repo_password": "pw-123",
            "paths": ["/var/lib/postgresql"],
        },
    )
    assert created.status_code == 201
    body = created.get_json()
    assert body["token"].startswith("rme_")
    assert "install.sh" in body["install_command"] and body["token"] in body["install_command"]
    assert "pw-123" not in str(body)
    listed = api.get("/api/v1/enrollment-tokens", headers=auth).get_json()["items"]
    assert [item["hostname"] for item in listed] == ["db-1"] and "token" not in listed[0]
    bad = api.post(
        "/api/v1/enrollment-tokens",
        headers=auth,
        json={"repo_url": "/x", "repo_password": "", "paths": ["relative/path"]},
    )
    assert bad.status_code == 422
    assert bad.get_json()["error"] == "validation_failed"
    assert api.delete(f"/api/v1/enrollment-tokens/{body['id']}", headers=auth).status_code == 204
    assert api.get("/api/v1/enrollment-tokens", headers=auth).get_json()["items"] == []


# --- hello, poll, commands -----------------------------------------------------------------


def test_hello_marks_the_host_online_and_refuses_old_protocols(protocol_app):
    agent, host_id = enroll_agent(protocol_app)
    api = protocol_app.test_client()
    assert db.session.get(Host, host_id).status(utcnow(), 90) == "never_seen"
    old = agent.hello(protocol=0)
    assert old.status_code == 426
    assert old.get_json()["error"] == "protocol_too_old"
    assert old.get_json()["min_protocol"] == 1
    assert "Upgrade the agent" in old.get_json()["message"]
    response = agent.hello()
    assert response.status_code == 200
    db.session.expire_all()
    host = db.session.get(Host, host_id)
    assert host.status(utcnow(), 90) == "online"
    assert (host.restic_version, host.boot_id) == ("0.14.0", "boot-1")
    assert host.status(utcnow() + timedelta(seconds=91), 90) == "offline"
    del api


def test_agent_endpoints_refuse_bad_tokens(protocol_app):
    agent, _ = enroll_agent(protocol_app)
    for token in ("rma_wrong", "rmp_personal-token", ""):
        response = agent.post("/poll", {"boot_id": "x"}, token=token or " ")
        assert response.status_code == 401
        assert response.get_json()["error"] == "unauthenticated"


def test_lease_ack_redelivery_and_dedupe(protocol_app):
    agent, _ = enroll_agent(protocol_app)
    first = agent.poll().get_json()["commands"]
    assert [c["delivery_count"] for c in first] == [1]
    # Not acked by the next poll: the answer never reached the agent (it acks everything
    # it received in its next poll), so that poll gets the command again at once.
    again = agent.poll(acks=[], wait=0).get_json()["commands"]
    assert again[0]["command_id"] == first[0]["command_id"]
    assert again[0]["delivery_count"] == 2
    # A lease that ran out is leasable too (the poll that took it went away).
    command = db.session.get(Command, first[0]["command_id"])
    command.lease_expires_at = utcnow() - timedelta(seconds=1)
    db.session.commit()
    third = agent.poll(acks=[], wait=0).get_json()["commands"]
    assert [c["delivery_count"] for c in third] == [3]
    # Acked (twice, as a retrying agent would): never delivered again.
    ack = {"command_id": first[0]["command_id"], "result": "duplicate"}
    assert agent.poll(acks=[ack]).status_code == 204
    assert agent.poll(acks=[ack]).status_code == 204
    db.session.expire_all()
    command = db.session.get(Command, first[0]["command_id"])
    assert (command.state, command.result) == ("acked", "duplicate")


def test_unacknowledged_job_run_fails_after_max_deliveries(protocol_app):
    from app.services import commands

    agent, host_id = enroll_agent(protocol_app)
    host = db.session.get(Host, host_id)
    job = jobs.create_job(
        protocol_app.extensions["secretbox"],
        host,
        "probe",
        params={},
        actor=Actor.system(),
        now=utcnow(),
    )
    db.session.execute(
        Command.__table__.update()
        .where(Command.job_id == job.id)
        .values(
            delivery_count=commands.MAX_DELIVERIES,
            state="leased",
            lease_expires_at=utcnow() - timedelta(seconds=1),
        )
    )
    db.session.commit()
    delivered = agent.poll().get_json()["commands"]
    assert [c["type"] for c in delivered] == ["config.update"]
    db.session.expire_all()
    job = db.session.get(Job, job.id)
    assert job.status == "failed"
    assert "never acknowledged" in job.error


def test_parked_poll_wakes_when_a_command_is_queued(protocol_app):
    agent, host_id = enroll_agent(protocol_app)
    first = agent.poll().get_json()["commands"]
    acks = [{"command_id": first[0]["command_id"]}]
    result = {}

    def park():
        started = time.monotonic()
        result["response"] = agent.poll(acks=acks, wait=10)
        result["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=park)
    thread.start()
    bus = protocol_app.extensions["bus"]
    deadline = time.monotonic() + 5
    while bus.waiting(f"host:{host_id}") == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert bus.waiting(f"host:{host_id}") == 1
    host = db.session.get(Host, host_id)
    job = jobs.create_job(
        protocol_app.extensions["secretbox"],
        host,
        "probe",
        params={},
        actor=Actor.system(),
        now=utcnow(),
    )
    db.session.commit()
    bus.publish(f"host:{host_id}")
    thread.join(10)
    assert result["response"].status_code == 200
    assert result["seconds"] < 5
    (command,) = result["response"].get_json()["commands"]
    assert (command["type"], command["job_id"]) == ("job.run", job.id)
    assert command["attempt_id"] == job.attempt_id
    assert bus.waiting(f"host:{host_id}") == 0


def _take_and_ack(agent):
    """Take what the enrollment queued and acknowledge it, as the agent does with its next
    poll (an unacknowledged command would come again with that poll)."""
    commands = agent.poll().get_json()["commands"]
    acks = [{"command_id": command["command_id"]} for command in commands]
    assert agent.poll(acks=acks, wait=0).status_code == 204


def _wait_for_waiters(bus, host_id, count):
    deadline = time.monotonic() + 5
    while bus.waiting(f"host:{host_id}") != count and time.monotonic() < deadline:
        time.sleep(0.01)
    assert bus.waiting(f"host:{host_id}") == count


def test_a_newer_poll_takes_over_from_one_left_parked(protocol_app):
    # An agent restarted (or a proxy dropped its connection): its old request is still
    # parked here. The next command must go to the new poll, not to a dead socket.
    agent, host_id = enroll_agent(protocol_app)
    _take_and_ack(agent)  # the config.update
    bus = protocol_app.extensions["bus"]
    result = {}
    stale = park_poll(agent, result, "stale")
    _wait_for_waiters(bus, host_id, 1)
    fresh = park_poll(agent, result, "fresh")
    stale.join(5)
    assert result["stale"].status_code == 204
    assert result["stale_seconds"] < 1.0  # at once, not after the 2 s hold
    _wait_for_waiters(bus, host_id, 1)
    _job(protocol_app, host_id)
    bus.publish(f"host:{host_id}")
    fresh.join(10)
    assert result["fresh"].status_code == 200
    assert [c["type"] for c in result["fresh"].get_json()["commands"]] == ["job.run"]


def test_a_parked_poll_of_an_earlier_boot_gives_way(protocol_app):
    # With several workers the newer poll may be in another process: its new boot_id,
    # written to the host row, is what the old request sees.
    agent, host_id = enroll_agent(protocol_app)
    _take_and_ack(agent)
    bus = protocol_app.extensions["bus"]
    result = {}
    # The view's path: it registers its waiter after its boot check, so a waiter means
    # the check is done. (Below Flask the waiter comes before the read; that path's own
    # test is in test_idle_poll.py.)
    protocol_app.extensions["idle_polls"]._hosts.clear()
    stale = park_poll(agent, result, "stale")
    _wait_for_waiters(bus, host_id, 1)
    db.session.get(Host, host_id).boot_id = "boot-after-restart"
    _job(protocol_app, host_id)
    bus.publish(f"host:{host_id}")
    stale.join(5)
    assert result["stale"].status_code == 204
    queued = db.session.scalar(
        select(func.count())
        .select_from(Command)
        .where(Command.host_id == host_id, Command.state == "queued")
    )
    assert queued == 1  # left for the restarted agent


def test_poll_without_work_answers_204_after_the_hold(protocol_app):
    agent, _ = enroll_agent(protocol_app)
    _take_and_ack(agent)  # the config.update
    started = time.monotonic()
    response = agent.poll(wait=1)
    assert response.status_code == 204
    assert 0.9 <= time.monotonic() - started < 5


def test_hostile_poll_bodies_get_precise_errors(protocol_app):
    agent, _ = enroll_agent(protocol_app)
    cases = [
        {"acks": "all"},
        {"acks": [{"command_id": 5}]},
        {"acks": [{"command_id": "x", "result": "maybe"}]},
        {"running": [{"job_id": -1, "attempt_id": "a"}]},
        {"running": [{"job_id": 1}]},
        {"running": "x"},
        {"boot_id": "x" * 500},
    ]
    for body in cases:
        response = agent.post("/poll", body)
        assert response.status_code == 422, body
        assert response.get_json()["message"]


# --- jobs: events, logs, reconciliation ----------------------------------------------------


def _job(app, host_id):
    host = db.session.get(Host, host_id)
    job = jobs.create_job(
        app.extensions["secretbox"], host, "probe", params={}, actor=Actor.system(), now=utcnow()
    )
    db.session.commit()
    return job.id, job.attempt_id


def _event(event_id, type_, job_id, attempt_id, **data):
    return {
        "event_id": event_id,
        "type": type_,
        "job_id": job_id,
        "attempt_id": attempt_id,
        "ts": TS,
        "data": data,
    }


def test_events_are_idempotent_and_first_terminal_wins(protocol_app):
    agent, host_id = enroll_agent(protocol_app)
    agent.hello()
    job_id, attempt = _job(protocol_app, host_id)
    batch = [
        _event("e1", "job.started", job_id, attempt),
        _event("e2", "job.progress", job_id, attempt, percent=50),
        _event(
            "e3",
            "job.finished",
            job_id,
            attempt,
            status="succeeded",
            exit_code=0,
            stats={"files_new": 3},
            final_seq=0,
            lines_dropped=0,
        ),
    ]
    first = agent.post("/events", {"events": batch})
    assert first.status_code == 200
    assert first.get_json() == {"acked": ["e1", "e2", "e3"], "rejected": [], "watched": []}
    # The same batch again (a blind retry) changes nothing and is acknowledged again.
    assert agent.post("/events", {"events": batch}).get_json()["acked"] == ["e1", "e2", "e3"]
    late = agent.post(
        "/events",
        {"events": [_event("e4", "job.finished", job_id, attempt, status="failed", exit_code=1)]},
    )
    assert late.get_json()["rejected"] == []
    db.session.expire_all()
    job = db.session.get(Job, job_id)
    assert (job.status, job.exit_code, job.stats) == ("succeeded", 0, {"files_new": 3})
    assert job.started_at is not None and job.finished_at is not None
    assert db.session.scalar(select(func.count()).select_from(AgentEvent)) == 4


def test_events_from_stale_attempts_or_other_hosts_are_rejected(protocol_app):
    agent, host_id = enroll_agent(protocol_app)
    other, _ = enroll_agent(protocol_app, hostname="db-1")
    job_id, attempt = _job(protocol_app, host_id)
    stale = agent.post("/events", {"events": [_event("s1", "job.started", job_id, "old")]})
    assert stale.get_json()["rejected"][0]["error"] == "stale_attempt"
    foreign = other.post("/events", {"events": [_event("f1", "job.started", job_id, attempt)]})
    assert foreign.get_json()["rejected"][0]["error"] == "unknown_job"
    db.session.expire_all()
    assert db.session.get(Job, job_id).status == "queued"
    bad = agent.post(
        "/events", {"events": [{"event_id": "z", "type": "job.started", "ts": "then"}]}
    )
    assert bad.status_code == 422


def _records(texts):
    return [{"ts": TS, "stream": "stdout", "text": text} for text in texts]


def test_log_batches_skip_overlap_and_refuse_gaps(protocol_app):
    agent, host_id = enroll_agent(protocol_app)
    job_id, attempt = _job(protocol_app, host_id)
    path = f"/jobs/{job_id}/logs"
    first = agent.post(
        path, {"attempt_id": attempt, "first_seq": 1, "records": _records(["a", "b", "c"])}
    )
    assert first.get_json() == {
        "committed_seq": 3,
        "job_state": "queued",
        "truncated": False,
        "watched": False,
    }
    # A retry overlapping what is stored: only the new tail is kept.
    overlap = agent.post(
        path, {"attempt_id": attempt, "first_seq": 2, "records": _records(["b", "c", "d"])}
    )
    assert overlap.get_json()["committed_seq"] == 4
    gap = agent.post(path, {"attempt_id": attempt, "first_seq": 7, "records": _records(["g"])})
    assert gap.status_code == 416
    assert gap.get_json()["committed_seq"] == 4
    stale = agent.post(path, {"attempt_id": "old", "first_seq": 5, "records": _records(["e"])})
    assert (stale.status_code, stale.get_json()["error"]) == (409, "stale_attempt")
    texts = db.session.scalars(
        select(JobLog.text).where(JobLog.job_id == job_id).order_by(JobLog.seq)
    ).all()
    assert texts == ["a", "b", "c", "d"]
    bad = agent.post(
        path,
        {
            "attempt_id": attempt,
            "first_seq": 5,
            "records": [{"ts": TS, "stream": "stdin", "text": "x"}],
        },
    )
    assert bad.status_code == 422
    assert (
        agent.post(
            "/jobs/99999/logs", {"attempt_id": attempt, "first_seq": 1, "records": _records(["x"])}
        ).status_code
        == 404
    )


def test_log_cap_truncates_visibly(app_factory):
    app = app_factory(RM_JOB_LOG_MAX_RECORDS=100, RM_POLL_WAIT_SECONDS=2)
    with app.app_context():
        agent, host_id = enroll_agent(app)
        job_id, attempt = _job(app, host_id)
        response = agent.post(
            f"/jobs/{job_id}/logs",
            {
                "attempt_id": attempt,
                "first_seq": 1,
                "records": _records([f"line {n}" for n in range(150)]),
            },
        )
        assert response.get_json() == {
            "committed_seq": 100,
            "job_state": "queued",
            "truncated": True,
            "watched": False,
        }
        assert db.session.get(Job, job_id).log_truncated is True


def test_cancel_reaches_the_agent_on_log_answers_and_reconcile(protocol_app):
    agent, host_id = enroll_agent(protocol_app)
    agent.hello()
    job_id, attempt = _job(protocol_app, host_id)
    agent.post("/events", {"events": [_event("c1", "job.started", job_id, attempt)]})
    job = db.session.get(Job, job_id)
    jobs.request_cancel(protocol_app.extensions["secretbox"], job, job_host(host_id), now=utcnow())
    db.session.commit()
    logs = agent.post(
        f"/jobs/{job_id}/logs", {"attempt_id": attempt, "first_seq": 1, "records": _records(["x"])}
    )
    assert logs.get_json()["job_state"] == "cancelling"
    running = [{"job_id": job_id, "attempt_id": attempt, "state": "running"}]
    answer = agent.poll(running=running).get_json()
    assert {
        "job_id": job_id,
        "attempt_id": attempt,
        "action": "kill",
        "reason": "cancelled",
    } in answer["reconcile"]
    assert "job.cancel" in [c["type"] for c in answer["commands"]]


def job_host(host_id):
    return db.session.get(Host, host_id)


def test_reconcile_marks_jobs_lost_after_an_agent_restart_and_kills_unknown_ones(protocol_app):
    agent, host_id = enroll_agent(protocol_app)
    agent.hello()
    job_id, attempt = _job(protocol_app, host_id)
    agent.post("/events", {"events": [_event("r1", "job.started", job_id, attempt)]})
    # Same boot, job not listed (finished, events in flight): not lost.
    agent.poll(running=[])
    db.session.expire_all()
    assert db.session.get(Job, job_id).status == "running"
    # New boot without the job: lost.
    restarted = Agent(protocol_app, agent.token, boot_id="boot-2")
    answer = restarted.hello(running=[{"job_id": 4242, "attempt_id": "zz"}]).get_json()
    assert answer["reconcile"] == [
        {"job_id": 4242, "attempt_id": "zz", "action": "kill", "reason": "unknown_job"}
    ]
    db.session.expire_all()
    job = db.session.get(Job, job_id)
    assert job.status == "lost"
    assert "restarted" in job.error
    # The real result, delivered late from the spool, replaces the guess.
    restarted.post(
        "/events",
        {
            "events": [
                _event("r2", "job.finished", job_id, attempt, status="succeeded", exit_code=0)
            ]
        },
    )
    db.session.expire_all()
    assert db.session.get(Job, job_id).status == "succeeded"


def test_reporting_jobs_are_never_declared_lost(protocol_app):
    agent, host_id = enroll_agent(protocol_app)
    agent.hello()
    job_id, attempt = _job(protocol_app, host_id)
    agent.post("/events", {"events": [_event("p1", "job.started", job_id, attempt)]})
    restarted = Agent(protocol_app, agent.token, boot_id="boot-9")
    restarted.hello(running=[{"job_id": job_id, "attempt_id": attempt, "state": "reporting"}])
    db.session.expire_all()
    assert db.session.get(Job, job_id).status == "running"


def test_jobs_api_refuses_offline_hosts_and_dispatches_to_online_ones(protocol_app, make_user):
    from app.services import api_tokens

    operator = make_user(Role.operator)
    _, bearer = api_tokens.create_token(operator, "ci", now=utcnow())
    db.session.commit()
    agent, host_id = enroll_agent(protocol_app)
    api = protocol_app.test_client()
    auth = {"Authorization": f"Bearer {bearer}"}
    refused = api.post(f"/api/v1/hosts/{host_id}/jobs", json={"kind": "probe"}, headers=auth)
    assert refused.status_code == 409
    assert refused.get_json()["error"] == "host_offline"
    assert "never seen" in refused.get_json()["message"]
    assert db.session.scalar(select(func.count()).select_from(Job)) == 0
    agent.hello()
    unknown = api.post(f"/api/v1/hosts/{host_id}/jobs", json={"kind": "format-c"}, headers=auth)
    assert unknown.status_code == 422
    created = api.post(f"/api/v1/hosts/{host_id}/jobs", json={"kind": "probe"}, headers=auth)
    assert created.status_code == 201
    job = created.get_json()
    assert (job["status"], job["kind"], job["actor"]["label"]) == (
        "queued",
        "probe",
        operator.username,
    )
    commands = agent.poll().get_json()["commands"]
    assert [c["job_id"] for c in commands if c["type"] == "job.run"] == [job["id"]]
    listed = api.get(f"/api/v1/jobs?host_id={host_id}", headers=auth).get_json()["items"]
    assert [item["id"] for item in listed] == [job["id"]]
    assert api.get("/api/v1/jobs/999", headers=auth).status_code == 404
    assert (
        api.post("/api/v1/hosts/999/jobs", json={"kind": "probe"}, headers=auth).status_code == 404
    )
