"""Repository backends on the agent (issue 16): the allow-list it enforces again, the argv
and environment of one run, the file secrets' lifetime, masking, config.update."""

import datetime
import json
import logging
import os
import re
import stat
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fake_agent_server import wait_for
from running_agent import Running, config_update

from agent.repository import (
    Repository,
    checked_credentials,
    remove_leftover_run_dirs,
    rest_credentials,
    sftp_command,
    url_with_user,
)
from agent.restic import backends, errors
from agent.restic.backends import BackendRefused, check_settings, sftp_target
from agent.rpc import RpcRunner
from agent.runner import Runner
from agent.service import Agent
from agent.spool import Spool

SECRET_KEY = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYzz-Secret"
SESSION_TOKEN = "FwoGZXIvYXdzEJr-Session-Token"
REST_PASSWORD = "r3st p@ss/wörd:%"
SSH_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\r\n"
    "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\r\n"
    "QyNTUxOQAAACBkZXlsaW5lLW9mLXRoZS1rZXktdGhhdC1tdXN0LWJlLW1hc2tlZA==\r\n"
    "-----END OPENSSH PRIVATE KEY-----"
)
GCS_JSON = '{"type": "service_account", "private_key": "-----BEGIN PRIVATE KEY-----\\nMIIEv-gcs"}'


def self_signed_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "minio.internal")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


S3 = {
    "url": "s3:https://minio.internal:9000/backups/host-a",
    "username": "",
    "password": "Repo-Pw-1",
    "env": {
        "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_SESSION_TOKEN": SESSION_TOKEN,
        "AWS_DEFAULT_REGION": "eu-west-1",
    },
    "options": ["s3.bucket-lookup=path", "s3.region=eu-west-1"],
    "insecure_tls": False,
}


# -- the allow-list -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "section, message",
    [
        (
            {"url": "s3:https://h/b", "env": {"LD_PRELOAD": "/tmp/evil.so"}},
            "env.LD_PRELOAD: not allowed for an s3 repository; allowed: AWS_ACCESS_KEY_ID, "
            "AWS_DEFAULT_REGION, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN",
        ),
        (
            {"url": "rest:https://h/", "env": {"RESTIC_PASSWORD_COMMAND": "sh -c id"}},
            "env.RESTIC_PASSWORD_COMMAND: not allowed for a rest repository",
        ),
        (
            {"url": "/srv/repo", "env": {"AWS_SECRET_ACCESS_KEY": "x"}},
            "env.AWS_SECRET_ACCESS_KEY: not allowed for a local repository; allowed: none",
        ),
        (
            {"url": "b2:bucket:path", "files": {"SFTP_PRIVATE_KEY": "k"}},
            "files.SFTP_PRIVATE_KEY: not allowed for a b2 repository",
        ),
        (
            {"url": "rclone:remote:path", "env": {"RCLONE_CONFIG_REMOTE_TYPE": "local"}},
            "env.RCLONE_CONFIG_REMOTE_TYPE: not allowed for an rclone repository; "
            "allowed: RCLONE_CONFIG_PASS",
        ),
        ({"url": "sftp:u@h:/r", "options": ["sftp.command=sh -c id"]}, "options.sftp.command"),
        ({"url": "sftp:u@h:/r", "options": ["sftp.args=-oProxyCommand=id"]}, "options.sftp.args"),
        ({"url": "rclone:r:p", "options": ["rclone.program=/bin/sh"]}, "options.rclone.program"),
        ({"url": "rclone:r:p", "options": ["rclone.args=serve"]}, "options.rclone.args"),
        (
            {"url": "/srv/repo", "options": ["s3.region=eu-west-1"]},
            "options.s3.region: not allowed for a local repository; allowed: local.connections",
        ),
        ({"url": "s3:h/b", "options": ["s3.bucket-lookup=sideways"]}, "is not a valid value"),
        ({"url": "s3:h/b", "options": ["s3.connections=-1"]}, "is not a valid value"),
        ({"url": "s3:h/b", "options": "s3.region=x"}, "options: must be a list"),
        ({"url": "s3:h/b", "options": ["s3.region"]}, 'is not "key=value"'),
        ({"url": "s3:h/b", "env": {"AWS_ACCESS_KEY_ID": "a\0b"}}, "must not contain a NUL"),
        ({"url": "s3:h/b", "env": {"AWS_ACCESS_KEY_ID": 12}}, "must be text"),
        ({"url": "s3:h/b", "env": {"AWS_ACCESS_KEY_ID": "a" * 4097}}, "longer than 4096"),
        (
            {"url": "gs:b:/p", "env": {"GOOGLE_APPLICATION_CREDENTIALS": "{" * (64 * 1024 + 1)}},
            "longer than 65536",
        ),
        ({"url": "s3:h/b", "env": ["AWS_ACCESS_KEY_ID"]}, "env: must be an object"),
        ({"url": "s3:h/b", "insecure_tls": "yes"}, "insecure_tls: must be true or false"),
        ({"url": "s3:h/b", "cacert": "not a certificate"}, "cacert: no PEM certificate"),
        (
            {
                "url": "s3:h/b",
                "cacert": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----",
            },
            "cacert: a certificate in it cannot be read",
        ),
        ({"url": "sftp:-oProxyCommand=id@host:/r"}, "is not a user name"),
        ({"url": "sftp:user@-oProxyCommand=id:/r"}, "is not a host name"),
        ({"url": "sftp://user@host:99999//r"}, "is not a port"),
        ({"url": "fake:ready", "env": {"PATH": "/tmp"}}, "not allowed for a fake repository"),
    ],
)
def test_the_agent_refuses_what_the_backend_does_not_allow(section, message):
    with pytest.raises(BackendRefused, match=_literal(message)):
        check_settings(section)


