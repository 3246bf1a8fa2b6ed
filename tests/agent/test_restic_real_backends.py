"""Bare restic (no agent code) against real servers on loopback (tests/backend_servers.py):
a password-protected REST server (rclone), S3 (moto_server, IAM authentication on) and
SFTP (OpenSSH). What the agent's backend support relies on, proven on the installed restic
(Debian's 0.14 here), plus restic's own words for each failure, kept in
tests/agent/fixtures/backend_errors/ for the agent's error classifier.

Regenerate the captures: RM_CAPTURE_BACKEND_ERRORS=1 .venv/bin/python -m pytest -q \
  tests/agent/test_restic_real_backends.py -k failure

Skipped when restic or a server is missing, unless RM_REQUIRE_RESTIC=1 (CI): then it fails.
"""

import datetime
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.agent.real_restic import RESTIC, needs_restic
from tests.backend_servers import (
    free_port,
    generate_ssh_key,
    rest_server,
    s3_server,
    self_signed_tls_server,
    sftp_server,
)

PASSWORD = "backends-Repo-pass-7c1d"
CAPTURES = Path(__file__).parent / "fixtures" / "backend_errors"

pytestmark = needs_restic()


def restic(root: Path, env: dict, *args: str, cwd=None) -> subprocess.CompletedProcess:
    """restic with a clean environment: only what the test gives (no AWS_* from outside)."""
    full_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(root),
        "RESTIC_PASSWORD": PASSWORD,
        "RESTIC_CACHE_DIR": str(root / "restic-cache"),
        **env,
    }
    return subprocess.run(
        [RESTIC, *args],
        env=full_env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=180,
    )


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def make_tree(root: Path) -> Path:
    tree = root / "tree"
    (tree / "etc" / "app").mkdir(parents=True)
    (tree / "etc" / "app" / "config.ini").write_text("[main]\nanswer = 42\n")
    (tree / "data.bin").write_bytes(os.urandom(200_000))
    return tree


def round_trip(root: Path, env: dict, *options: str) -> None:
    """init, backup a small tree, snapshots, restore one file and compare it."""
    tree = make_tree(root)
    ok(restic(root, env, *options, "init"))
    summary = [
        json.loads(line)
        for line in ok(restic(root, env, *options, "backup", "--json", str(tree))).splitlines()
        if line.startswith("{")
    ][-1]
    assert summary["message_type"] == "summary"
    assert summary["files_new"] == 2
    (snapshot,) = json.loads(ok(restic(root, env, *options, "snapshots", "--json")))
    assert snapshot["paths"] == [str(tree)]
    target = root / "restored"
    wanted = str(tree / "etc" / "app" / "config.ini")
    ok(restic(root, env, *options, "restore", snapshot["short_id"], "--target", str(target),
              "--include", wanted))  # fmt: skip
    assert (target / wanted.lstrip("/")).read_bytes() == Path(wanted).read_bytes()
    assert not (target / str(tree / "data.bin").lstrip("/")).exists()


# --- servers (one of each per module and worker) -------------------------------------------


