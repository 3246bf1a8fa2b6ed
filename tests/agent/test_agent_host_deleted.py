"""A deleted host's agent (410 host_deleted from any call) says why once and stops, with an
exit status systemd does not restart (install/restic-manager-agent.service)."""

import json
import logging
import re
import threading
import time
from pathlib import Path

import pytest
from fake_agent_server import HOST_DELETED, wait_for
from running_agent import Running

from agent.cli import EXIT_HOST_DELETED, main
from agent.client import Client, Gone, HostDeleted, classify_response
from agent.service import Agent

REPO_ROOT = Path(__file__).resolve().parents[2]


def _deleted_lines(caplog):
    return [r.getMessage() for r in caplog.records if "this host was deleted" in r.getMessage()]


def test_410_at_hello_stops_the_agent_with_one_clear_line(
    fake_server, agent_home, fake_restic, caplog
):
    fake_server.delete_host()
    agent = Agent(agent_home, restic_binary=str(fake_restic))
    caplog.set_level(logging.INFO)
    with pytest.raises(HostDeleted, match=r"This host \(web-1\) was deleted"):
        agent.run_forever(threading.Event())
    lines = _deleted_lines(caplog)
    assert len(lines) == 1, lines
    assert "the server says this host was deleted" in lines[0]
    assert "stopping" in lines[0] and "re-enroll" in lines[0]
    assert "This host (web-1) was deleted on the server" in lines[0]
    assert json.loads((agent_home / "status.json").read_text())["state"] == "stopped"
    assert fake_server.polls == []


def test_a_parked_poll_answered_410_stops_a_running_agent(
    fake_server, agent_home, fake_restic, caplog
):
    caplog.set_level(logging.INFO)
    running = Running(Agent(agent_home, restic_binary=str(fake_restic)))
    wait_for(lambda: fake_server.polls)
    started = time.monotonic()
    fake_server.delete_host()
    running.thread.join(15)
    assert not running.thread.is_alive(), "the agent did not stop by itself"
    assert time.monotonic() - started < 10
    assert isinstance(running.result.get("error"), HostDeleted), running.result
    assert len(_deleted_lines(caplog)) == 1
    # the scheduler and the run queue stopped with it
    wait_for(lambda: not {"scheduler", "runs"} & {t.name for t in threading.enumerate()})


def test_run_exits_with_the_host_deleted_status(fake_server, agent_home, capsys):
    fake_server.delete_host()
    assert main(["--home", str(agent_home), "run"]) == EXIT_HOST_DELETED == 4


def test_only_host_deleted_is_host_deleted():
    class Answer:  # what classify_response reads of a requests.Response
        def __init__(self, status, body):
            self.status_code, self._body = status, body
            self.headers = {"Content-Type": "application/json"}

        def json(self):
            return self._body

    with pytest.raises(HostDeleted):
        classify_response(Answer(410, HOST_DELETED))
    with pytest.raises(Gone) as closed:
        classify_response(Answer(410, {"error": "rpc_closed", "message": "nobody waits"}))
    assert not isinstance(closed.value, HostDeleted)
    with pytest.raises(Gone) as expired:
        classify_response(Answer(410, {"error": "token_expired", "message": "expired"}))
    assert not isinstance(expired.value, HostDeleted)


def test_every_call_tells_the_client_callback(fake_server):
    fake_server.delete_host()
    client = Client(fake_server.url, agent_token="rma_fake-agent-token-0123456789")
    told = []
    client.on_host_deleted = told.append
    with pytest.raises(HostDeleted):
        client.send_events([])
    with pytest.raises(HostDeleted):
        client.poll("boot", [], [])
    client.close()
    assert len(told) == 2 and told[0].code == "host_deleted"


def test_systemd_does_not_restart_a_deleted_hosts_agent():
    for path in ("install/restic-manager-agent.service", "install/install.sh"):
        text = (REPO_ROOT / path).read_text()
        assert re.search(rf"^RestartPreventExitStatus={EXIT_HOST_DELETED}$", text, re.M), path
