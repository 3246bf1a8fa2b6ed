"""Real processes for end-to-end tests: `restic-manager serve` and the agent."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def clean_env(**extra: str) -> dict:
    env = {key: value for key, value in os.environ.items() if not key.startswith("RM_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def wait_until(check, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (requests.ConnectionError, requests.Timeout):  # not up yet, or busy
            last = None
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def require_restic() -> str:
    """The restic binary; in CI (RM_REQUIRE_RESTIC=1) its absence fails the test."""
    import pytest

    path = shutil.which("restic")
    if path is None:
        if os.environ.get("RM_REQUIRE_RESTIC") == "1":
            pytest.fail("restic is not installed (apt-get install restic)")
        pytest.skip("restic is not installed; set RM_REQUIRE_RESTIC=1 to make this fail")
    return path


class Server:
    """`restic-manager serve` on a fixed port; stop() and start() keep port and data."""

    def __init__(self, tmp_path: Path, env: dict):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp_path / "server.log"
        self.env = env
        self.process = None

    def start(self, timeout: float = 30) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "serve", "--bind", f"127.0.0.1:{self.port}"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=ROOT,
            )
        wait_until(
            lambda: requests.get(f"{self.url}/readyz", timeout=2).status_code == 200,
            timeout,
            "the server to be ready",
        )

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=40)

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def cli(self, *args: str, stdin: str = "") -> str:
        result = subprocess.run(
            [sys.executable, "-m", "app.cli", *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env,
            cwd=ROOT,
            timeout=60,
            check=True,
        )
        return result.stdout

    def admin_token(self, password: str, username: str = "admin") -> str:
        """Create an administrator and mint a personal access token for it (the CLI way)."""
        self.cli("create-admin", "--username", username, "--password-stdin", stdin=password)
        return self.cli("create-token", "--user", username, "--name", "e2e").strip()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class Api:
    """``/api/v1`` with a bearer token; asserts the status it expects."""

    def __init__(self, server: Server, token: str):
        self.base = f"{server.url}/api/v1"
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"

    def get(self, path: str, **kwargs):
        response = self.session.get(self.base + path, timeout=10, **kwargs)
        assert response.status_code == 200, response.text
        return response

    def post(self, path: str, body: dict, expect: int = 201) -> dict:
        response = self.session.post(self.base + path, json=body, timeout=10)
        assert response.status_code == expect, response.text
        return response.json()

    def run(self, host_id: int, kind: str, params: dict | None = None) -> int:
        return self.post(f"/hosts/{host_id}/jobs", {"kind": kind, "params": params or {}})["id"]

    def wait_job(self, job_id: int, timeout: float = 120) -> dict:
        def finished():
            job = self.get(f"/jobs/{job_id}").json()
            return job if job["finished_at"] else None

        return wait_until(finished, timeout, f"job {job_id} to finish", interval=0.25)


class AgentProcess:
    """The agent from this checkout (`python -m agent`) with its own home directory."""

    def __init__(self, home: Path, log_path: Path, **env: str):
        self.home = home
        self.log_path = log_path
        self.env = clean_env(RM_AGENT_START_DELAY="0", **env)
        self.process = None

    def enroll(self, server_url: str, token: str) -> None:
        command = [sys.executable, "-m", "agent", "--home", str(self.home), "enroll"]
        command.extend(["--server", server_url, "--token", token])
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            env=self.env,
            cwd=ROOT,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "agent", "--home", str(self.home), "run"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=ROOT,
            )

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def write_tree(root: Path, files: int, size: int = 512, random_bytes: bool = False) -> Path:
    """``files`` files of ``size`` bytes spread over 100-file directories under ``root``."""
    for number in range(files):
        directory = root / f"d{number // 100:04d}"
        if number % 100 == 0:
            directory.mkdir(parents=True, exist_ok=True)
        content = (
            os.urandom(size)
            if random_bytes
            else (f"file {number}\n" * (size // 10 + 1)).encode()[:size]
        )
        (directory / f"f{number:06d}.dat").write_bytes(content)
    return root


def restic_snapshots(repo: Path, password: str) -> list:
    """``restic snapshots --json`` run directly (what the tests compare the API with)."""
    import json

    output = subprocess.run(
        [require_restic(), "--no-lock", "snapshots", "--json"],
        env={"RESTIC_REPOSITORY": str(repo), "RESTIC_PASSWORD": password, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    return json.loads(output)