def _literal(text):
    return re.escape(text)


def test_allowed_settings_are_kept_and_sorted_by_kind():
    certificate = self_signed_pem()
    section = dict(S3, cacert=certificate + certificate, insecure_tls=True)
    settings = check_settings(section)
    assert settings.backend == "s3" and settings.env == S3["env"]
    assert settings.options == ("s3.bucket-lookup=path", "s3.region=eu-west-1")
    assert settings.cacert == certificate + certificate and settings.insecure_tls
    gs = check_settings(
        {"url": "gs:bucket:/p", "env": {"GOOGLE_APPLICATION_CREDENTIALS": GCS_JSON}}
    )
    assert gs.files == {"GOOGLE_APPLICATION_CREDENTIALS": GCS_JSON} and gs.env == {}
    # Absent keys are none (an older server sends url, username and password only).
    bare = check_settings({"url": "rest:https://h/", "password": "p"})
    assert (bare.env, bare.files, bare.options, bare.cacert, bare.insecure_tls) == (
        {},
        {},
        (),
        None,
        False,
    )


@pytest.mark.parametrize(
    "url, host, user, port",
    [
        ("sftp:backup@nas.example:/srv/restic", "nas.example", "backup", None),
        ("sftp:nas:repo", "nas", None, None),
        ("sftp://backup@10.0.0.5:2222//srv/restic", "10.0.0.5", "backup", 2222),
        ("sftp://[::1]:22/srv", "::1", None, 22),
        ("sftp:backup@[fe80::1]:/srv", "fe80::1", "backup", None),
    ],
)
def test_sftp_targets_come_from_the_url(url, host, user, port):
    assert sftp_target(url) == backends.SftpTarget(host=host, user=user, port=port)


def test_the_sftp_command_is_built_from_the_parsed_url_and_agent_paths_only(tmp_path):
    target = sftp_target("sftp://backup@nas.example:2222//srv/restic")
    command = sftp_command(target, tmp_path / "key", None, tmp_path / "ssh_known_hosts")
    assert command == (
        f"ssh -i {tmp_path}/key -o IdentitiesOnly=yes -o BatchMode=yes -p 2222 "
        f"-o UserKnownHostsFile={tmp_path}/ssh_known_hosts -o StrictHostKeyChecking=accept-new "
        "-l backup nas.example -s sftp"
    )
    pinned = sftp_command(sftp_target("sftp:nas:/r"), None, tmp_path / "kh", tmp_path / "x")
    assert pinned == (
        f"ssh -o BatchMode=yes -o UserKnownHostsFile={tmp_path}/kh "
        "-o StrictHostKeyChecking=yes nas -s sftp"
    )


