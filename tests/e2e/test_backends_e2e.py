"""Issue 16 "done when", with real parts: a real `restic-manager serve`, real agents from this
checkout running restic 0.14, and real repository servers on loopback (tests/backend_servers.py:
moto_server with IAM authentication for S3, rclone's REST server with an htpasswd file, OpenSSH's
sshd for SFTP).

Each host is added through ``POST /api/v1/enrollment-tokens`` with its backend's credentials in
``repo_env`` only; its agent enrolls, the bring-up (probe → missing → init) creates the bucket or
directory and the repository, and backups, snapshots, forget, prune and restores run through the
API. Test connection tells a wrong key apart from a missing bucket; wrong credentials saved show
restic's reason on the host and fixing them brings it back. No secret (S3 secret key, REST
password, SFTP private key, repository passwords) appears in the server's or the agents' logs,
any job log, any API answer, any audit row, the argv of any restic or ssh process, or in clear in
the agents' files; the agents' temporary key files are gone after each run.

The same "done when" is also driven through the web UI (test_done_when_through_the_ui): the
admin signs in, adds an S3 host and a REST host with basic auth from the Add host form, enrolls
their agents with the token the answer page shows, backs up from the host page's Run backup
form, and presses Test connection on the Repository tab; every page received joins the
secrets check.

One server and one agent per backend for the whole module (module-scoped fixtures); every test
ends with the secrets check over everything seen so far on its worker.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import threading
import time
from dataclasses import dataclass, field
from html import unescape
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
import sqlalchemy as sa

from tests.backend_servers import generate_ssh_key, rest_server, s3_server, sftp_server
from tests.conftest import fresh_database_url
from tests.e2e.processes import (
    AgentProcess,
    Api,
    Server,
    clean_env,
    require_restic,
    wait_until,
)

# Not for the agent-only Python 3.9 run (it never collects tests/e2e; the mark says why anyway).
pytestmark = [pytest.mark.e2e, pytest.mark.server]

ADMIN_PASSWORD = "admin password for backends e2e"
REST_PASSWORD = "e2e-REST-Secret-5b81d2c7"  # the REST server's (rclone --htpasswd)
REPO_PASSWORDS = {
    "s3": "e2e-S3-Repo-Pass-a41f09",
    "rest": "e2e-REST-Repo-Pass-77c3e1",
    "sftp": "e2e-SFTP-Repo-Pass-2d9b5a",
}
BUCKET = "e2e-fleet"


# --- what the module shares --------------------------------------------------------------


class ArgvSampler(threading.Thread):
    """Every distinct command line of a ``restic`` or ``ssh`` process seen in /proc while the
    module runs (every 5 ms): what ``ps`` would show anyone on the host."""

    def __init__(self):
        super().__init__(daemon=True)
        self.seen: set[str] = set()
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as handle:
                        raw = handle.read()
                except OSError:
                    continue
                argv = raw.split(b"\0")
                if os.path.basename(argv[0]) in (b"restic", b"ssh"):
                    self.seen.add(raw.replace(b"\0", b" ").decode(errors="replace"))
            self._halt.wait(0.005)

    def stop(self) -> None:
        self._halt.set()
        self.join(5)

    def commands(self, word: str) -> list[str]:
        return [line for line in self.seen if f" {word} " in f"{line} "]


@dataclass
class Host:
    name: str
    backend: str
    id: int
    agent: AgentProcess
    home: Path  # the agent's $HOME: default restore targets live under it
    data: Path  # what the host backs up
    connection: dict  # the repository body the host was enrolled with (repo_* fields)


@dataclass
class Stack:
    server: Server
    api: Api
    tmp: Path
    sampler: ArgvSampler
    database_url: str
    answers: list = field(default_factory=list)  # the text of every API answer received
    hosts: dict = field(default_factory=dict)  # backend -> Host
    secrets: dict = field(default_factory=dict)  # what it is -> the secret text

    def add_host(self, backend: str, connection: dict, files: dict[str, bytes]) -> Host:
        """A host added through the API with ``connection`` (repo_url, repo_env, …); its agent
        enrolls and runs; returned once its repository is ready (initialised by the bring-up)."""
        name = f"e2e-{backend}"
        root = self.tmp / name
        data = root / "data"
        for relative, content in files.items():
            path = data / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        home = root / "home"
        home.mkdir(parents=True)
        body = {
            "hostname": name,
            "repo_password": REPO_PASSWORDS[backend],
            "paths": [str(data)],
            **connection,
        }
        token = self.api.post("/enrollment-tokens", body)["token"]
        agent = AgentProcess(root / "agent-home", root / "agent.log", HOME=str(home))
        agent.enroll(self.server.url, token)
        host_id = next(
            item["id"]
            for item in self.api.get("/hosts").json()["items"]
            if item["hostname"] == name
        )
        agent.start()
        host = Host(name, backend, host_id, agent, home, data, connection)
        self.hosts[backend] = host
        try:
            self.api.wait_repo_ready(host_id, timeout=120)
        except AssertionError:
            raise AssertionError(
                f"{name}: {self.api.get(f'/hosts/{host_id}').json()}\n{agent.tail(40)}"
            ) from None
        return host


@pytest.fixture(scope="module")
def stack(tmp_path_factory, migrated_template):
    require_restic()
    tmp = tmp_path_factory.mktemp("backends-e2e")
    database_url = fresh_database_url(migrated_template, tmp)
    env = clean_env(
        RM_DATA_DIR=str(tmp / "server-data"),
        RM_DATABASE_URL=database_url,
        RM_OFFLINE_AFTER_SECONDS="60",
        RM_POLL_WAIT_SECONDS="5",
        RM_LOG_FLUSH_SECONDS="1",
        RM_RPC_WAIT_SECONDS="45",  # a repository test runs restic against the backend
    )
    server = Server(tmp, env)
    sampler = ArgvSampler()
    sampler.start()
    server.start()
    stack = Stack(server, None, tmp, sampler, database_url)
    try:
        stack.api = Api(server, server.admin_token(password=ADMIN_PASSWORD), timeout=60)
        stack.api.session.hooks["response"].append(
            lambda response, *args, **kwargs: stack.answers.append(response.text)
        )
        yield stack
    finally:
        for host in stack.hosts.values():
            host.agent.kill()
        server.kill()
        sampler.stop()


@pytest.fixture(scope="module")
def s3(stack):
    with s3_server(stack.tmp / "s3") as server:
        stack.secrets["S3 secret key"] = server.secret_key
        yield server


@pytest.fixture(scope="module")
def rest(stack):
    with rest_server(stack.tmp / "rest", password=REST_PASSWORD) as server:
        stack.secrets["REST password"] = REST_PASSWORD
        yield server


@pytest.fixture(scope="module")
def sftp(stack):
    with sftp_server(stack.tmp / "sftp") as server:
        key = server.key.read_text()
        stack.secrets["SFTP private key"] = key
        body = [line for line in key.splitlines() if line and not line.startswith("-----")]
        # The first line is openssh-key-v1's fixed header, the same in every such key.
        for number, line in enumerate(body[1:], 2):
            stack.secrets[f"SFTP private key, line {number}"] = line
        yield server


def s3_connection(s3, bucket: str = BUCKET, secret_key: str | None = None) -> dict:
    return {
        "repo_url": s3.url(bucket, "e2e-s3"),
        "repo_env": s3.env(secret_key=secret_key),
        "repo_options": ["s3.bucket-lookup=path"],
    }


def rest_connection(rest, password: str = REST_PASSWORD) -> dict:
    """The user in repo_username, the password only in repo_env (never in the URL)."""
    return {
        "repo_url": rest.url("e2e-rest"),
        "repo_username": rest.user,
        "repo_env": {"RESTIC_REST_PASSWORD": password},
    }


def sftp_connection(sftp, key: Path | None = None) -> dict:
    """The private key and known_hosts only in repo_env; the port in the URL (the agent builds
    the ssh command from the URL)."""
    return {
        "repo_url": f"sftp://{sftp.user}@127.0.0.1:{sftp.port}/{sftp.data / 'e2e-sftp'}",
        "repo_env": {
            "SFTP_PRIVATE_KEY": (key or sftp.key).read_text(),
            "SFTP_KNOWN_HOSTS": sftp.known_hosts.read_text(),
        },
    }


FILES = {
    "etc/app/config.ini": b"[main]\nanswer = 42\n",
    "notes [draft].md": b"# notes\n",
}


@pytest.fixture(scope="module")
def s3_host(stack, s3):
    assert BUCKET not in [b["Name"] for b in s3.client().list_buckets()["Buckets"]]
    # A larger file keeps restic busy long enough for the /proc sampler to see its argv.
    files = {**FILES, "big.bin": os.urandom(40_000_000)}
    return stack.add_host("s3", s3_connection(s3), files)


@pytest.fixture(scope="module")
def rest_host(stack, rest):
    return stack.add_host("rest", rest_connection(rest), {**FILES, "blob.bin": os.urandom(300_000)})


@pytest.fixture(scope="module")
def sftp_host(stack, sftp):
    return stack.add_host("sftp", sftp_connection(sftp), {**FILES, "blob.bin": os.urandom(300_000)})


# --- helpers -----------------------------------------------------------------------------


def run_job(stack: Stack, host: Host, kind: str, params: dict | None = None) -> dict:
    job = stack.api.wait_job(stack.api.run(host.id, kind, params), timeout=180)
    assert job["status"] == "succeeded", (job, host.agent.tail(30))
    return job


def snapshots(stack: Stack, host: Host) -> list:
    return stack.api.get(f"/hosts/{host.id}/snapshots").json()["items"]


def restore_and_compare(stack: Stack, host: Host, snapshot_id: str, relative: list[str]) -> dict:
    """Restore ``relative`` files of the host's data through the restore API into the default
    target; each one is compared byte for byte with the original."""
    paths = [str(host.data / name) for name in relative]
    created = stack.api.post(
        f"/hosts/{host.id}/restores", {"snapshot_id": snapshot_id[:8], "include": paths}
    )
    job = stack.api.wait_job(created["id"], timeout=180)
    assert job["status"] == "succeeded", (job, host.agent.tail(30))
    target = host.home / "rm-restore" / str(job["id"])
    assert job["stats"]["target"] == str(target)
    assert job["stats"]["files_restored"] == len(paths)
    for path in paths:
        copy = target / path.lstrip("/")
        assert copy.read_bytes() == Path(path).read_bytes(), copy
    return job


def job_log(stack: Stack, job_id: int) -> str:
    return stack.api.get(f"/jobs/{job_id}/log.txt").text


def assert_brought_up(stack: Stack, host: Host, missing_words: str) -> None:
    """The bring-up ran as the server's own jobs: a probe found no repository (restic's words
    in its log), then an init made it."""
    jobs = stack.api.get("/jobs", params={"host_id": host.id}).json()["items"]
    by_kind = {job["kind"]: job for job in reversed(jobs)}  # the first of each kind
    # The host may turn ready a moment before the init job's end reaches the server.
    probe, init = by_kind["probe"], stack.api.wait_job(by_kind["init"]["id"])
    assert probe["actor"]["label"] == init["actor"]["label"] == "repository bring-up"
    assert probe["id"] < init["id"] and init["status"] == "succeeded", (probe, init)
    log = job_log(stack, probe["id"])
    assert " cat config" in log and missing_words in log, log
    assert " init" in job_log(stack, init["id"])


def backup_and_restore(stack: Stack, host: Host) -> str:
    """A backup through the API; its snapshot in the API; its "$ restic" line in the job log;
    one file restored and compared. Returns the snapshot id."""
    before = {item["id"] for item in snapshots(stack, host)}
    job = run_job(stack, host, "backup")
    snapshot_id = job["stats"]["snapshot_id"]
    after = snapshots(stack, host)
    assert {item["id"] for item in after} - before == {snapshot_id}
    (made,) = [item for item in after if item["id"] == snapshot_id]
    assert made["paths"] == [str(host.data)]
    log = job_log(stack, job["id"])
    assert "$ restic" in log and " backup " in log, log[:2000]
    restore_and_compare(stack, host, snapshot_id, ["etc/app/config.ini", "notes [draft].md"])
    return snapshot_id


def repo_test(stack: Stack, host: Host, connection: dict) -> dict:
    body = {"repo_password": REPO_PASSWORDS[host.backend], **connection}
    answer = stack.api.post(f"/hosts/{host.id}/repository/test", body, expect=200)
    assert set(answer) == {"ok", "detail"}, answer
    return answer


def no_run_dirs_left(host: Host) -> None:
    """The agent's file secrets live in restic-run-* directories for one run only."""
    left = sorted(str(path) for path in host.agent.home.rglob("restic-run-*"))
    assert left == [], left