@pytest.fixture(scope="module")
def rest(tmp_path_factory):
    with rest_server(tmp_path_factory.mktemp("rest")) as server:
        yield server


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with s3_server(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture(scope="module")
def sftp(tmp_path_factory):
    with sftp_server(tmp_path_factory.mktemp("sftp")) as server:
        yield server


# --- what works ------------------------------------------------------------------------------


def test_rest_server_with_the_credentials_in_the_url(tmp_path, rest):
    """restic 0.14 has no RESTIC_REST_USERNAME/PASSWORD: user:password@ inside the URL works,
    and restic masks the password when it prints the URL."""
    env = {"RESTIC_REPOSITORY": rest.authed_url("host-a")}
    round_trip(tmp_path, env)
    assert (rest.data / "host-a" / "config").is_file()
    result = restic(tmp_path, env, "cat", "config")
    assert json.loads(ok(result))["version"] == 2
    shown = restic(tmp_path, env, "init")  # already there: restic prints the URL, masked
    assert shown.returncode == 1
    assert f"rest:http://{rest.user}:***@127.0.0.1:{rest.port}/host-a/" in shown.stderr
    assert rest.password not in shown.stderr


def test_rest_server_over_https_needs_the_cacert(tmp_path):
    with rest_server(tmp_path / "server", tls=True) as server:
        env = {"RESTIC_REPOSITORY": server.authed_url("tls")}
        refused = restic(tmp_path, env, "init")
        assert refused.returncode == 1
        assert "x509: certificate signed by unknown authority" in refused.stderr
        ok(restic(tmp_path, env, "--cacert", str(server.cacert), "init"))
        ok(restic(tmp_path, env, "--insecure-tls", "cat", "config"))
        assert (server.data / "tls" / "config").is_file()


@pytest.mark.server
def test_s3_init_creates_the_bucket_then_backup_forget_prune_restore(tmp_path, s3):
    client = s3.client()
    assert "fleet-backups" not in [b["Name"] for b in client.list_buckets()["Buckets"]]
    env = {"RESTIC_REPOSITORY": s3.url("fleet-backups", "host-b"), **s3.env()}
    round_trip(tmp_path, env)
    assert "fleet-backups" in [b["Name"] for b in client.list_buckets()["Buckets"]]
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="fleet-backups")["Contents"]]
    assert "host-b/config" in keys

    tree = tmp_path / "tree"
    (tree / "etc" / "app" / "config.ini").write_text("[main]\nanswer = 43\n")
    ok(restic(tmp_path, env, "backup", str(tree)))
    assert len(json.loads(ok(restic(tmp_path, env, "snapshots", "--json")))) == 2
    ok(restic(tmp_path, env, "forget", "--keep-last", "1", "--prune"))
    (latest,) = json.loads(ok(restic(tmp_path, env, "snapshots", "--json")))
    ok(restic(tmp_path, env, "check"))
    target = tmp_path / "restored-latest"
    ok(restic(tmp_path, env, "restore", latest["short_id"], "--target", str(target)))
    restored = target / str(tree / "etc" / "app" / "config.ini").lstrip("/")
    assert restored.read_text() == "[main]\nanswer = 43\n"


@pytest.mark.server
def test_s3_refuses_keys_it_does_not_know(tmp_path, s3):
    """moto checks the key (IAM authentication on): not just any credentials get in."""
    env = {"RESTIC_REPOSITORY": s3.url("refused-bucket"), **s3.env(secret_key="not-the-key")}
    result = restic(tmp_path, env, "init")
    assert result.returncode == 1
    assert "client.BucketExists: Access Denied." in result.stderr
    assert "refused-bucket" not in [b["Name"] for b in s3.client().list_buckets()["Buckets"]]


def test_sftp_with_sftp_command(tmp_path, sftp):
    """restic 0.14 with -o sftp.command: the URL still names user@host:/path (restic uses
    only its path then; host, port, user and key come from the command)."""
    option = ("-o", "sftp.command=" + sftp.ssh_command())
    env = {"RESTIC_REPOSITORY": sftp.url("host-c")}
    round_trip(tmp_path, env, *option)
    assert (sftp.data / "host-c" / "config").is_file()
    # The sftp:// form with a port works the same way.
    url = f"sftp://{sftp.user}@127.0.0.1:{sftp.port}/{sftp.data / 'host-c'}"
    ok(restic(tmp_path, {"RESTIC_REPOSITORY": url}, *option, "cat", "config"))


def test_sftp_accept_new_records_the_host_key_then_holds_to_it(tmp_path, sftp):
    """The contract's fallback when no known_hosts is given: StrictHostKeyChecking=accept-new
    with the agent's own known-hosts file: the first run records the key, later runs check it."""
    option = ("-o", "sftp.command=" + sftp.ssh_command())
    ok(restic(tmp_path, {"RESTIC_REPOSITORY": sftp.url("host-d")}, *option, "init"))
    agent_known = tmp_path / "ssh_known_hosts"
    command = sftp.ssh_command(known_hosts=agent_known, strict="accept-new")
    env = {"RESTIC_REPOSITORY": sftp.url("host-d")}
    ok(restic(tmp_path, env, "-o", "sftp.command=" + command, "cat", "config"))
    # (Debian's ssh_config hashes the host name: HashKnownHosts yes)
    assert agent_known.read_text().split()[1:] == sftp.known_hosts.read_text().split()[1:]
    ok(restic(tmp_path, env, "-o", "sftp.command=" + command, "cat", "config"))
    # Another host key under the same name is refused, not replaced.
    _, key_type, _ = sftp.known_hosts.read_text().split()
    other = generate_ssh_key(tmp_path / "impostor").with_suffix(".pub").read_text().split()[1]
    agent_known.write_text(f"[127.0.0.1]:{sftp.port} {key_type} {other}\n")
    refused = restic(tmp_path, env, "-o", "sftp.command=" + command, "cat", "config")
    assert refused.returncode == 1
    assert "unable to start the sftp session" in refused.stderr
    assert agent_known.read_text() == f"[127.0.0.1]:{sftp.port} {key_type} {other}\n"