# -- REST user and password -------------------------------------------------------------------


def test_rest_credentials_travel_in_the_environment_from_restic_017():
    section = {
        "url": "rest:https://backup.example:8000/host-a/",
        "username": "host-a",
        "env": {"RESTIC_REST_PASSWORD": REST_PASSWORD},
    }
    settings = check_settings(section)
    url, env = rest_credentials(section, settings, "0.17.0")
    assert url == section["url"]
    assert env == {"RESTIC_REST_USERNAME": "host-a", "RESTIC_REST_PASSWORD": REST_PASSWORD}
    # repo_env's RESTIC_REST_USERNAME wins over username.
    section["env"]["RESTIC_REST_USERNAME"] = "other"
    assert rest_credentials(section, check_settings(section), "0.18.1")[1] == {
        "RESTIC_REST_USERNAME": "other",
        "RESTIC_REST_PASSWORD": REST_PASSWORD,
    }


@pytest.mark.parametrize("version", ["0.14.0", "0.16.5", None])
def test_older_restic_gets_user_and_password_inside_the_url(version):
    section = {
        "url": "rest:https://old:gone@backup.example:8000/host-a/",
        "username": "host a",
        "env": {"RESTIC_REST_PASSWORD": REST_PASSWORD},
    }
    url, env = rest_credentials(section, check_settings(section), version)
    assert env == {}
    assert url == (
        "rest:https://host%20a:r3st%20p%40ss%2Fw%C3%B6rd%3A%25@backup.example:8000/host-a/"
    )
    assert url_with_user("rest:http://h:1/", "u", "") == "rest:http://u@h:1/"
    no_user = {"url": "rest:http://h/", "username": ""}
    assert rest_credentials(no_user, check_settings(no_user), None) == ("rest:http://h/", {})


def test_run_setup_puts_the_rest_url_only_in_the_environment(tmp_path):
    stored = {
        "url": "rest:http://127.0.0.1:8000/",
        "username": "alice",
        "password": "Repo-Pw-1",
        "env": {"RESTIC_REST_PASSWORD": REST_PASSWORD},
    }
    old = Repository(stored, tmp_path / "cache", restic_version="0.14.0")
    with old.run_setup(old.everyday, ("restic", "snapshots")) as (argv, env):
        assert argv == ("restic", "snapshots")
        assert env["RESTIC_REPOSITORY"].startswith("rest:http://alice:r3st%20p%40ss")
        assert "RESTIC_REST_PASSWORD" not in env
    new = Repository(stored, tmp_path / "cache", restic_version=lambda: "0.17.3")
    with new.run_setup(new.everyday, ("restic", "snapshots")) as (argv, env):
        assert env["RESTIC_REPOSITORY"] == "rest:http://127.0.0.1:8000/"
        assert env["RESTIC_REST_USERNAME"] == "alice"
        assert env["RESTIC_REST_PASSWORD"] == REST_PASSWORD
    for repository in (old, new):  # whichever way it travels, it is masked
        line = f"{env['RESTIC_REPOSITORY']} {REST_PASSWORD} r3st%20p%40ss%2Fw%C3%B6rd%3A%25"
        assert "r3st" not in repository.masker(line)


# -- argv, environment, files ----------------------------------------------------------------