def assert_no_secret(stack: Stack) -> None:
    """No secret of any backend in anything this module saw so far."""
    haystacks = {"server log": stack.server.log()}
    for number, text in enumerate(stack.answers):
        haystacks[f"API answer #{number}"] = text
    for host in stack.hosts.values():
        haystacks[f"{host.name} agent log"] = host.agent.log()
        for root in (host.agent.home, host.home):
            for path in root.rglob("*"):
                if path.is_file():
                    haystacks[str(path)] = path.read_bytes().decode("latin-1")
    # The server's files: its data directory and, on SQLite, the database (sealed values only).
    for path in [*stack.tmp.glob("restic-manager.db*"), *(stack.tmp / "server-data").rglob("*")]:
        if path.is_file():
            haystacks[f"server file {path.name}"] = path.read_bytes().decode("latin-1")
    if stack.database_url.startswith("postgresql"):  # every row of every table, as text
        engine = sa.create_engine(stack.database_url)
        with engine.connect() as connection:
            for table in sa.inspect(connection).get_table_names():
                quoted = f'"{table}"'  # a name from the catalog
                rows = connection.execute(sa.text(f"SELECT t::text FROM {quoted} t"))  # noqa: S608
                haystacks[f"database table {table}"] = "\n".join(rows.scalars())
        engine.dispose()
        assert sum(where.startswith("database table") for where in haystacks) > 10
    # Every job's log (the .txt download and the JSON lines) and every audit row.
    api = stack.api
    for job in api.get("/jobs", params={"limit": 200}).json()["items"]:
        haystacks[f"job {job['id']} log.txt"] = job_log(stack, job["id"])
        haystacks[f"job {job['id']} log.ndjson"] = api.get(f"/jobs/{job['id']}/log.ndjson").text
    haystacks["audit.ndjson"] = api.get("/audit.ndjson").text
    for host in stack.hosts.values():
        haystacks[f"{host.name} repository"] = api.get(f"/hosts/{host.id}/repository").text
    # The command lines of every restic and ssh process seen while the module ran.
    for number, line in enumerate(sorted(stack.sampler.seen)):
        haystacks[f"argv #{number}: {line[:200]}"] = line
    secrets = {
        **stack.secrets,
        **{f"{b} repository password": p for b, p in REPO_PASSWORDS.items()},
    }
    leaks = [
        f"{what} in {where}"
        for where, text in haystacks.items()
        for what, secret in secrets.items()
        if secret in text
    ]
    assert leaks == [], leaks
    for host in stack.hosts.values():
        no_run_dirs_left(host)