@pytest.mark.server
def test_s3_options_from_the_allow_list(tmp_path, s3):
    """-o s3.bucket-lookup=path and -o s3.region=… (the contract's allow-list) on restic 0.14."""
    env = {"RESTIC_REPOSITORY": s3.url("options-bucket"), **s3.env()}
    options = ("-o", "s3.bucket-lookup=path", "-o", "s3.region=us-east-1")
    ok(restic(tmp_path, env, *options, "init"))
    assert json.loads(ok(restic(tmp_path, env, *options, "cat", "config")))["version"] == 2


# --- restic's own words for each failure ---------------------------------------------------
# name -> (what the test sets up, the line that tells this case apart)

CASES = {
    "s3_wrong_secret_key": "Fatal: unable to open config file: Stat: Access Denied.",
    "s3_wrong_access_key": "Fatal: unable to open config file: Stat: Access Denied.",
    "s3_wrong_secret_key_init": (
        "Fatal: create repository at s3:http://127.0.0.1:<port>/fresh-bucket failed: "
        "client.BucketExists: Access Denied."
    ),
    "s3_bucket_missing": (
        "Fatal: unable to open config file: Stat: The specified key does not exist."
    ),
    "s3_no_repository_in_bucket": (
        "Fatal: unable to open config file: Stat: The specified key does not exist."
    ),
    "rest_wrong_password": (
        "Fatal: unable to open config file: unexpected HTTP response (401): 401 Unauthorized"
    ),
    "rest_no_password": (
        "Fatal: unable to open config file: unexpected HTTP response (401): 401 Unauthorized"
    ),
    "rest_no_repository": ("Fatal: unable to open config file: <config/> does not exist"),
    "sftp_wrong_key": "subprocess ssh: <user>@127.0.0.1: Permission denied (publickey).",
    "sftp_unknown_host_key": "subprocess ssh: Host key verification failed.",
    "sftp_no_repository": "Fatal: unable to open config file: Lstat: file does not exist",
    "connection_refused": (
        'Fatal: unable to open config file: client.Head: Head "http://127.0.0.1:<port>/config":'
        " dial tcp 127.0.0.1:<port>: connect: connection refused"
    ),
    "dns_failure": (
        'Fatal: unable to open config file: client.Head: Head "http://backup-host.invalid:8000/'
        'config": dial tcp: lookup backup-host.invalid'
    ),
    "tls_self_signed": (
        'Fatal: unable to open config file: client.Head: Head "https://127.0.0.1:<port>/config":'
        " x509: certificate signed by unknown authority"
    ),
    "s3_tls_self_signed": (
        'Fatal: unable to open config file: Stat: Head "https://127.0.0.1:<port>/backups/config":'
        " x509: certificate signed by unknown authority"
    ),
}
S3_CASES = {name for name in CASES if name.startswith("s3_")}
SFTP_SESSION_FAILED = (
    "Fatal: unable to open repository at sftp:<user>@127.0.0.1:<tmp>/host-a:"
    " unable to start the sftp session, error: "
)