def test_run_setup_inserts_the_global_flags_after_the_binary(tmp_path):
    certificate = self_signed_pem()
    stored = dict(S3, cacert=certificate, insecure_tls=True)
    repository = Repository(stored, tmp_path / "cache", home=tmp_path)
    with repository.run_setup(repository.everyday, ("restic", "backup", "--json")) as (
        argv,
        env,
    ):
        (run_dir,) = tmp_path.glob("restic-run-*")
        assert argv == (
            "restic",
            "-o",
            "s3.bucket-lookup=path",
            "-o",
            "s3.region=eu-west-1",
            "--cacert",
            f"{run_dir}/cacert.pem",
            "--insecure-tls",
            "backup",
            "--json",
        )
        assert (run_dir / "cacert.pem").read_text() == certificate
        for name, value in S3["env"].items():
            assert env[name] == value
        assert env["RESTIC_REPOSITORY"] == S3["url"] and env["RESTIC_PASSWORD"] == "Repo-Pw-1"
        assert SECRET_KEY not in " ".join(argv)
    assert not list(tmp_path.glob("restic-run-*"))


def test_file_secrets_live_in_a_private_directory_for_the_run_only(tmp_path):
    stored = {
        "url": "sftp://backup@nas.example:2222//srv/restic",
        "password": "Repo-Pw-1",
        "files": {"SFTP_PRIVATE_KEY": SSH_KEY},
    }
    repository = Repository(stored, tmp_path / "cache", home=tmp_path)
    with (
        pytest.raises(RuntimeError),
        repository.run_setup(repository.everyday, ("restic", "init")) as (argv, env),
    ):
        (run_dir,) = tmp_path.glob("restic-run-*")
        key = run_dir / "SFTP_PRIVATE_KEY"
        assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert key.read_text() == SSH_KEY.replace("\r\n", "\n") + "\n"
        assert argv[1:3] == (
            "-o",
            "sftp.command="
            + sftp_command(sftp_target(stored["url"]), key, None, tmp_path / "ssh_known_hosts"),
        )
        assert "SFTP_PRIVATE_KEY" not in env and "BEGIN OPENSSH" not in json.dumps(env)
        raise RuntimeError("restic failed")  # a failure removes them too
    assert not list(tmp_path.glob("restic-run-*"))
    gcs = Repository(
        {"url": "gs:b:/p", "password": "p", "env": {"GOOGLE_APPLICATION_CREDENTIALS": GCS_JSON}},
        home=tmp_path,
    )
    with gcs.run_setup(gcs.everyday, ("restic", "snapshots")) as (argv, env):
        path = Path(env["GOOGLE_APPLICATION_CREDENTIALS"])
        assert path.parent.parent == tmp_path and path.read_text() == GCS_JSON
    assert not path.exists()


def test_settings_stored_before_a_tightening_are_refused_at_run_time(tmp_path):
    repository = Repository(
        {"url": "s3:h/b", "password": "p", "env": {"LD_PRELOAD": "/tmp/evil.so"}}, home=tmp_path
    )
    with (
        pytest.raises(BackendRefused, match="LD_PRELOAD"),
        repository.run_setup(repository.everyday, ("restic", "snapshots")),
    ):
        pass  # pragma: no cover