# --- the tests ---------------------------------------------------------------------------


def test_s3_bring_up_backup_forget_prune_restore(stack, s3, s3_host):
    # The bring-up created the bucket and the repository under the host's prefix.
    client = s3.client()
    assert BUCKET in [b["Name"] for b in client.list_buckets()["Buckets"]]
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert "e2e-s3/config" in keys
    repository = stack.api.get(f"/hosts/{s3_host.id}/repository").json()
    assert repository["backend"] == "s3" and repository["repo_status"] == "ready"
    assert sorted(repository["repo_env_names"]) == [
        "AWS_ACCESS_KEY_ID",
        "AWS_DEFAULT_REGION",
        "AWS_SECRET_ACCESS_KEY",
    ]
    assert repository["repo_options"] == ["s3.bucket-lookup=path"]
    assert_brought_up(stack, s3_host, "The specified key does not exist.")

    first = backup_and_restore(stack, s3_host)
    # restic really ran (the sampler saw this agent's backup), with no secret in its argv.
    seen = [line for line in stack.sampler.commands("backup") if str(s3_host.data) in line]
    assert seen and all(line.startswith("restic -o s3.bucket-lookup=path ") for line in seen)
    # The big file comes back whole too.
    restore_and_compare(stack, s3_host, first, ["big.bin"])

    (s3_host.data / "etc/app/config.ini").write_bytes(b"[main]\nanswer = 43\n")
    second = run_job(stack, s3_host, "backup")["stats"]["snapshot_id"]
    assert {item["id"] for item in snapshots(stack, s3_host)} == {first, second}

    forget = run_job(stack, s3_host, "forget", {"policy": {"keep_last": 1}})
    assert forget["stats"]["kept"] == 1 and forget["stats"]["removed"] == 1, forget["stats"]
    assert [item["id"] for item in snapshots(stack, s3_host)] == [second]
    prune = run_job(stack, s3_host, "prune")
    assert "$ restic" in job_log(stack, prune["id"])
    run_job(stack, s3_host, "check")
    restore_and_compare(stack, s3_host, second, ["etc/app/config.ini", "big.bin"])
    assert_no_secret(stack)


