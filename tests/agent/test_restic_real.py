"""The probe against a real restic and a real local repository.

Skipped when restic is not installed, unless RM_REQUIRE_RESTIC=1 (CI): then it fails.
"""

import json
import os
import subprocess
import threading

import pytest
from fake_agent_server import all_files, wait_for

from agent.facts import restic_version
from agent.runner import Runner
from agent.service import Agent
from agent.spool import Spool
from tests.agent.real_restic import RESTIC, needs_restic

PASSWORD = "real-Restic-pass-9f8e7d"

pytestmark = needs_restic()


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    root = tmp_path_factory.mktemp("restic")
    repo = root / "repo"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "RESTIC_REPOSITORY": str(repo),
        "RESTIC_PASSWORD": PASSWORD,
        "RESTIC_CACHE_DIR": str(root / "cache"),
        "HOME": str(root),
    }
    subprocess.run(
        [RESTIC, "init"], env=env, stdin=subprocess.DEVNULL, capture_output=True, check=True
    )
    return repo


def probe(tmp_path, credentials):
    spool = Spool(tmp_path / "spool", max_bytes=10**7)
    runner = Runner(spool, lambda: credentials, cache_dir=tmp_path / "cache")
    runner.prepare(1, "a")
    runner.start(1, "a", "probe", {})
    assert runner.wait_idle(timeout=60)
    events = {event["type"]: event["data"] for event in spool.pending_events()}
    return events, spool


def test_restic_version_is_detected():
    assert restic_version() and restic_version().count(".") == 2


def test_probe_of_a_real_repository_is_ready(tmp_path, repository):
    events, spool = probe(tmp_path, {"url": str(repository), "password": PASSWORD})
    assert events["repo.status"] == {"status": "ready", "reason": None}
    assert events["job.finished"]["status"] == "succeeded"
    _, records = spool.job(1).pending_batch()
    assert any('"chunker_polynomial"' in record["text"] for record in records)


def test_probe_of_a_missing_directory_is_missing(tmp_path):
    events, _ = probe(tmp_path, {"url": str(tmp_path / "no-repo-here"), "password": PASSWORD})
    assert events["repo.status"]["status"] == "missing"
    assert events["job.finished"]["status"] == "succeeded"


def test_probe_with_a_wrong_password_is_classified(tmp_path, repository):
    events, _spool = probe(tmp_path, {"url": str(repository), "password": "not-the-password"})
    assert events["repo.status"] == {
        "status": "error",
        "reason": "wrong repository password (or no matching key)",
    }
    assert events["job.finished"]["status"] == "failed"
    assert events["job.finished"]["exit_code"] in (1, 12)


def test_real_probe_through_the_agent_keeps_the_password_out_of_every_file(
    tmp_path, repository, fake_server, agent_home, caplog
):
    caplog.set_level("DEBUG")
    fake_server.queue(
        {
            "command_id": "c1",
            "type": "config.update",
            "payload": {
                "repository": {"url": str(repository), "username": "", "password": PASSWORD}
            },
        }
    )
    fake_server.queue(
        {
            "command_id": "c2",
            "type": "job.run",
            "job_id": 77,
            "attempt_id": "att",
            "payload": {"kind": "probe", "params": {}},
        }
    )
    agent = Agent(agent_home)
    stop = threading.Event()
    thread = threading.Thread(target=agent.run_forever, args=(stop,), daemon=True)
    thread.start()
    try:
        (finished,) = wait_for(lambda: fake_server.events_of(77, "job.finished"), timeout=60)
        assert finished["data"]["status"] == "succeeded"
        assert fake_server.events_of(77, "repo.status")[0]["data"]["status"] == "ready"
        wait_for(lambda: not (agent_home / "spool" / "jobs" / "77").exists())
    finally:
        stop.set()
        thread.join(15)
    for path in all_files(agent_home):
        assert PASSWORD.encode() not in path.read_bytes(), path
    assert PASSWORD not in caplog.text
    assert PASSWORD not in json.dumps(fake_server.logs) + json.dumps(fake_server.events_of())