def case_setup(name, request, tmp_path):
    """(env, restic args, secrets to hide) for one failure case."""
    if name.startswith("s3_") and "tls" not in name:
        s3 = request.getfixturevalue("s3")
        if name == "s3_no_repository_in_bucket":
            s3.client().create_bucket(Bucket="empty-bucket")
        bucket = {
            "s3_bucket_missing": "no-such-bucket",
            "s3_no_repository_in_bucket": "empty-bucket",
            "s3_wrong_secret_key_init": "fresh-bucket",
        }.get(name, "backups")
        if bucket == "backups":  # a real repository: only the key is wrong
            restic(tmp_path, {"RESTIC_REPOSITORY": s3.url(bucket), **s3.env()}, "init")
        keys = {
            "s3_wrong_secret_key": {"secret_key": "wrong-Secret-key-0000"},
            "s3_wrong_secret_key_init": {"secret_key": "wrong-Secret-key-0000"},
            "s3_wrong_access_key": {"access_key": "AKIAWRONGWRONGWRONG0"},
        }.get(name, {})
        command = "init" if name.endswith("_init") else "cat config"
        env = {"RESTIC_REPOSITORY": s3.url(bucket), **s3.env(**keys)}
        return env, command.split(), {s3.access_key: "<access key>", s3.secret_key: "<secret key>"}
    if name.startswith("rest_"):
        rest = request.getfixturevalue("rest")
        url = {
            "rest_wrong_password": rest.url("host-a", rest.user, "wrong-Rest-pass"),
            "rest_no_password": rest.url("host-a"),
            "rest_no_repository": rest.authed_url("nothing-here"),
        }[name]
        return {"RESTIC_REPOSITORY": url}, ["cat", "config"], {rest.password: "<password>"}
    if name.startswith("sftp_"):
        sftp = request.getfixturevalue("sftp")
        command = sftp.ssh_command()
        if name == "sftp_wrong_key":
            command = sftp.ssh_command(key=generate_ssh_key(tmp_path / "other_key"))
        elif name == "sftp_unknown_host_key":
            (tmp_path / "empty_known_hosts").write_text("")
            command = sftp.ssh_command(known_hosts=tmp_path / "empty_known_hosts")
        url = sftp.url("host-a" if name != "sftp_no_repository" else "nothing-here")
        if name != "sftp_no_repository":
            restic(tmp_path, {"RESTIC_REPOSITORY": url}, "-o", "sftp.command=" + sftp.ssh_command(),
                   "init")  # fmt: skip
        args = ["-o", "sftp.command=" + command, "cat", "config"]
        return {"RESTIC_REPOSITORY": url}, args, {}
    if name == "connection_refused":
        return {"RESTIC_REPOSITORY": f"rest:http://127.0.0.1:{free_port()}/"}, ["cat", "config"], {}
    if name == "dns_failure":
        return {"RESTIC_REPOSITORY": "rest:http://backup-host.invalid:8000/"}, ["cat", "config"], {}
    if name.endswith("tls_self_signed"):
        port, _ = request.getfixturevalue("tls_port")
        if name == "tls_self_signed":
            return {"RESTIC_REPOSITORY": f"rest:https://127.0.0.1:{port}/"}, ["cat", "config"], {}
        env = {
            "RESTIC_REPOSITORY": f"s3:https://127.0.0.1:{port}/backups",
            "AWS_ACCESS_KEY_ID": "AKIATESTTESTTESTTEST",
            "AWS_SECRET_ACCESS_KEY": "tls-Secret-key-0000",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        return env, ["cat", "config"], {}
    raise AssertionError(name)


@pytest.fixture(scope="module")
def tls_port(tmp_path_factory):
    with self_signed_tls_server(tmp_path_factory.mktemp("tls")) as server:
        yield server


WRONG = {
    "wrong-Secret-key-0000": "<wrong secret key>",
    "wrong-Rest-pass": "<wrong password>",
    "tls-Secret-key-0000": "<secret key>",
}


def normalise(text: str, secrets: dict, user: str = "") -> str:
    """Ports, temp paths, the user name, the resolver and every secret replaced."""
    for value, label in {**secrets, **WRONG}.items():
        text = text.replace(value, label)
    text = re.sub(r"(127\.0\.0\.1\]?):\d+", r"\1:<port>", text)
    text = re.sub(r"-p \d+ ", "-p <port> ", text)
    text = re.sub(
        r"/tmp/\S*?/(?=(host-a|nothing-here|other_key|empty_known_hosts)\b)", "<tmp>/", text
    )
    text = re.sub(r"/tmp/pytest-of-[^/\s]+/[^\s:\"']+", "<tmp>", text)
    text = re.sub(r"on [0-9a-f.:\[\]]+:53", "on <resolver>:53", text)
    if user:
        text = text.replace(f"{user}@127.0.0.1", "<user>@127.0.0.1")
        text = text.replace(f"-l {user} ", "-l <user> ")
    return text


def capture_text(name, env, args, result, secrets, user) -> str:
    def clean(text):
        return normalise(text, secrets, user)

    version = subprocess.run([RESTIC, "version"], capture_output=True, text=True).stdout.strip()
    exported = " ".join(f"{key}={clean(value)}" for key, value in env.items())
    command = " ".join(f"'{arg}'" if " " in arg else arg for arg in args)
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return (
        f"# {version}, captured {now} by tests/agent/test_restic_real_backends.py\n"
        f"# case: {name}\n"
        f"# exported env: {exported} RESTIC_PASSWORD=<set>\n"
        f"# command: restic {clean(command)}\n"
        f"# exit code: {result.returncode}\n"
        f"# key line: {CASES[name]}\n"
        "# ===== stdout =====\n"
        f"{clean(result.stdout)}"
        "# ===== stderr =====\n"
        f"{clean(result.stderr)}"
    )


@pytest.mark.parametrize(
    "name",
    [pytest.param(name, marks=[pytest.mark.server] if name in S3_CASES else []) for name in CASES],
)
def test_failure_matches_its_capture(name, request, tmp_path):
    """Each failure, live: exit code 1 and its key line, as in the capture the classifier uses.
    With RM_CAPTURE_BACKEND_ERRORS=1 the capture is (re)written from this run."""
    env, args, secrets = case_setup(name, request, tmp_path)
    user = request.getfixturevalue("sftp").user if name.startswith("sftp_") else ""
    relayed = True
    for _ in range(10):
        result = restic(tmp_path, env, *args)
        stderr = normalise(result.stderr, secrets, user)
        if not name.startswith("sftp_") or name == "sftp_no_repository":
            break
        # restic 0.14 relays ssh's stderr from a goroutine and may exit before it has copied
        # all of it: ssh's lines are sometimes missing (3 to 10 runs in 40 here) while
        # restic's own line is always there (ending in "error: EOF" or
        # "error: read |0: file already closed"). The capture holds the usual, complete case.
        assert SFTP_SESSION_FAILED in stderr, stderr
        if CASES[name] in stderr.splitlines():
            break
    else:
        # Ten runs without ssh's line (seen under heavy load): restic's own line was in
        # every one of them, and that is what the classifier falls back to.
        relayed = False
    for secret in [*secrets, *WRONG, PASSWORD]:
        assert secret not in result.stderr
    assert result.returncode == 1, result.stderr
    key = CASES[name]
    if name == "dns_failure":  # the resolver's answer depends on the machine's DNS
        assert key in stderr, stderr
    elif not relayed:
        assert SFTP_SESSION_FAILED in stderr, stderr
    else:
        assert key in stderr.splitlines(), stderr
    if os.environ.get("RM_CAPTURE_BACKEND_ERRORS") == "1":
        CAPTURES.mkdir(parents=True, exist_ok=True)
        text = capture_text(name, env, args, result, secrets, user)
        (CAPTURES / f"{name}.txt").write_text(text)


def test_every_capture_is_there_with_its_key_line():
    """The captures the agent's classifier is tested with: one per case, the key line in
    restic's stderr, exit code 1, no secret left in them."""
    assert sorted(path.stem for path in CAPTURES.glob("*.txt")) == sorted(CASES)
    for name, key in CASES.items():
        text = (CAPTURES / f"{name}.txt").read_text()
        header, _, rest = text.partition("# ===== stdout =====\n")
        _, _, stderr = rest.partition("# ===== stderr =====\n")
        assert "# command: restic " in header
        assert "# exit code: 1\n" in header
        assert f"# key line: {key}\n" in header
        assert any(line.startswith(key) for line in stderr.splitlines()), name
        for secret in (*WRONG, PASSWORD, "rest-Pass-4f1e"):
            assert secret not in text, name
        assert "/tmp/pytest-of-" not in text, name