def test_rest_with_basic_auth_password_only_in_repo_env(stack, rest, rest_host):
    # Auto-init on the REST server; the user is repo_username, the password never in the URL.
    assert (rest.data / "e2e-rest" / "config").is_file()
    repository = stack.api.get(f"/hosts/{rest_host.id}/repository").json()
    assert repository["backend"] == "rest"
    assert repository["url"] == rest.url("e2e-rest") and repository["username"] == rest.user
    assert repository["repo_env_names"] == ["RESTIC_REST_PASSWORD"]
    assert_brought_up(stack, rest_host, "does not exist")
    backup_and_restore(stack, rest_host)
    assert_no_secret(stack)


def test_sftp_with_the_key_only_in_repo_env(stack, sftp, sftp_host):
    assert (sftp.data / "e2e-sftp" / "config").is_file()
    repository = stack.api.get(f"/hosts/{sftp_host.id}/repository").json()
    assert repository["backend"] == "sftp"
    assert sorted(repository["repo_env_names"]) == ["SFTP_KNOWN_HOSTS", "SFTP_PRIVATE_KEY"]
    assert_brought_up(stack, sftp_host, "does not exist")
    backup_and_restore(stack, sftp_host)
    # The agent's "$ restic" lines name the key file, in a run directory of its home.
    backup = stack.api.get("/jobs", params={"host_id": sftp_host.id, "kind": "backup"}).json()
    log = job_log(stack, backup["items"][0]["id"])
    assert f"sftp.command=ssh -i {sftp_host.agent.home}/restic-run-" in log, log
    assert "/SFTP_PRIVATE_KEY -o IdentitiesOnly=yes" in log, log
    # restic ran ssh through the agent's sftp.command: a key file path in argv, never the key;
    # the file was in a run directory of the agent's home that is gone now.
    ssh_lines = [
        line
        for line in stack.sampler.seen
        if line.startswith("ssh ") and f" -p {sftp.port} " in line
    ]
    assert ssh_lines, sorted(stack.sampler.seen)
    run_dir = str(sftp_host.agent.home / "restic-run-")
    assert all(f"-i {run_dir}" in line for line in ssh_lines), ssh_lines
    no_run_dirs_left(sftp_host)
    # The known_hosts given was used: nothing was learnt into the agent's own file.
    assert not (sftp_host.agent.home / "ssh_known_hosts").exists()
    assert_no_secret(stack)


