#!/usr/bin/env python3
"""Fuzz every /api/v1 operation of a real server with schemathesis.

    .venv/bin/python tests/fuzz/run_schemathesis.py                  # SQLite in a temp dir
    .venv/bin/python tests/fuzz/run_schemathesis.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres

What it does: starts ``restic-manager serve`` on a free 127.0.0.1 port with a temporary
RM_DATA_DIR (and, for PostgreSQL, a fresh database it creates next to the one named and
drops afterwards); creates an admin and personal access tokens with the CLI; seeds data
through the API and a real agent (enrollment, a repository, a backup, so hosts, jobs,
snapshots, source groups and schedules exist); stops the agent, so nothing the fuzzer
queues runs on this machine; then runs ``schemathesis run <url>/api/v1/openapi.json`` with
the bearer token over every operation, checking that no answer is a 5xx and every answer
matches the document. Exit status 0 only when schemathesis found nothing.

Two operations get special care: the live log (``GET /jobs/{id}/stream``) answers an
endless event stream by design for a job that has not ended, so it is left out (its
conformance is tested in tests/test_openapi.py); revoking a token
(``DELETE /tokens/{id}``) runs last and alone, so the run cannot revoke its own token
half-way and turn the rest into 401s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import requests

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "fuzzing is fun, really"
LEFT_OUT = ("stream_job",)  # endless by design for a running job (see the docstring)
LAST = "revoke_token"


def log(message: str) -> None:
    print(f"[fuzz] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = check()
        except requests.RequestException:
            result = None
        if result:
            return result
        time.sleep(0.25)
    raise SystemExit(f"[fuzz] timed out after {timeout:.0f} s waiting for {what}")


# --- the database --------------------------------------------------------------------------


class FreshPostgres:
    """A new database beside the one ``url`` names, dropped at the end."""

    def __init__(self, url: str):
        import sqlalchemy as sa

        self.sa = sa
        parts = urlsplit(url)
        self.name = f"rm_fuzz_{os.getpid()}_{int(time.time())}"
        self.admin_url = url
        self.url = urlunsplit(parts._replace(path=f"/{self.name}"))

    def __enter__(self) -> str:
        self._run(f'CREATE DATABASE "{self.name}"')
        return self.url

    def __exit__(self, *exc) -> None:
        self._run(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    def _run(self, statement: str) -> None:
        engine = self.sa.create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            connection.execute(self.sa.text(statement))
        engine.dispose()


# --- processes -----------------------------------------------------------------------------


class Server:
    def __init__(self, workdir: Path, database_url: str | None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "server.log"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RM_")}
        self.env.update(
            RM_DATA_DIR=str(workdir / "data"),
            # Short polls and a short offline window: once the agent stops after seeding,
            # its host is offline within seconds, so nothing the fuzzer queues runs here.
            RM_POLL_WAIT_SECONDS="1",
            RM_OFFLINE_AFTER_SECONDS="5",
            RM_LOG_LEVEL="WARNING",
            PYTHONUNBUFFERED="1",
        )
        if database_url:
            self.env["RM_DATABASE_URL"] = database_url
        self.process: subprocess.Popen | None = None

    def cli(self, *args: str, stdin: str = "") -> str:
        result = subprocess.run(
            [sys.executable, "-m", "app.cli", *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env,
            cwd=ROOT,
            timeout=120,
        )
        if result.returncode != 0:
            raise SystemExit(f"[fuzz] restic-manager {args[0]} failed: {result.stderr.strip()}")
        return result.stdout.strip()

    def start(self) -> None:
        with open(self.log_path, "ab") as output:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "serve", "--bind", f"127.0.0.1:{self.port}"],
                stdout=output,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=ROOT,
            )
        wait_until(
            lambda: requests.get(f"{self.url}/readyz", timeout=2).status_code == 200,
            60,
            "the server",
        )

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class Agent:
    """The real agent from this checkout; hooks and restores refused by its own config."""

    def __init__(self, workdir: Path):
        self.home = workdir / "agent"
        self.log_path = workdir / "agent.log"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RM_")}
        self.env.update(RM_AGENT_START_DELAY="0", PYTHONUNBUFFERED="1")
        self.process: subprocess.Popen | None = None

    def enroll(self, server_url: str, token: str) -> None:
        command = [sys.executable, "-m", "agent", "--home", str(self.home), "enroll"]
        result = subprocess.run(
            [*command, "--server", server_url, "--token", token],
            capture_output=True,
            text=True,
            env=self.env,
            cwd=ROOT,
            timeout=60,
        )
        if result.returncode != 0:
            raise SystemExit(f"[fuzz] agent enroll failed: {result.stderr.strip()}")
        config = self.home / "agent.conf"
        text = config.read_text()
        text = text.replace("allow_hooks = true", "allow_hooks = false")
        text = text.replace("restore_paths = *", "restore_paths =")
        config.write_text(text)

    def start(self) -> None:
        with open(self.log_path, "ab") as output:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "agent", "--home", str(self.home), "run"],
                stdout=output,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=ROOT,
            )

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# --- seeding ---------------------------------------------------------------------------------


class Api:
    def __init__(self, server: Server, token: str):
        self.base = f"{server.url}/api/v1"
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"

    def call(self, method: str, path: str, body=None, expect: int = 200) -> dict:
        response = self.session.request(method, self.base + path, json=body, timeout=30)
        if response.status_code != expect:
            raise SystemExit(
                f"[fuzz] seeding: {method} {path} answered {response.status_code}: "
                f"{response.text[:500]}"
            )
        return response.json() if response.content else {}

    def wait_job(self, job_id: int) -> dict:
        return wait_until(
            lambda: (job := self.call("GET", f"/jobs/{job_id}"))["finished_at"] and job,
            180,
            f"job {job_id}",
        )


def seed(server: Server, api: Api, workdir: Path, with_agent: bool) -> None:
    """Hosts, jobs, snapshots, source groups, schedules and tokens for ids to exist."""
    source = workdir / "source"
    (source / "etc").mkdir(parents=True)
    for number in range(20):
        (source / "etc" / f"file{number}.conf").write_text(f"setting = {number}\n" * 20)
    enrollment = api.call(
        "POST",
        "/enrollment-tokens",
        {
            "hostname": "fuzz-host",
            "repo_url": str(workdir / "repo"),
            "repo_password": "fuzz repository password",
            "paths": [str(source)],
        },
        expect=201,
    )
    api.call(
        "POST",
        "/enrollment-tokens",
        {"repo_url": "/srv/restic/spare", "repo_password": "spare"},
        expect=201,
    )
    for name in ("spare one", "spare two", "spare three"):
        api.call("POST", "/tokens", {"name": name}, expect=201)
    if not with_agent:
        log("restic not found: no agent, so no host (hosts, jobs and snapshots stay empty)")
        return
    agent = Agent(workdir)
    agent.enroll(server.url, enrollment["token"])
    agent.start()
    try:
        host = wait_until(
            lambda: next(
                (h for h in api.call("GET", "/hosts")["items"] if h["repo_status"] == "ready"),
                None,
            ),
            120,
            "the agent's repository to be ready",
        )
        host_id = host["id"]
        backup = api.call("POST", f"/hosts/{host_id}/jobs", {"kind": "backup"}, expect=201)
        finished = api.wait_job(backup["id"])
        log(f"seed backup: {finished['status']} {finished.get('summary') or ''}".rstrip())
        api.call(
            "POST",
            f"/hosts/{host_id}/source-groups",
            {"name": "logs", "includes": [str(source)], "retention": {"keep_daily": 7}},
            expect=201,
        )
        api.call(
            "POST",
            f"/hosts/{host_id}/schedules",
            {"name": "nightly", "cron": "30 2 * * *", "source_groups": ["default", "logs"]},
            expect=201,
        )
        api.call("PUT", f"/hosts/{host_id}/bandwidth", {"upload_kib": 1000, "download_kib": None})
    finally:
        agent.stop()
    time.sleep(6)  # past RM_OFFLINE_AFTER_SECONDS: the host is offline, nothing runs here


# --- schemathesis ----------------------------------------------------------------------------


def schemathesis(server: Server, token: str, args, report: Path, only_last: bool) -> int:
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "run",
        f"{server.url}/api/v1/openapi.json",
        "--header",
        f"Authorization: Bearer {token}",
        "--checks",
        "not_a_server_error,response_schema_conformance",
        "--max-examples",
        str(args.max_examples),
        "--phases",
        "examples,coverage,fuzzing",
        "--workers",
        "1",
        "--request-timeout",
        "30",
        "--generation-with-security-parameters",
        "false",
        "--generation-database",
        "none",
        "--no-color",
        "--report",
        "junit",
        "--report-junit-path",
        str(report),
    ]
    if args.seed is not None:
        command += ["--seed", str(args.seed)]
    if only_last:
        command += ["--include-operation-id", LAST]
    else:
        for operation_id in (*LEFT_OUT, LAST):
            command += ["--exclude-operation-id", operation_id]
    log(f"schemathesis ({'revoke_token alone' if only_last else 'every other operation'})")
    try:
        return subprocess.run(command, cwd=report.parent, timeout=args.timeout).returncode
    except subprocess.TimeoutExpired:
        log(f"schemathesis did not finish within {args.timeout} s")
        return 1


def run(args, database_url: str | None) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="rm-fuzz-"))
    server = Server(workdir, database_url)
    log(f"database: {'PostgreSQL' if database_url else 'SQLite'}; work dir {workdir}")
    try:
        server.cli("db", "upgrade")
        server.start()
        server.cli("create-admin", "--username", "fuzzer", "--password-stdin", stdin=PASSWORD)
        token = server.cli("create-token", "--user", "fuzzer", "--name", "schemathesis")
        seed(server, Api(server, token), workdir, with_agent=shutil.which("restic") is not None)
        status = schemathesis(server, token, args, workdir / "junit.xml", only_last=False)
        last = schemathesis(server, token, args, workdir / "junit-revoke.xml", only_last=True)
        server.stop()
        errors = [
            line
            for line in server.log_path.read_text(errors="replace").splitlines()
            if "Traceback" in line or "unhandled error" in line
        ]
        if errors:
            log(f"the server logged {len(errors)} unhandled errors (see {server.log_path})")
        failed = status != 0 or last != 0 or bool(errors)
        if failed:
            log(f"FAILED: see the report above, {server.log_path} and {workdir}")
        else:
            log("passed: no 5xx, every answer matched the document")
        if not failed and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        return 1 if failed else 0
    finally:
        server.stop()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--database-url",
        default=os.environ.get("RM_DATABASE_URL", ""),
        help="PostgreSQL URL to create a scratch database beside (default: RM_DATABASE_URL; "
        "empty: SQLite in the work dir)",
    )
    parser.add_argument("--max-examples", type=int, default=20, help="test cases per operation")
    parser.add_argument("--seed", type=int, default=None, help="schemathesis seed (reproduce)")
    parser.add_argument("--timeout", type=int, default=420, help="seconds per schemathesis run")
    parser.add_argument("--keep", action="store_true", help="keep the work dir after a pass")
    args = parser.parse_args(argv)
    if args.database_url.startswith("postgresql"):
        with FreshPostgres(args.database_url) as url:
            return run(args, url)
    return run(args, None)


if __name__ == "__main__":
    sys.exit(main())
