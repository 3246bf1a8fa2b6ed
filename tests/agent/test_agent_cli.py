"""The command line: enroll, run, status, --version, and the exit statuses."""

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_agent_server import AGENT_TOKEN, wait_for

from agent import __version__
from agent.cli import main
from agent.config import load_config

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"restic-manager-agent {__version__}"


def test_enroll_writes_config_and_private_state(
    fake_server, tmp_path, capsys, fake_restic, monkeypatch
):
    monkeypatch.setenv("PATH", f"{fake_restic.path.parent}{os.pathsep}{os.environ['PATH']}")
    home = tmp_path / "agent-home"
    status = main(
        [
            "--home",
            str(home),
            "enroll",
            "--server",
            fake_server.url + "/",
            "--token",
            "rme_enroll-secret",
        ]
    )
    assert status == 0
    out = capsys.readouterr().out
    assert out.strip() == (
        f"enrolled as host 7; start the agent with: restic-manager-agent --home {home} run"
    )
    (request,) = fake_server.enrolls
    assert request["token"] == "rme_enroll-secret"
    assert request["protocol_version"] == 1 and request["agent_version"] == __version__
    assert request["restic_version"] == "0.14.0"
    assert {"hostname", "os", "arch"} <= set(request)
    assert load_config(home / "agent.conf").server_url == fake_server.url
    state = json.loads((home / "state.json").read_text())
    assert state["host_id"] == 7 and state["agent_token"] == AGENT_TOKEN
    assert len(state["secrets_key"]) == 44 and state["settings"]["poll_wait_seconds"] == 1
    for name in ("state.json", "agent.conf"):
        assert stat.S_IMODE((home / name).stat().st_mode) == 0o600
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    for path in home.iterdir():
        assert b"rme_enroll-secret" not in path.read_bytes()

    # A second enroll would overwrite the identity: it needs --force.
    again = main(["--home", str(home), "enroll", "--server", fake_server.url, "--token", "t"])
    assert again == 1
    assert "--force" in capsys.readouterr().err


def test_refused_token_prints_the_servers_message(fake_server, tmp_path, capsys):
    fake_server.enroll_answer = (
        409,
        {
            "error": "token_used",
            "message": "This enrollment token was already used. Mint a new one.",
        },
    )
    status = main(
        [
            "--home",
            str(tmp_path / "h"),
            "enroll",
            "--server",
            fake_server.url,
            "--token",
            "rme_used",
        ]
    )
    assert status == 2
    assert "This enrollment token was already used. Mint a new one." in capsys.readouterr().err
    assert not (tmp_path / "h" / "state.json").exists()


def test_unreachable_server_on_enroll_is_a_plain_failure(tmp_path, capsys):
    status = main(
        [
            "--home",
            str(tmp_path / "h"),
            "enroll",
            "--server",
            "http://127.0.0.1:9",
            "--token",
            "rme_x",
        ]
    )
    assert status == 1
    assert "cannot reach" in capsys.readouterr().err


def test_run_exits_3_with_the_message_when_the_protocol_is_too_old(fake_server, agent_home, capsys):
    fake_server.hello_answer = (
        426,
        {"error": "protocol_too_old", "min_protocol": 2, "message": "Upgrade the agent to 0.2."},
    )
    assert main(["--home", str(agent_home), "run"]) == 3
    assert capsys.readouterr().err.strip().endswith("Upgrade the agent to 0.2.")


def test_status_before_enrollment(tmp_path, capsys):
    assert main(["--home", str(tmp_path / "nothing"), "status"]) == 1
    assert "not enrolled" in capsys.readouterr().out


def test_run_and_status_in_two_processes(fake_server, agent_home, fake_restic, capsys):
    env = dict(os.environ, RM_AGENT_START_DELAY="0", PYTHONPATH=str(REPO_ROOT))
    env["PATH"] = f"{fake_restic.path.parent}{os.pathsep}{env['PATH']}"
    process = subprocess.Popen(
        [sys.executable, "-m", "agent", "--home", str(agent_home), "run"],
        cwd=str(REPO_ROOT),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: fake_server.polls, timeout=30)

        def connected():
            assert main(["--home", str(agent_home), "status", "--json"]) == 0
            report = json.loads(capsys.readouterr().out)
            return report if report["connection"] == "connected" else None

        report = wait_for(connected, timeout=15)
        assert report["agent_running"] and report["pid"] == process.pid
        assert report["last_poll_ok_at"] and report["spool"]["events"] == 0
        assert main(["--home", str(agent_home), "status"]) == 0
        text = capsys.readouterr().out
        assert "connection:           connected" in text and "jobs:                 none" in text
    finally:
        process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        _, stderr = process.communicate(timeout=20)
    assert process.returncode == 0, stderr.decode()
    assert time.monotonic() - started < 10
    assert main(["--home", str(agent_home), "status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["connection"] == "not running"