def test_connection_tells_wrong_credentials_from_a_missing_bucket(
    stack, s3, s3_host, rest, rest_host, sftp, sftp_host
):
    # S3: right settings, a wrong secret key, a bucket that does not exist.
    right = repo_test(stack, s3_host, s3_connection(s3))
    assert right["ok"] is True and right["detail"].startswith("repository reachable (id "), right
    wrong_secret = "e2e-Wrong-S3-Secret-0e6c4b"
    stack.secrets["wrong S3 secret key"] = wrong_secret
    refused = repo_test(stack, s3_host, s3_connection(s3, secret_key=wrong_secret))
    assert refused["ok"] is False, refused
    assert refused["detail"].startswith("authentication refused: "), refused
    assert "Access Denied" in refused["detail"], refused
    missing = repo_test(stack, s3_host, s3_connection(s3, bucket="e2e-no-such-bucket"))
    assert missing["ok"] is False, missing
    assert missing["detail"].startswith("repository missing: "), missing
    assert "does not exist" in missing["detail"], missing
    assert refused["detail"].split(":")[0] != missing["detail"].split(":")[0]
    # The test saved nothing: the bucket was not created, the host's settings are unchanged.
    assert "e2e-no-such-bucket" not in [b["Name"] for b in s3.client().list_buckets()["Buckets"]]
    assert stack.api.get(f"/hosts/{s3_host.id}/repository").json()["url"] == s3.url(
        BUCKET, "e2e-s3"
    )

    # REST: the right password, then a wrong one (401).
    right = repo_test(stack, rest_host, rest_connection(rest))
    assert right["ok"] is True, right
    wrong_password = "e2e-Wrong-REST-Pass-3f0a"
    stack.secrets["wrong REST password"] = wrong_password
    refused = repo_test(stack, rest_host, rest_connection(rest, wrong_password))
    assert refused["ok"] is False, refused
    assert refused["detail"].startswith("authentication refused: "), refused
    assert "401" in refused["detail"], refused

    # SFTP: the right key, then a key the server does not know.
    right = repo_test(stack, sftp_host, sftp_connection(sftp))
    assert right["ok"] is True, right
    other = generate_ssh_key(stack.tmp / "other_key")
    stack.secrets["other SFTP key"] = other.read_text()
    refused = repo_test(stack, sftp_host, sftp_connection(sftp, key=other))
    assert refused["ok"] is False, refused
    # restic 0.14 may drop ssh's "Permission denied (publickey)" line (tests/agent/
    # test_restic_real_backends.py): then the agent can only say the SSH login failed.
    if refused["detail"].startswith("authentication refused: "):
        assert "Permission denied (publickey)" in refused["detail"], refused
    else:
        assert refused["detail"].startswith("SSH login failed (check the key, "), refused
        assert "unable to start the sftp session" in refused["detail"], refused
    no_run_dirs_left(sftp_host)
    # Audited by backend and outcome (the secrets check below reads every row's values).
    audit = [json.loads(line) for line in stack.api.get("/audit.ndjson").text.splitlines()]
    tested = [row for row in audit if row["action"] == "host.repository_tested"]
    assert len(tested) >= 7, tested
    assert {row["target_id"] for row in tested} >= {
        str(host.id) for host in (s3_host, rest_host, sftp_host)
    }
    assert_no_secret(stack)


