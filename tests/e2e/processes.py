"""Real processes for end-to-end tests: `restic-manager serve` and the agent."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from agent.cli import EXIT_HOST_DELETED

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


class ProcessError(AssertionError):
    """A process did not come up, or a command or an API call failed; the message says what.

    An AssertionError, so a test shows it as a failure; the scripts (tests/fuzz,
    tools/screenshots.py) catch it and print it."""


def wait_until(check, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
        # Not up yet, or busy (ConnectionRefusedError: a raw http.client check; a server that
        # is stopping instead fails the caller's own liveness assertion on the next try).
        except (requests.ConnectionError, requests.Timeout, ConnectionRefusedError):
            last = None
        if last:
            return last
        time.sleep(interval)
    raise ProcessError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def require_restic() -> str:
    """The restic binary; in CI (RM_REQUIRE_RESTIC=1) its absence fails the test."""
    import pytest

    path = shutil.which("restic")
    if path is None:
        if os.environ.get("RM_REQUIRE_RESTIC") == "1":
            pytest.fail("restic is not installed (apt-get install restic)")
        pytest.skip("restic is not installed; set RM_REQUIRE_RESTIC=1 to make this fail")
    return path


class Child:
    """A long-running child of this checkout writing to ``log_path``.

    With ``own_group`` it leads a process group of its own and its signals reach its
    children too (restic under the agent, gunicorn's workers)."""

    stop_timeout = 40.0

    def __init__(self, log_path: Path, env: dict, own_group: bool = False):
        self.log_path = log_path
        self.env = env
        self.own_group = own_group
        self.process: subprocess.Popen | None = None

    def _spawn(self, argv: list) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=ROOT,
                start_new_session=self.own_group,
            )

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, number: int) -> None:
        if not self.running():
            return
        if self.own_group:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, number)
        else:
            self.process.send_signal(number)

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM, as systemd sends it; its exit status (None if it never started)."""
        if self.process is None:
            return None
        self.signal(signal.SIGTERM)
        return self.process.wait(timeout=self.stop_timeout if timeout is None else timeout)

    def stop_or_kill(self, timeout: float | None = None) -> None:
        """stop(), and SIGKILL if it has not ended within the timeout."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.stop(timeout)
        self.kill()

    def kill(self) -> None:
        if self.running():
            self.signal(signal.SIGKILL)
            self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.log().splitlines()[-lines:])


class Server(Child):
    """`restic-manager serve` on a fixed port; stop() and start() keep port and data.

    Its own process group by default: kill() then reaches gunicorn's worker too. Killing
    only the master left the worker running for seconds, still connected to the database,
    and the next test's TRUNCATE deadlocked against it on PostgreSQL."""

    def __init__(self, tmp_path: Path, env: dict, own_group: bool = True):
        super().__init__(tmp_path / "server.log", env, own_group)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> None:
        self._spawn([sys.executable, "-m", "app.cli", "serve", "--bind", f"127.0.0.1:{self.port}"])

        def ready():
            if self.process.poll() is not None:
                raise ProcessError(
                    f"restic-manager serve exited ({self.process.returncode}):\n{self.tail()}"
                )
            return requests.get(f"{self.url}/readyz", timeout=2).status_code == 200

        wait_until(ready, timeout, "the server to be ready")

    def cli(self, *args: str, stdin: str = "", timeout: float = 60) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "app.cli", *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env,
            cwd=ROOT,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise ProcessError(
                f"restic-manager {args[0]} failed ({result.returncode}): {result.stderr.strip()}"
            )
        return result.stdout

    def admin_token(self, password: str, username: str = "admin", name: str = "e2e") -> str:
        """Create an administrator and mint a personal access token for it (the CLI way)."""
        self.cli("create-admin", "--username", username, "--password-stdin", stdin=password)
        return self.cli("create-token", "--user", username, "--name", name).strip()


class Api:
    """``/api/v1`` with a bearer token; asserts the status it expects."""

    def __init__(self, server: Server, token: str, timeout: float = 10):
        self.base = f"{server.url}/api/v1"
        self.timeout = timeout
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"
        # gunicorn closes a keep-alive connection idle for 2 s; on a busy machine that close
        # can come just as the next request goes out on it ("Remote end closed connection
        # without response", CI on 2026-12-05). Browsers and curl send an idempotent request
        # again on a new connection then; so does this client (never a POST).
        retry = Retry(total=2, connect=2, read=2, status=0, other=0, raise_on_status=False)
        self.session.mount("http://", HTTPAdapter(max_retries=retry))

    def call(self, method: str, path: str, body=None, expect: int = 200) -> dict:
        """The answer's JSON ({} when empty); any other status than ``expect`` fails."""
        response = self.session.request(method, self.base + path, json=body, timeout=self.timeout)
        if response.status_code != expect:
            raise ProcessError(
                f"{method} {path} answered {response.status_code}: {response.text[:500]}"
            )
        return response.json() if response.content else {}

    def get(self, path: str, **kwargs):
        response = self.session.get(self.base + path, timeout=self.timeout, **kwargs)
        if response.status_code != 200:
            raise ProcessError(f"GET {path} answered {response.status_code}: {response.text}")
        return response

    def post(self, path: str, body: dict, expect: int = 201) -> dict:
        return self.call("POST", path, body, expect)

    def run(self, host_id: int, kind: str, params: dict | None = None) -> int:
        return self.post(f"/hosts/{host_id}/jobs", {"kind": kind, "params": params or {}})["id"]

    def wait_job(self, job_id: int, timeout: float = 120) -> dict:
        def finished():
            job = self.get(f"/jobs/{job_id}").json()
            return job if job["finished_at"] else None

        return wait_until(finished, timeout, f"job {job_id} to finish", interval=0.25)

    def wait_repo_ready(self, host_id: int, timeout: float = 90) -> dict:
        """The host once its agent has initialised (or opened) its repository."""

        def ready():
            host = self.get(f"/hosts/{host_id}").json()
            return host if host["repo_status"] == "ready" else None

        return wait_until(ready, timeout, f"host {host_id}'s repository to be ready", 0.25)


