"""Issue 15 "done when": a decommissioned host is deleted and its agent stops. Real
processes: `restic-manager serve`, the agent from this checkout with real restic; the host
is deleted through the API while the agent's long poll is parked; the agent says why in
its log and exits with the status systemd does not restart (4); the hostname enrolls
again."""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.e2e.processes import (
    AgentProcess,
    Api,
    enroll_agent,
    require_restic,
    wait_stopped_for_deletion,
    wait_until,
)

REPO_PASSWORD = "e2e-Repo-Password-delete-5c1"
ADMIN_PASSWORD = "admin password for e2e"


@pytest.fixture
def restic_repo(tmp_path):
    repo = tmp_path / "repo"
    subprocess.run(
        [require_restic(), "init", "--repo", str(repo)],
        env={"RESTIC_PASSWORD": REPO_PASSWORD, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        check=True,
        timeout=60,
    )
    return repo


def _enroll(api: Api, server, restic_repo, home, log_path) -> AgentProcess:
    return enroll_agent(
        api,
        server,
        hostname="e2e-web-1",
        repo=restic_repo,
        repo_password=REPO_PASSWORD,
        home=home,
        log_path=log_path,
    )


def test_a_deleted_hosts_agent_says_why_and_exits(start_server, restic_repo, tmp_path):
    server = start_server(RM_OFFLINE_AFTER_SECONDS="6", RM_POLL_WAIT_SECONDS="5")
    api = Api(server, server.admin_token(password=ADMIN_PASSWORD))
    agent = _enroll(api, server, restic_repo, tmp_path / "agent-home", tmp_path / "agent.log")
    agent.start()
    try:
        host_id = api.get("/hosts").json()["items"][0]["id"]
        wait_until(lambda: api.get(f"/hosts/{host_id}").json()["status"] == "online", 20, "online")
        time.sleep(1)  # the agent's next long poll is parked on the server

        started = time.monotonic()
        api.call("DELETE", f"/hosts/{host_id}", {"confirm_hostname": "e2e-web-1"}, expect=204)
        log = wait_stopped_for_deletion(agent, "e2e-web-1", timeout=15)
        assert time.monotonic() - started < 15
    finally:
        if agent.running():
            agent.stop_or_kill(10)
    assert REPO_PASSWORD not in log
    assert api.get("/hosts").json()["items"] == []
    api.call("GET", f"/hosts/{host_id}", expect=404)

    # the hostname is free again: a new enrollment under it works and comes online
    again = _enroll(api, server, restic_repo, tmp_path / "agent-home-2", tmp_path / "agent2.log")
    again.start()
    try:
        (host,) = api.get("/hosts").json()["items"]
        assert host["hostname"] == "e2e-web-1"
        wait_until(
            lambda: api.get(f"/hosts/{host['id']}").json()["status"] == "online", 20, "online"
        )
    finally:
        again.stop_or_kill(20)