def save_wrong_then_fix(stack: Stack, host: Host, wrong: dict, classes: tuple) -> dict:
    """``wrong`` saved through ``PUT …/repository``: the host shows restic's reason (repo_status
    error, the reason starting with one of ``classes``); the right settings saved again bring
    it back to ready and a backup runs. Returns the failed repository answer."""
    api = stack.api
    body = {"repo_password": REPO_PASSWORDS[host.backend], **wrong}
    saved = api.call("PUT", f"/hosts/{host.id}/repository", body)
    assert saved["repo_env_names"] and "repo_env" not in saved

    def failed():
        repository = api.get(f"/hosts/{host.id}/repository").json()
        return repository if repository["repo_status"] in ("error", "init_failed") else None

    repository = wait_until(failed, 90, f"{host.name}: the wrong key to show", interval=0.5)
    assert repository["repo_status"] == "error", repository  # not initialised over
    assert (repository["repo_status_reason"] or "").startswith(classes), repository
    shown = api.get(f"/hosts/{host.id}").json()
    assert shown["repo_status"] == "error"
    assert shown["repo_status_reason"] == repository["repo_status_reason"]

    body = {"repo_password": REPO_PASSWORDS[host.backend], **host.connection}
    api.call("PUT", f"/hosts/{host.id}/repository", body)
    api.wait_repo_ready(host.id, timeout=90)
    assert api.get(f"/hosts/{host.id}/repository").json()["repo_status_reason"] is None
    run_job(stack, host, "backup")
    return repository


