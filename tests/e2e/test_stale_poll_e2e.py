"""A parked poll whose agent went away leases nothing (real `serve`, real sockets).

A proxy that drops an agent's connection, or an agent that exits, leaves its long poll
parked in the server. Woken by a new command, that poll must not lease it: the answer would
go to a closed socket and the command would wait for its lease (60 s) before the agent's
next poll, perhaps in another worker, could have it. And when the connection died without
a close, so the server could not know, the agent's next poll gets the command at once.
"""

from __future__ import annotations

import http.client
import json
import time

import pytest
from sqlalchemy import select

from app import create_app
from app.extensions import db
from app.models import Command
from tests.e2e.processes import Api, wait_until
from tests.factories import make_enrolled_host

pytestmark = pytest.mark.e2e

ADMIN_PASSWORD = "stale poll e2e admin password"


def _send_poll(server, token, wait, acks=()) -> http.client.HTTPConnection:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=15)
    body = {"acks": list(acks), "running": [], "boot_id": "boot-1", "wait": wait}
    conn.request(
        "POST",
        "/api/agent/v1/poll",
        body=json.dumps(body),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    return conn


def _poll(server, token, wait, acks=()) -> tuple[int, dict]:
    conn = _send_poll(server, token, wait, acks)
    try:
        response = conn.getresponse()
        raw = response.read()
    finally:
        conn.close()
    return response.status, (json.loads(raw) if raw else {})


def _settled_host(server, hostname):
    """An enrolled host whose first commands the "agent" acknowledged; ``(host_id, token,
    seeder app)``."""
    seeder = create_app(
        {
            "RM_DATA_DIR": server.env["RM_DATA_DIR"],
            "SQLALCHEMY_DATABASE_URI": server.env["RM_DATABASE_URL"],
        }
    )
    with seeder.app_context():
        host, token = make_enrolled_host(hostname)
        host.repo_status = "ready"  # no bring-up probe of its own to get in the way
        db.session.commit()
        host_id = host.id
        db.session.remove()
    acks = []
    for _ in range(5):  # the first polls' own commands acknowledged, as an agent does
        status, answer = _poll(server, token, 0, acks)
        if status == 204:
            return host_id, token, seeder
        acks = [{"command_id": c["command_id"], "result": "accepted"} for c in answer["commands"]]
    raise AssertionError("the agent never got an empty poll")


def test_a_command_answered_into_a_silent_connection_comes_with_the_next_poll(start_server):
    """The network path went silent (no FIN, no RST): the parked poll's connection looks
    alive, the server leases the command to it and writes the answer, which never reaches
    the agent. The agent gives up on that poll after its read timeout and polls again,
    acknowledging nothing: that poll gets the command at once, not after the 60 s lease."""
    server = start_server()
    api = Api(server, server.admin_token(ADMIN_PASSWORD))
    host_id, token, seeder = _settled_host(server, "silent-1")
    silent = _send_poll(server, token, 20)  # parked; its answer will never be read
    time.sleep(0.5)
    job_id = api.run(host_id, "probe")

    def command():
        with seeder.app_context():
            row = db.session.execute(
                select(Command.state, Command.delivery_count).where(Command.job_id == job_id)
            ).one()
            db.session.remove()
            return tuple(row)

    wait_until(lambda: command() == ("leased", 1), 5, "the command leased to the silent poll")
    started = time.monotonic()
    status, answer = _poll(server, token, 5)  # the agent's next poll: nothing to ack
    assert time.monotonic() - started < 2
    assert status == 200
    assert [(c["job_id"], c["delivery_count"]) for c in answer["commands"]] == [(job_id, 2)]
    assert "leased to an earlier poll and not acknowledged" in server.log()
    silent.close()
    with seeder.app_context():
        db.session.remove()
        db.engine.dispose()


def test_a_poll_whose_agent_went_away_leaves_the_command_for_the_next_poll(start_server):
    server = start_server()
    api = Api(server, server.admin_token(ADMIN_PASSWORD))
    host_id, token, seeder = _settled_host(server, "stale-1")

    stale = _send_poll(server, token, 20)  # parked in the server ...
    time.sleep(0.5)
    stale.close()  # ... and its agent gone (FIN), the server not told otherwise
    job_id = api.run(host_id, "probe")

    def command_state():
        with seeder.app_context():
            state = db.session.scalar(select(Command.state).where(Command.job_id == job_id))
            db.session.remove()
            return state

    time.sleep(1.0)  # the parked poll has been woken by now and has looked
    assert command_state() == "queued"  # not leased to the closed connection

    started = time.monotonic()
    status, answer = _poll(server, token, 5)
    assert status == 200
    assert [c["job_id"] for c in answer["commands"]] == [job_id]
    assert answer["commands"][0]["delivery_count"] == 1
    assert time.monotonic() - started < 2
    wait_until(lambda: command_state() == "leased", 5, "the command leased to the live poll")
    with seeder.app_context():
        db.session.remove()
        db.engine.dispose()