class AgentProcess(Child):
    """The agent from this checkout (`python -m agent`) with its own home directory."""

    stop_timeout = 60.0

    def __init__(self, home: Path, log_path: Path, own_group: bool = False, **env: str):
        super().__init__(log_path, clean_env(RM_AGENT_START_DELAY="0", **env), own_group)
        self.home = home

    def enroll(self, server_url: str, token: str) -> None:
        """Enroll with ``token`` (passed on stdin, as an operator would, not in argv)."""
        command = [sys.executable, "-m", "agent", "--home", str(self.home), "enroll"]
        command.extend(["--server", server_url, "--token", "-"])
        result = subprocess.run(
            command,
            input=token,
            capture_output=True,
            text=True,
            env=self.env,
            cwd=ROOT,
            timeout=60,
        )
        if result.returncode != 0:
            raise ProcessError(f"agent enroll failed: {result.stderr.strip()}")

    def configure(self, **settings: str) -> None:
        """Set ``key = value`` lines of the enrolled agent's agent.conf."""
        config = self.home / "agent.conf"
        lines = config.read_text().splitlines()
        for key, value in settings.items():
            found = [n for n, line in enumerate(lines) if line.split("=")[0].strip() == key]
            if not found:
                raise ProcessError(f"agent.conf has no {key} setting")
            for number in found:
                lines[number] = f"{key} = {value}".rstrip()
        config.write_text("\n".join(lines) + "\n")

    def start(self) -> None:
        self._spawn([sys.executable, "-m", "agent", "--home", str(self.home), "run"])


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


def enroll_agent(
    api: Api,
    server: Server,
    *,
    hostname: str,
    repo: Path,
    repo_password: str,
    home: Path,
    log_path: Path,
    paths: tuple[str, ...] = ("/etc",),
    **env: str,
) -> AgentProcess:
    """An agent enrolled as ``hostname`` (the admin mints the token); not started yet."""
    token = api.post(
        "/enrollment-tokens",
        {
            "hostname": hostname,
            "repo_url": str(repo),
            "repo_password": repo_password,
            "paths": list(paths),
        },
    )["token"]
    agent = AgentProcess(home, log_path, **env)
    agent.enroll(server.url, token)
    return agent


def wait_stopped_for_deletion(agent: AgentProcess, hostname: str, timeout: float = 15) -> str:
    """The agent of a deleted host exits on its own with status 4, its log saying why;
    returns the log."""
    status = wait_until(lambda: agent.process.poll(), timeout, "the agent to exit", interval=0.2)
    log = agent.log()
    assert status == EXIT_HOST_DELETED == 4, log[-3000:]
    lines = [line for line in log.splitlines() if "this host was deleted" in line]
    assert len(lines) == 1, log[-3000:]
    assert f"This host ({hostname}) was deleted on the server" in lines[0]
    assert "stopping" in lines[0] and "re-enroll" in lines[0]
    return log


class OidcProvider(Child):
    """A real OpenID provider (``python -m oidc_provider_mock``) on loopback; who signs in
    and with which claims is set through its ``PUT /users/<sub>``."""

    def __init__(self, tmp_path: Path):
        super().__init__(tmp_path / "oidc-provider.log", clean_env())
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20) -> None:
        argv = [sys.executable, "-W", "ignore", "-m", "oidc_provider_mock"]
        self._spawn([*argv, "--host", "127.0.0.1", "--port", str(self.port)])

        def ready():
            if self.process.poll() is not None:
                raise ProcessError(f"the OIDC provider exited:\n{self.tail()}")
            url = f"{self.issuer}/.well-known/openid-configuration"
            return requests.get(url, timeout=2).status_code == 200

        wait_until(ready, timeout, "the OIDC provider to be ready")

    def set_claims(self, subject: str, claims: dict) -> None:
        requests.put(f"{self.issuer}/users/{subject}", json=claims, timeout=5).raise_for_status()