def test_wrong_credentials_saved_show_restics_reason_then_fixed(
    stack, s3, s3_host, rest, rest_host, sftp, sftp_host
):
    wrong_secret = "e2e-Saved-Wrong-Secret-91ad7e"
    stack.secrets["saved wrong S3 secret key"] = wrong_secret
    failed = save_wrong_then_fix(
        stack, s3_host, s3_connection(s3, secret_key=wrong_secret), ("authentication refused: ",)
    )
    assert "Access Denied" in failed["repo_status_reason"], failed
    # The bucket still holds the repository: nothing was initialised over it.
    keys = [o["Key"] for o in s3.client().list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert "e2e-s3/config" in keys

    wrong_password = "e2e-Saved-Wrong-REST-Pass-c2e0"
    stack.secrets["saved wrong REST password"] = wrong_password
    failed = save_wrong_then_fix(
        stack, rest_host, rest_connection(rest, wrong_password), ("authentication refused: ",)
    )
    assert "401" in failed["repo_status_reason"], failed

    other = generate_ssh_key(stack.tmp / "saved_wrong_key")
    stack.secrets["saved wrong SFTP key"] = other.read_text()
    failed = save_wrong_then_fix(
        stack,
        sftp_host,
        sftp_connection(sftp, key=other),
        ("authentication refused: ", "SSH login failed (check the key, "),
    )
    assert "sftp" in failed["repo_status_reason"], failed
    no_run_dirs_left(sftp_host)
    assert_no_secret(stack)


# --- the same "done when", through the web UI ------------------------------------------------


class _Forms(HTMLParser):
    """Every <form> of a page: its action and what a browser sends untouched (hidden, text and
    password inputs, checked boxes, a select's selected or first option, textareas)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.forms: list[dict] = []
        self._form: dict | None = None
        self._select: str | None = None
        self._textarea: str | None = None

    def handle_starttag(self, tag, attrs):
        attrs = {name: (value or "") for name, value in attrs}
        if tag == "form":
            self._form = {"action": unescape(attrs.get("action", "")), "fields": {}}
            self.forms.append(self._form)
        if self._form is None:
            return
        fields, name = self._form["fields"], attrs.get("name")
        if tag == "input" and name:
            kind = attrs.get("type", "text")
            if kind in ("submit", "button") or (
                kind in ("checkbox", "radio") and "checked" not in attrs
            ):
                return
            fields.setdefault(name, attrs.get("value", "on" if kind == "checkbox" else ""))
        elif tag == "select" and name:
            self._select = name
        elif tag == "option" and self._select:
            if "selected" in attrs or self._select not in fields:
                fields[self._select] = attrs.get("value", "")
        elif tag == "textarea" and name:
            self._textarea = name
            fields[name] = ""

    def handle_data(self, data):
        if self._form is not None and self._textarea:
            self._form["fields"][self._textarea] += data

    def handle_endtag(self, tag):
        if tag == "form":
            self._form = None
        elif tag == "select":
            self._select = None
        elif tag == "textarea":
            self._textarea = None


class Browser:
    """A cookie jar that follows redirects and fills forms from the page they sit on (the
    CSRF token and hidden fields included), as tests/e2e/test_teams_walkthrough_e2e.py does.
    Every page it receives joins ``stack.answers`` for the secrets check."""

    def __init__(self, stack: Stack):
        self.base = stack.server.url
        self.session = requests.Session()
        self.session.hooks["response"].append(
            lambda response, *args, **kwargs: stack.answers.append(response.text)
        )

    def get(self, path: str) -> requests.Response:
        response = self.session.get(self.base + path, timeout=30)
        assert response.status_code == 200, (path, response.status_code, response.text[-800:])
        return response

    def form(self, page: str, action: str, **hidden: str) -> dict:
        """The fields of the form on ``page`` posting to ``action`` (whose hidden fields
        have the values ``hidden`` names, when several forms post there)."""
        parser = _Forms()
        parser.feed(self.get(page).text)
        for found in parser.forms:
            path = urlsplit(found["action"]).path or page
            if path == action and all(found["fields"].get(k) == v for k, v in hidden.items()):
                return dict(found["fields"])
        raise AssertionError(f"no form posting to {action} {hidden} on {page}")

    def submit(
        self,
        page: str,
        action: str,
        fields: dict,
        expect: int = 200,
        to: str | None = None,
        **hidden: str,
    ) -> requests.Response:
        """Fill the form and send it to its action (or to ``to``: a button's formaction)."""
        data = {**self.form(page, action, **hidden), **fields}
        response = self.session.post(self.base + (to or action), data=data, timeout=90)
        said = re.findall(r'role="alert"[^>]*>(.*?)</', response.text, flags=re.S)
        assert response.status_code == expect, (action, response.status_code, said)
        return response


def ui_add_host(
    stack: Stack, browser: Browser, name: str, form: dict, files: dict[str, bytes]
) -> Host:
    """Add host from /hosts/new with ``form`` (the repository part); the token is taken from
    the agent command the answer page shows, a real agent enrolls with it and runs. Returned
    once its repository is ready (initialised by the bring-up)."""
    root = stack.tmp / name
    data, home = root / "data", root / "home"
    for relative, content in files.items():
        path = data / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    home.mkdir(parents=True)
    page = browser.submit(
        "/hosts/new", "/hosts/new", {"hostname": name, "paths": str(data), **form}, expect=201
    )
    assert f"Install the agent on {name}" in page.text, page.text[-1500:]
    command = re.search(r'<code id="agent-command"[^>]*>(.*?)</code>', page.text, flags=re.S)
    assert command, page.text[-1500:]
    words = shlex.split(unescape(command.group(1)))
    assert words[:2] == ["restic-manager-agent", "enroll"], words
    assert words[words.index("--server") + 1] == stack.server.url, words
    token = words[words.index("--token") + 1]
    agent = AgentProcess(root / "agent-home", root / "agent.log", HOME=str(home))
    agent.enroll(stack.server.url, token)
    host_id = next(
        item["id"] for item in stack.api.get("/hosts").json()["items"] if item["hostname"] == name
    )
    agent.start()
    connection = {key: value for key, value in form.items() if key != "repo_password"}
    host = Host(name, name, host_id, agent, home, data, connection)
    stack.hosts[name] = host
    try:
        stack.api.wait_repo_ready(host_id, timeout=120)
    except AssertionError:
        raise AssertionError(
            f"{name}: {stack.api.get(f'/hosts/{host_id}').json()}\n{agent.tail(40)}"
        ) from None
    return host


def ui_backup_and_restore(stack: Stack, browser: Browser, host: Host) -> str:
    """Run backup from the host page's form (it answers with the job's page); the snapshot
    it made is restored through the API and compared byte for byte."""
    page = browser.submit(f"/hosts/{host.id}", f"/hosts/{host.id}/jobs", {}, kind="backup")
    found = re.fullmatch(r"/jobs/(\d+)", urlsplit(page.url).path)
    assert found, page.url
    job = stack.api.wait_job(int(found.group(1)), timeout=180)
    assert job["kind"] == "backup" and job["status"] == "succeeded", (job, host.agent.tail(30))
    snapshot_id = job["stats"]["snapshot_id"]
    assert snapshot_id in {item["id"] for item in snapshots(stack, host)}
    restore_and_compare(stack, host, snapshot_id, ["etc/app/config.ini", "blob.bin"])
    return snapshot_id


def ui_test_connection(browser: Browser, host: Host, fields: dict) -> tuple[bool, str]:
    """Test connection on the host's Repository tab with ``fields`` typed into the form: (ok,
    the detail the result box shows)."""
    page = browser.submit(
        f"/hosts/{host.id}/repo",
        f"/hosts/{host.id}/repository",
        fields,
        to=f"/hosts/{host.id}/repository/test",
    )
    box = re.search(
        r'<div class="testresult testresult--(ok|failed)"[^>]*>.*?'
        r'<p class="testresult__detail"><code>(.*?)</code>',
        page.text,
        flags=re.S,
    )
    assert box, page.text[-2000:]
    assert "(nothing was saved)" in page.text
    return box.group(1) == "ok", unescape(box.group(2))


def test_done_when_through_the_ui(stack, s3, rest):
    """Issue 16's "done when" with the admin's browser: an S3 host and a REST host with basic
    auth added from the Add host form, both initialised by their real agents, backed up from
    the host page's Run backup form, a file of each restored; Test connection on the
    Repository tab tells a wrong secret key apart from a missing bucket and saves nothing."""
    browser = Browser(stack)
    page = browser.submit("/login", "/login", {"username": "admin", "password": ADMIN_PASSWORD})
    assert urlsplit(page.url).path == "/", page.url
    files = {**FILES, "blob.bin": os.urandom(300_000)}
    passwords = {"ui-s3": "e2e-UI-S3-Repo-Pass-6d1e8f", "ui-rest": "e2e-UI-REST-Repo-Pass-0b7c52"}
    for name, password in passwords.items():
        stack.secrets[f"{name} repository password"] = password

    # S3: the endpoint and bucket in the URL, the keys and region in their own fields.
    bucket = "e2e-ui-fleet"
    assert bucket not in [b["Name"] for b in s3.client().list_buckets()["Buckets"]]
    s3_form = {
        "repo_url": s3.url(bucket, "ui-s3"),
        "repo_password": passwords["ui-s3"],
        **s3.env(),
        "repo_options": "s3.bucket-lookup=path",
    }
    s3_ui = ui_add_host(stack, browser, "ui-s3", s3_form, files)
    keys = [o["Key"] for o in s3.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert "ui-s3/config" in keys  # the bring-up made the bucket and the repository
    saved = stack.api.get(f"/hosts/{s3_ui.id}/repository").json()
    assert saved["backend"] == "s3" and saved["url"] == s3.url(bucket, "ui-s3")
    assert sorted(saved["repo_env_names"]) == [
        "AWS_ACCESS_KEY_ID",
        "AWS_DEFAULT_REGION",
        "AWS_SECRET_ACCESS_KEY",
    ]
    assert saved["repo_options"] == ["s3.bucket-lookup=path"]
    ui_backup_and_restore(stack, browser, s3_ui)

    # REST with basic auth: the user in Username, the password in its field, not in the URL.
    rest_form = {
        "repo_url": rest.url("ui-rest"),
        "repo_password": passwords["ui-rest"],
        "repo_username": rest.user,
        "RESTIC_REST_PASSWORD": REST_PASSWORD,
    }
    rest_ui = ui_add_host(stack, browser, "ui-rest", rest_form, files)
    assert (rest.data / "ui-rest" / "config").is_file()
    saved = stack.api.get(f"/hosts/{rest_ui.id}/repository").json()
    assert saved["backend"] == "rest" and saved["url"] == rest.url("ui-rest")
    assert saved["username"] == rest.user and saved["repo_env_names"] == ["RESTIC_REST_PASSWORD"]
    ui_backup_and_restore(stack, browser, rest_ui)

    # Test connection on the S3 host's Repository tab: wrong secret key, then a missing bucket.
    before = stack.api.get(f"/hosts/{s3_ui.id}/repository").json()
    wrong_secret = "e2e-UI-Wrong-S3-Secret-58f2a9"
    stack.secrets["UI wrong S3 secret key"] = wrong_secret
    ok, refused = ui_test_connection(
        browser, s3_ui, {**s3_form, "AWS_SECRET_ACCESS_KEY": wrong_secret}
    )
    assert not ok and refused.startswith("authentication refused: "), refused
    assert "Access Denied" in refused, refused
    ok, missing = ui_test_connection(
        browser, s3_ui, {**s3_form, "repo_url": s3.url("e2e-ui-no-such-bucket", "ui-s3")}
    )
    assert not ok and missing.startswith("repository missing: "), missing
    assert "does not exist" in missing, missing
    assert refused.split(":")[0] != missing.split(":")[0]
    ok, right = ui_test_connection(browser, s3_ui, s3_form)
    assert ok and right.startswith("repository reachable (id "), right
    # Nothing was saved, no bucket was made.
    after = stack.api.get(f"/hosts/{s3_ui.id}/repository").json()
    assert after == before, (before, after)
    buckets = [b["Name"] for b in s3.client().list_buckets()["Buckets"]]
    assert "e2e-ui-no-such-bucket" not in buckets
    assert_no_secret(stack)


def test_no_secret_anywhere(stack, s3_host, rest_host, sftp_host):
    """Last: the whole module's output once more, with every backend's host up and a job of
    each kind seen; also that the checks had something to look at."""
    time.sleep(1.5)  # the agents' last log lines reach the server (RM_LOG_FLUSH_SECONDS=1)
    for host in (s3_host, rest_host, sftp_host):
        jobs = stack.api.get("/jobs", params={"host_id": host.id}).json()["items"]
        assert jobs, host.name
        assert any("$ restic" in job_log(stack, job["id"]) for job in jobs), host.name
    # The checks had something to read: answers, argv lines of these agents' restic runs.
    assert len(stack.answers) > 20
    mine = [line for line in stack.sampler.seen if str(stack.tmp) in line]
    assert mine, "no restic process of these agents was ever seen"
    assert len(stack.secrets) >= 3
    assert_no_secret(stack)
