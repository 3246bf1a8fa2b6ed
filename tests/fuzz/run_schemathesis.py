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
(``DELETE /tokens/{id}``), changing and deleting users run last, so the run cannot revoke
its own token or disable its own user half-way and turn the rest into 401s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.e2e.processes import (  # noqa: E402
    AgentProcess,
    Api,
    ProcessError,
    Server,
    clean_env,
)

PASSWORD = "fuzzing is fun, really"
LEFT_OUT = ("stream_job",)  # endless by design for a running job (see the docstring)
# Run after everything else: they can take the fuzzer's own access away (revoke its token;
# disable, demote or delete its user once the fuzzer has invited a second admin), or delete
# the seeded host everything else is fuzzed on (should it ever guess its name).
LAST = ("delete_host", "update_user", "delete_user", "revoke_token")


def log(message: str) -> None:
    print(f"[fuzz] {message}", flush=True)


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


def fuzz_server(workdir: Path, database_url: str | None) -> Server:
    settings = {"RM_DATABASE_URL": database_url} if database_url else {}
    env = clean_env(
        RM_DATA_DIR=str(workdir / "data"),
        # Short polls and a short offline window: once the agent stops after seeding,
        # its host is offline within seconds, so nothing the fuzzer queues runs here.
        RM_POLL_WAIT_SECONDS="1",
        RM_OFFLINE_AFTER_SECONDS="5",
        RM_LOG_LEVEL="WARNING",
        **settings,
    )
    return Server(workdir, env)


# --- seeding ---------------------------------------------------------------------------------


def _in_days(days: int) -> str:
    return (datetime.now(timezone.utc) + timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")


def seed(server: Server, api: Api, workdir: Path, with_agent: bool) -> None:
    """Hosts, jobs, snapshots, source groups, schedules, tokens, a channel, a silence and an
    alert for ids to exist."""
    source = workdir / "source"
    (source / "etc").mkdir(parents=True)
    for number in range(20):
        (source / "etc" / f"file{number}.conf").write_text(f"setting = {number}\n" * 20)
    enrollment = api.post(
        "/enrollment-tokens",
        {
            "hostname": "fuzz-host",
            "repo_url": str(workdir / "repo"),
            "repo_password": "fuzz repository password",
            "paths": [str(source)],
        },
    )
    api.post("/enrollment-tokens", {"repo_url": "/srv/restic/spare", "repo_password": "spare"})
    for name in ("spare one", "spare two", "spare three"):
        api.post("/tokens", {"name": name})
    # A channel whose deliveries fail (nothing listens on port 9 here): alerts, channels and
    # delivery logs have rows to fuzz, and the sender's failures must stay quiet and 5xx-free.
    api.post(
        "/channels",
        {
            "name": "fuzz hook",
            "kind": "webhook",
            "config": {"url": "http://127.0.0.1:9/hook", "secret": "fuzzing secret 0123456789"},
            "min_severity": "info",
        },
    )
    api.post(
        "/silences",
        {"rule": "backup_warning", "reason": "fuzzing", "ends_at": _in_days(300)},
    )
    if not with_agent:
        log("restic not found: no agent, so no host (hosts, jobs and snapshots stay empty)")
        return
    # The real agent from this checkout; hooks and restores refused by its own config.
    agent = AgentProcess(workdir / "agent", workdir / "agent.log")
    agent.enroll(server.url, enrollment["token"])
    agent.configure(allow_hooks="false", restore_paths="")
    host_id = api.get("/hosts").json()["items"][0]["id"]
    agent.start()
    try:
        api.wait_repo_ready(host_id, timeout=120)
        finished = api.wait_job(api.run(host_id, "backup"), timeout=180)
        log(f"seed backup: {finished['status']} {finished.get('summary') or ''}".rstrip())
        api.post(
            f"/hosts/{host_id}/source-groups",
            {"name": "logs", "includes": [str(source)], "retention": {"keep_daily": 7}},
        )
        api.post(
            f"/hosts/{host_id}/schedules",
            {"name": "nightly", "cron": "30 2 * * *", "source_groups": ["default", "logs"]},
        )
        api.call("PUT", f"/hosts/{host_id}/bandwidth", {"upload_kib": 1000, "download_kib": None})
        # A backup of a path that does not exist fails: a backup_failed alert to fuzz.
        api.post(
            f"/hosts/{host_id}/source-groups",
            {"name": "gone", "includes": [str(workdir / "does-not-exist")]},
        )
        failed = api.wait_job(api.run(host_id, "backup", {"group": "gone"}), timeout=180)
        log(f"seed failing backup: {failed['status']}")
    finally:
        agent.stop_or_kill()
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
        for operation_id in LAST:
            command += ["--include-operation-id", operation_id]
    else:
        for operation_id in (*LEFT_OUT, *LAST):
            command += ["--exclude-operation-id", operation_id]
    log(f"schemathesis ({', '.join(LAST) if only_last else 'every other operation'})")
    try:
        return subprocess.run(command, cwd=report.parent, timeout=args.timeout).returncode
    except subprocess.TimeoutExpired:
        log(f"schemathesis did not finish within {args.timeout} s")
        return 1


def run(args, database_url: str | None) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="rm-fuzz-"))
    server = fuzz_server(workdir, database_url)
    log(f"database: {'PostgreSQL' if database_url else 'SQLite'}; work dir {workdir}")
    try:
        server.cli("db", "upgrade", timeout=120)
        server.start(timeout=60)
        token = server.admin_token(PASSWORD, username="fuzzer", name="schemathesis")
        api = Api(server, token, timeout=30)
        seed(server, api, workdir, with_agent=shutil.which("restic") is not None)
        status = schemathesis(server, token, args, workdir / "junit.xml", only_last=False)
        last = schemathesis(server, token, args, workdir / "junit-revoke.xml", only_last=True)
        server.stop_or_kill()
        errors = [
            line
            for line in server.log().splitlines()
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
    except ProcessError as error:
        log(f"setting up failed: {error} (see {workdir})")
        return 1
    finally:
        server.stop_or_kill()


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
