"""Issue "done when", with real processes: the server from `restic-manager serve`, a host
added through the API, the agent enrolled and run from the checkout with real restic; the
host turns online, a probe job runs; the server stops and comes back and the agent carries
on; the agent stops and the host turns offline. No secret appears in any log or file."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
import requests

from tests.e2e.processes import ROOT, clean_env, require_restic, wait_until

REPO_PASSWORD = "e2e-Repo-Password-7f3a9"
ADMIN_PASSWORD = "admin password for e2e"


@pytest.fixture
def restic_repo(tmp_path):
    restic = require_restic()
    repo = tmp_path / "repo"
    subprocess.run(
        [restic, "init", "--repo", str(repo)],
        env={"RESTIC_PASSWORD": REPO_PASSWORD, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        check=True,
        timeout=60,
    )
    return repo


@pytest.fixture
def server(start_server):
    return start_server(
        RM_OFFLINE_AFTER_SECONDS="4",
        RM_POLL_WAIT_SECONDS="3",
        RM_LOG_FLUSH_SECONDS="1",
    )


def _api(server, token):
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    return session


def _host(api, server, host_id):
    return api.get(f"{server.url}/api/v1/hosts/{host_id}", timeout=5).json()


def _run_job(api, server, host_id) -> dict:
    created = api.post(
        f"{server.url}/api/v1/hosts/{host_id}/jobs", json={"kind": "probe"}, timeout=5
    )
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    return wait_until(
        lambda: (
            (job := api.get(f"{server.url}/api/v1/jobs/{job_id}", timeout=5).json())["finished_at"]
            and job
        ),
        60,
        f"job {job_id} to finish",
    )


def test_enroll_run_online_probe_outage_and_offline(server, restic_repo, tmp_path):
    token = server.admin_token(password=ADMIN_PASSWORD)
    api = _api(server, token)
    minted = api.post(
        f"{server.url}/api/v1/enrollment-tokens",
        json={
            "hostname": "e2e-host",
            "repo_url": str(restic_repo),
            "repo_password": REPO_PASSWORD,
            "paths": ["/etc"],
        },
        timeout=5,
    )
    assert minted.status_code == 201, minted.text
    enroll_token = minted.json()["token"]

    home = tmp_path / "agent-home"
    agent_env = clean_env(RM_AGENT_START_DELAY="0")
    enrolled = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent",
            "--home",
            str(home),
            "enroll",
            "--server",
            server.url,
            "--token",
            enroll_token,
        ],
        capture_output=True,
        text=True,
        env=agent_env,
        cwd=ROOT,
        timeout=60,
    )
    assert enrolled.returncode == 0, enrolled.stderr
    host_id = api.get(f"{server.url}/api/v1/hosts", timeout=5).json()["items"][0]["id"]
    assert _host(api, server, host_id)["status"] == "never_seen"

    agent_log = tmp_path / "agent.log"
    with open(agent_log, "wb") as log:
        agent = subprocess.Popen(
            [sys.executable, "-m", "agent", "--home", str(home), "run"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=agent_env,
            cwd=ROOT,
        )
    try:
        started = time.monotonic()
        wait_until(
            lambda: _host(api, server, host_id)["status"] == "online", 15, "the host to turn online"
        )
        assert time.monotonic() - started < 15

        first = _run_job(api, server, host_id)
        assert first["status"] == "succeeded", first
        assert _host(api, server, host_id)["repo_status"] == "ready"

        # The server goes away for a while and comes back: the agent carries on.
        assert server.stop() == 0
        time.sleep(6)
        server.start()
        # The agent's backoff (full jitter, capped at 60 s) decides when it tries again.
        wait_until(
            lambda: _host(api, server, host_id)["status"] == "online",
            75,
            "the host to come back online",
        )
        second = _run_job(api, server, host_id)
        assert second["status"] == "succeeded", second
        again = api.get(f"{server.url}/api/v1/jobs/{first['id']}", timeout=5).json()
        assert again["log_lines"] == first["log_lines"]  # nothing doubled

        # The agent stops: the host turns offline after the threshold (4 s here).
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=30) == 0
        wait_until(
            lambda: _host(api, server, host_id)["status"] == "offline",
            15,
            "the host to turn offline",
        )
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()

    # No secret anywhere: server log, agent log, the agent's home (sealed files included).
    haystacks = {"server log": server.log(), "agent log": agent_log.read_text(errors="replace")}
    for path in home.rglob("*"):
        if path.is_file():
            haystacks[str(path)] = path.read_bytes().decode("latin-1")
    for where, text in haystacks.items():
        assert REPO_PASSWORD not in text, f"repository password leaked into {where}"
        assert enroll_token not in text, f"enrollment token leaked into {where}"
    import json

    agent_token = json.loads((home / "state.json").read_text())["agent_token"]
    for where in ("server log", "agent log"):
        assert agent_token not in haystacks[where], f"agent token leaked into {where}"