def test_leftover_run_directories_are_removed(tmp_path):
    (tmp_path / "restic-run-abc").mkdir()
    (tmp_path / "restic-run-abc" / "SFTP_PRIVATE_KEY").write_text("k")
    (tmp_path / "restic-runner.txt").write_text("not a directory")
    remove_leftover_run_dirs(tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["restic-runner.txt"]


# -- masking ---------------------------------------------------------------------------------


def test_every_secret_value_and_each_line_of_a_file_is_masked(tmp_path):
    stored = dict(
        S3,
        admin_repository={
            "url": "gs:bucket:/p",
            "password": "Admin-Pw-2",
            "env": {"GOOGLE_APPLICATION_CREDENTIALS": GCS_JSON, "GOOGLE_PROJECT_ID": "proj"},
        },
    )
    masker = Repository(stored).masker
    for secret in (SECRET_KEY, SESSION_TOKEN, "AKIAIOSFODNN7EXAMPLE", GCS_JSON, "Admin-Pw-2"):
        assert secret not in masker(f"restic said: {secret} (end)")
    sftp = Repository({"url": "sftp:h:/r", "files": {"SFTP_PRIVATE_KEY": SSH_KEY}}).masker
    for line in SSH_KEY.splitlines()[1:3]:
        assert masker is not sftp and line.strip() not in sftp(f"key line {line.strip()}")
    # Short plain values (a user name, a project) are not secrets and must not hide words.
    assert masker("restic backup proj") == "restic backup proj"
    rest = Repository({"url": "rest:http://h/", "env": {"RESTIC_REST_USERNAME": "backup"}})
    assert rest.masker("$ restic backup") == "$ restic backup"


# -- config.update ---------------------------------------------------------------------------


def test_config_update_stores_the_backend_settings_and_rejects_refused_ones(
    agent_home, fake_restic
):
    agent = Agent(agent_home, restic_binary=str(fake_restic))
    certificate = self_signed_pem()
    everyday = dict(S3, cacert=certificate)
    admin = dict(S3, password="Admin-Pw-2", env={"AWS_SECRET_ACCESS_KEY": "Admin-Key-9"})
    agent.handle_command(
        {
            "command_id": "c1",
            "type": "config.update",
            "payload": {"repository": everyday, "admin_repository": admin},
        }
    )
    expected = {key: value for key, value in everyday.items() if key != "insecure_tls"}
    stored = agent.secrets.load()
    assert {key: stored[key] for key in expected} == expected
    assert stored["admin_repository"]["env"] == {"AWS_SECRET_ACCESS_KEY": "Admin-Key-9"}
    sealed = (agent_home / "secrets.sealed").read_bytes()
    assert SECRET_KEY.encode() not in sealed and b"Admin-Key-9" not in sealed

    evil = dict(S3, env={"LD_PRELOAD": "/tmp/evil.so"})
    agent.handle_command(
        {"command_id": "c2", "type": "config.update", "payload": {"repository": evil}}
    )
    evil_admin = dict(S3, options=["rclone.program=/bin/sh"])
    agent.handle_command(
        {"command_id": "c3", "type": "config.update", "payload": {"admin_repository": evil_admin}}
    )
    acks = agent.pending_acks()
    assert [ack["result"] for ack in acks] == ["accepted", "rejected", "rejected"]
    assert acks[1]["reason"].startswith(
        "config.update repository.env.LD_PRELOAD: not allowed for an s3 repository; allowed: "
    )
    assert acks[2]["reason"].startswith("config.update admin_repository.options.rclone.program")
    assert agent.secrets.load() == stored  # the old settings stay

    # An older server sends no new keys: none are kept.
    agent.handle_command(config_update("c4"))
    assert set(agent.secrets.load()) == {"url", "username", "password", "admin_repository"}


def test_checked_credentials_keep_absent_keys_absent():
    assert checked_credentials({"url": "/srv/r", "password": "p"}) == {
        "url": "/srv/r",
        "password": "p",
    }


# -- through a job: argv, files, cancel, no secret anywhere -------------------------------

RECORDING_RESTIC = """\
#!{python}
import json, os, signal, stat, sys, time
argv = sys.argv
seen = {{"argv": argv, "env": dict(os.environ), "files": {{}}}}
paths = [word for word in argv[1:] if os.path.isabs(word) and os.path.exists(word)]
paths += [os.environ[n] for n in ("GOOGLE_APPLICATION_CREDENTIALS",) if n in os.environ]
for word in argv:
    if word.startswith("sftp.command="):
        paths += [part for part in word.split() if part.startswith("{home}")]
for path in paths:
    if os.path.exists(path):
        seen["files"][path] = [oct(stat.S_IMODE(os.stat(path).st_mode)),
                               oct(stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode))]
with open({record!r}, "a") as handle:
    handle.write(json.dumps(seen) + "\\n")
# What a chatty backend might print: every value it was given.
for name in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "RESTIC_PASSWORD",
             "RESTIC_REPOSITORY"):
    print("debug: %s=%s" % (name, os.environ.get(name, "")), file=sys.stderr, flush=True)
for path in paths:
    if path.endswith("SFTP_PRIVATE_KEY"):
        sys.stderr.write(open(path).read())
if "slow" in os.environ.get("RESTIC_REPOSITORY", ""):
    signal.signal(signal.SIGINT, lambda *a: os._exit(130))
    print("working", flush=True)
    time.sleep(60)
print("Fatal: x509: certificate signed by unknown authority", file=sys.stderr)
sys.exit(1)
"""


@pytest.fixture
def recording_restic(tmp_path):
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    script = tmp_path / "restic"
    record = tmp_path / "calls.ndjson"
    script.write_text(
        RECORDING_RESTIC.format(python=sys.executable, record=str(record), home=str(home))
    )
    script.chmod(0o755)

    def calls():
        if not record.exists():
            return []
        return [json.loads(line) for line in record.read_text().splitlines()]

    return script, home, calls


def run_job(tmp_path, script, home, stored, kind="probe", cancel_after=None):
    spool = Spool(tmp_path / "spool", max_bytes=10**7)
    runner = Runner(
        spool,
        lambda: stored,
        restic_binary=str(script),
        restic_version="0.14.0",
        cache_dir=home / "cache",
        agent_home=home,
        grace_seconds=2,
    )
    runner.prepare(1, "att")
    assert runner.start(1, "att", kind, {})
    if cancel_after is not None:
        cancel_after()
        assert runner.cancel(1, "att")
    assert runner.wait_idle(timeout=30)
    batch = spool.job(1).pending_batch(max_records=10_000)
    return spool, (batch[1] if batch else [])


def test_a_job_runs_restic_with_its_files_and_leaves_nothing_behind(
    tmp_path, recording_restic, caplog
):
    script, home, calls = recording_restic
    stored = {
        "url": "sftp://backup@nas.example:2222//srv/restic",
        "password": "Repo-Pw-1",
        "files": {"SFTP_PRIVATE_KEY": SSH_KEY},
        "options": ["sftp.connections=2"],
    }
    caplog.set_level(logging.DEBUG)
    spool, records = run_job(tmp_path, script, home, stored)
    (call,) = calls()
    assert call["argv"][1:3] == ["-o", "sftp.connections=2"]
    assert call["argv"][3:5] == ["-o", call["argv"][4]]
    assert call["argv"][4].startswith("sftp.command=ssh -i ")
    (key_path,) = [path for path in call["files"] if path.endswith("SFTP_PRIVATE_KEY")]
    assert call["files"][key_path] == ["0o600", "0o700"]
    assert Path(key_path).parent.parent == home
    assert not Path(key_path).parent.exists()  # removed once restic exited
    texts = [record["text"] for record in records]
    assert texts[0].startswith("$ " + str(script) + " -o sftp.connections=2 -o 'sftp.command=ssh")
    everything = json.dumps(records) + json.dumps(spool.pending_events()) + caplog.text
    for line in SSH_KEY.splitlines():
        assert line.strip() not in everything
    assert "Repo-Pw-1" not in everything
    finished = next(e for e in spool.pending_events() if e["type"] == "job.finished")["data"]
    assert finished["status"] == "failed"
    assert finished["error"].startswith("TLS certificate error: Fatal: x509:")


def test_a_cancelled_job_leaves_no_secret_file(tmp_path, recording_restic):
    script, home, calls = recording_restic
    stored = {
        "url": "gs:slow-bucket:/p",
        "password": "Repo-Pw-1",
        "env": {"GOOGLE_APPLICATION_CREDENTIALS": GCS_JSON},
    }
    spool, records = run_job(
        tmp_path,
        script,
        home,
        stored,
        kind="check",
        cancel_after=lambda: wait_for(calls),
    )
    (call,) = calls()
    (credentials_path,) = call["files"]
    assert call["files"][credentials_path] == ["0o600", "0o700"]
    assert not Path(credentials_path).exists()
    assert not list(home.glob("restic-run-*"))
    finished = next(e for e in spool.pending_events() if e["type"] == "job.finished")["data"]
    assert finished["status"] == "cancelled"
    assert GCS_JSON not in json.dumps(records)


def test_an_s3_job_masks_every_secret_it_echoes(tmp_path, recording_restic):
    script, home, calls = recording_restic
    spool, records = run_job(tmp_path, script, home, dict(S3))
    (call,) = calls()
    assert call["env"]["AWS_SECRET_ACCESS_KEY"] == SECRET_KEY
    assert call["argv"][1:5] == ["-o", "s3.bucket-lookup=path", "-o", "s3.region=eu-west-1"]
    everything = json.dumps(records) + json.dumps(spool.pending_events())
    assert "debug: AWS_SECRET_ACCESS_KEY=******" in everything
    for secret in (SECRET_KEY, SESSION_TOKEN, "Repo-Pw-1"):
        assert secret not in everything


def test_a_job_with_refused_settings_fails_before_restic_runs(tmp_path, recording_restic):
    script, home, calls = recording_restic
    stored = dict(S3, env={"LD_PRELOAD": "/tmp/evil.so"})
    spool, _ = run_job(tmp_path, script, home, stored)
    assert calls() == []
    events = spool.pending_events()
    finished = next(e for e in events if e["type"] == "job.finished")["data"]
    assert finished["status"] == "failed"
    assert finished["error"].startswith(
        "repository settings refused by this host: env.LD_PRELOAD: not allowed"
    )
    status = next(e for e in events if e["type"] == "repo.status")["data"]
    assert status["status"] == "error"


def test_rpc_calls_use_the_same_seam(tmp_path, recording_restic):
    script, home, calls = recording_restic
    runner = RpcRunner(
        lambda: None,
        lambda: dict(S3),
        restic_binary=str(script),
        agent_home=home,
        restic_version=lambda: "0.14.0",
    )
    answer = runner.test_repository({"rpc_id": "a" * 32, **S3})
    assert answer["ok"] is False
    assert answer["detail"].startswith("TLS certificate error: Fatal: x509:")
    (call,) = calls()
    assert call["argv"][1:] == [
        "-o",
        "s3.bucket-lookup=path",
        "-o",
        "s3.region=eu-west-1",
        "--no-cache",
        "--no-lock",
        "cat",
        "config",
    ]
    refused = runner.test_repository({"rpc_id": "a" * 32, "repository": dict(S3, cacert="x")})
    assert refused == {
        "ok": False,
        "detail": "refused by this host: cacert: no PEM certificate "
        "(-----BEGIN CERTIFICATE-----) in it",
    }
    assert len(calls()) == 1


# -- classes of backend errors (texts restic 0.14 printed; the real runs are in
# test_restic_real_backend_env.py) -----------------------------------------------------------


@pytest.mark.parametrize(
    "line, expected",
    [
        (
            "Fatal: unable to open config file: unexpected HTTP response (401): 401 Unauthorized",
            errors.AuthenticationRefused,
        ),
        (
            "Fatal: unable to open config file: Stat: The AWS Access Key Id you provided does "
            "not exist in our records. (InvalidAccessKeyId)",
            errors.AuthenticationRefused,
        ),
        ("Fatal: ... SignatureDoesNotMatch", errors.AuthenticationRefused),
        ("Fatal: ... Access Denied.", errors.AuthenticationRefused),
        ("Fatal: ... The specified bucket does not exist.", errors.RepositoryNotFound),
        ("Fatal: ... NoSuchBucket", errors.RepositoryNotFound),
        (
            'Fatal: unable to open config file: client.Head: Head "https://localhost:1/config":'
            " x509: certificate signed by unknown authority",
            errors.CertificateError,
        ),
        (
            "Fatal: ... dial tcp: lookup nothing.invalid on 10.0.0.53:53: no such host",
            errors.HostNotFound,
        ),
        ("Fatal: ... dial tcp 127.0.0.1:1: connect: connection refused", errors.ConnectionRefused),
        ("Fatal: ... dial tcp 10.1.1.1:443: i/o timeout", errors.BackendTimeout),
        ("subprocess ssh: Host key verification failed.", errors.HostKeyRejected),
        (
            "subprocess ssh: backup@127.0.0.1: Permission denied (publickey).",
            errors.AuthenticationRefused,
        ),
        ("Fatal: unable to open config file: <config/> does not exist", errors.RepositoryNotFound),
        ("Fatal: wrong password or no key found", errors.WrongPassword),
        (
            "Fatal: unable to open repository at sftp:u@h:/r: unable to start the sftp "
            "session, error: EOF",
            errors.SshSessionFailed,
        ),
    ],
)
def test_backend_errors_are_classified(line, expected):
    failure = errors.classify(1, ["Is there a repository at the following location?", line])
    assert type(failure) is expected
    if isinstance(failure, errors.BackendError):
        assert errors.describe(failure).startswith(failure.label + ": ")


def test_the_agent_home_stays_private(tmp_path):
    home = tmp_path / "new-home"
    repository = Repository({"url": "gs:b:/p", "env": {"GOOGLE_PROJECT_ID": "p"}}, home=home)
    with repository.run_setup(repository.everyday, ("restic", "x")):
        pass
    stored = {"url": "sftp:h:/r", "password": "p"}
    repository = Repository(stored, home=home)
    with repository.run_setup(repository.everyday, ("restic", "x")) as (argv, _):
        assert f"UserKnownHostsFile={home}/ssh_known_hosts" in argv[2]
        assert stat.S_IMODE(os.stat(home).st_mode) == 0o700


def test_ssh_words_come_before_restics_fatal_line():
    tail = [
        "subprocess ssh: backup@nas: Permission denied (publickey).",
        "Fatal: unable to open repository at sftp:backup@nas:/r: unable to start the sftp "
        "session, error: EOF",
    ]
    assert errors.error_message(tail, 1) == " / ".join(tail)


# -- rpc.repo_test through the running agent -------------------------------------------------


def test_rpc_repo_test_is_answered_and_never_stored(fake_server, agent_home, fake_restic):
    fake_server.queue(config_update())
    ready, wrong = "1" * 32, "2" * 32
    fake_server.queue(
        {
            "command_id": "c-test-1",
            "type": "rpc.repo_test",
            "payload": {
                "rpc_id": ready,
                "repository": {"url": "fake:ready", "password": "Unsaved-Pw-3"},
            },
        }
    )
    fake_server.queue(
        {
            "command_id": "c-test-2",
            "type": "rpc.repo_test",
            "payload": {"rpc_id": wrong, "url": "fake:wrongpw", "password": "Unsaved-Pw-4"},
        }
    )
    fake_server.queue({"command_id": "c-test-3", "type": "rpc.repo_test", "payload": {}})
    running = Running(Agent(agent_home, restic_binary=str(fake_restic)))
    try:
        assert wait_for(lambda: fake_server.rpc_answer(ready)) == {
            "ok": True,
            "detail": "repository reachable (id e8cb0f49df)",
        }
        assert wait_for(lambda: fake_server.rpc_answer(wrong)) == {
            "ok": False,
            "detail": "wrong password or key: Fatal: wrong password or no key found",
        }
        acks = wait_for(
            lambda: (
                {ack["command_id"]: ack for ack in list(fake_server.acks)}
                if len(fake_server.acks) >= 4
                else None
            )
        )
        assert acks["c-test-3"]["result"] == "rejected"
        assert acks["c-test-3"]["reason"] == "rpc.repo_test: payload.rpc_id must be 32 hex digits"
    finally:
        running.finish()
    stored = running.agent.secrets.load()
    assert stored["url"] == "fake:ready" and stored["password"] != "Unsaved-Pw-3"
    test_calls = [call for call in fake_restic.calls() if "--no-cache" in call["argv"]]
    assert sorted(call["env"]["RESTIC_PASSWORD"] for call in test_calls) == [
        "Unsaved-Pw-3",
        "Unsaved-Pw-4",
    ]
