"""The agent's backend support with the real restic (0.14 here): ``rpc.repo_test`` against a
closed port, an unknown host, a self-signed TLS server, a silent server and a local
repository with the wrong password; a password-protected REST server (``rclone serve
restic --htpasswd``) reached with the REST password only in the settings' env, through
jobs (init, backup, snapshots, restore) and the repository test; and the error classes of
every captured backend failure (tests/agent/fixtures/backend_errors/).
"""

import json
import logging
import socket
import ssl
import threading
from pathlib import Path

import pytest

from agent.restic import errors
from agent.restic.messages import clean
from agent.rpc import RpcRunner
from tests.agent.real_restic import RunnerJobs, needs_restic, run_restic
from tests.backend_servers import (
    free_port,
    generate_ssh_key,
    rest_server,
    self_signed_certificate,
    sftp_server,
)

pytestmark = needs_restic()
PASSWORD = "Repo-Pass-env-5b2e"
CAPTURES = Path(__file__).parent / "fixtures" / "backend_errors"


def repo_tester(tmp_path, **options):
    home = tmp_path / "agent-home"
    return RpcRunner(lambda: None, lambda: None, agent_home=home, **options)


def try_settings(runner, **section):
    return runner.test_repository({"rpc_id": "0" * 32, "repository": section})


# -- repository test: restic's own words, class first ------------------------------------


def test_a_closed_port_is_connection_refused(tmp_path):
    answer = try_settings(
        repo_tester(tmp_path), url=f"rest:http://127.0.0.1:{free_port()}/", password="Not-The-Pw-1"
    )
    assert answer["ok"] is False
    assert answer["detail"].startswith("connection refused: Fatal: unable to open config file")
    assert answer["detail"].endswith("connect: connection refused")


def test_an_unknown_host_is_host_not_found(tmp_path):
    answer = try_settings(
        repo_tester(tmp_path), url="rest:http://backup-host.invalid:8000/", password="Not-The-Pw-1"
    )
    assert answer["ok"] is False
    assert answer["detail"].startswith("host not found: Fatal: unable to open config file")
    assert "no such host" in answer["detail"]


def test_a_local_repository_with_the_wrong_password_and_the_right_one(tmp_path):
    repo = tmp_path / "repo"
    run_restic(repo, PASSWORD, "init")
    tester = repo_tester(tmp_path)
    wrong = try_settings(tester, url=str(repo), password="not-the-password")
    assert wrong == {
        "ok": False,
        "detail": "wrong password or key: Fatal: wrong password or no key found",
    }
    right = try_settings(tester, url=str(repo), password=PASSWORD)
    config = json.loads(run_restic(repo, PASSWORD, "cat", "config"))
    assert right == {"ok": True, "detail": f"repository reachable (id {config['id'][:10]})"}
    missing = try_settings(tester, url=str(tmp_path / "nothing"), password=PASSWORD)
    assert missing["ok"] is False
    assert missing["detail"].startswith("repository missing: Fatal: unable to open config file")
    assert not (tmp_path / "agent-home" / "cache").exists()  # --no-cache: nothing kept


class TlsServer:
    """HTTPS on loopback with a self-signed certificate; every request answers 404."""

    def __init__(self, directory: Path):
        self.cert, key = self_signed_certificate(directory, "loopback")
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(str(self.cert), str(key))
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                connection, _ = self.sock.accept()
            except OSError:
                return
            try:
                with self.context.wrap_socket(connection, server_side=True) as tls:
                    tls.recv(65536)
                    tls.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            except (OSError, ssl.SSLError):
                connection.close()

    def close(self):
        self.sock.close()


def test_a_self_signed_certificate_is_a_tls_error_until_cacert_or_insecure_tls(tmp_path):
    server = TlsServer(tmp_path)
    tester = repo_tester(tmp_path)
    url = f"rest:https://127.0.0.1:{server.port}/"
    try:
        refused = try_settings(tester, url=url, password="Not-The-Pw-1")
        assert refused["ok"] is False
        assert refused["detail"].startswith("TLS certificate error: Fatal: ")
        assert "x509: certificate signed by unknown authority" in refused["detail"]
        # The same server trusted through --cacert: restic gets through and finds nothing.
        trusted = try_settings(
            tester, url=url, password="Not-The-Pw-1", cacert=server.cert.read_text()
        )
        assert trusted["detail"].startswith("repository missing: Fatal: unable to open config")
        insecure = try_settings(tester, url=url, password="Not-The-Pw-1", insecure_tls=True)
        assert insecure["detail"].startswith("repository missing: Fatal: unable to open config")
    finally:
        server.close()
    assert not list((tmp_path / "agent-home").glob("restic-run-*"))


def test_a_server_that_never_answers_is_a_timeout(tmp_path):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts connections (the kernel does) and never says a word
    try:
        tester = repo_tester(tmp_path, repo_test_timeout=2)
        answer = try_settings(
            tester, url=f"rest:http://127.0.0.1:{silent.getsockname()[1]}/", password="Not-The-Pw-1"
        )
    finally:
        silent.close()
    assert answer == {"ok": False, "detail": "timeout: restic got no answer within 2 s"}


# -- a password-protected REST server, the password only in the settings' env --------------


def test_rest_server_with_basic_auth_through_jobs_and_the_repository_test(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    with rest_server(tmp_path / "rest", password="rest p@ss/Wörd-8e1") as server:
        credentials = {
            "url": server.url("host-a/"),  # no user or password inside
            "username": server.user,
            "password": PASSWORD,
            "env": {"RESTIC_REST_PASSWORD": server.password},
        }
        home = tmp_path / "agent-home"
        jobs = RunnerJobs(
            tmp_path, lambda: credentials, agent_home=home, restore_paths=str(tmp_path)
        )
        assert jobs.runner.restic_version.startswith("0.14")  # the URL branch is the one tested

        tester = repo_tester(tmp_path)
        before = try_settings(tester, **credentials)
        assert before["ok"] is False and before["detail"].startswith("repository missing: ")

        probe = jobs.run("probe")
        assert probe.of("repo.status")[0]["status"] == "missing"
        init = jobs.run("init")
        assert init.finished["status"] == "succeeded", init.texts
        source = tmp_path / "data"
        source.mkdir()
        (source / "notes.txt").write_text("backed up through the REST server\n")
        backup = jobs.run("backup", {"paths": [str(source)], "tags": ["default"]})
        assert backup.finished["status"] == "succeeded", backup.texts
        (snapshots,) = backup.of("snapshots.report")
        (snapshot,) = snapshots["snapshots"]
        target = tmp_path / "restored"
        restore = jobs.run(
            "restore",
            {"snapshot_id": snapshot["id"], "include": [str(source)], "target": str(target)},
        )
        assert restore.finished["status"] == "succeeded", restore.texts
        restored = target / str(source).lstrip("/") / "notes.txt"
        assert restored.read_text() == "backed up through the REST server\n"
        assert (server.data / "host-a" / "config").exists()

        after = try_settings(tester, **credentials)
        assert after["ok"] is True and after["detail"].startswith("repository reachable (id ")
        wrong_env = dict(credentials["env"], RESTIC_REST_PASSWORD="wrong")
        wrong = try_settings(tester, **dict(credentials, env=wrong_env))
        assert wrong["ok"] is False
        assert wrong["detail"].startswith(
            "authentication refused: Fatal: unable to open config file: "
            "unexpected HTTP response (401)"
        )

    runs = [probe, init, backup, restore]
    logged = json.dumps([run.texts for run in runs]) + json.dumps([run.events for run in runs])
    everything = logged + json.dumps([before, after, wrong]) + caplog.text
    for secret in (server.password, "rest%20p%40ss%2FW%C3%B6rd-8e1", PASSWORD):
        assert secret not in everything
    command_lines = [line for run in runs for line in run.restic_calls]
    assert command_lines and all(server.user + ":" not in line for line in command_lines)
    assert not list(home.glob("restic-run-*"))


# -- every captured backend failure has its class -------------------------------------------

CAPTURED_CLASSES = {
    "connection_refused": errors.ConnectionRefused,
    "dns_failure": errors.HostNotFound,
    "rest_no_password": errors.AuthenticationRefused,
    "rest_wrong_password": errors.AuthenticationRefused,
    "rest_no_repository": errors.RepositoryNotFound,
    "s3_bucket_missing": errors.RepositoryNotFound,
    "s3_no_repository_in_bucket": errors.RepositoryNotFound,
    "s3_tls_self_signed": errors.CertificateError,
    "s3_wrong_access_key": errors.AuthenticationRefused,
    "s3_wrong_secret_key": errors.AuthenticationRefused,
    "s3_wrong_secret_key_init": errors.AuthenticationRefused,
    "sftp_no_repository": errors.RepositoryNotFound,
    "sftp_unknown_host_key": errors.HostKeyRejected,
    "sftp_wrong_key": errors.AuthenticationRefused,
    "tls_self_signed": errors.CertificateError,
}


def captured(name):
    text = (CAPTURES / f"{name}.txt").read_text()
    code = int(text.split("# exit code: ")[1].split("\n")[0])
    stderr = text.split("# ===== stderr =====\n")[1]
    command = text.split("# command: restic ")[1].split("\n")[0].split()[0]
    return code, [clean(line) for line in stderr.splitlines() if line.strip()], command


@pytest.mark.parametrize("name", sorted(CAPTURED_CLASSES))
def test_every_captured_backend_failure_has_its_class(name):
    assert (CAPTURES / f"{name}.txt").exists(), f"{name}: captured by test_restic_real_backends.py"
    code, stderr, command = captured(name)
    failure = errors.classify(code, stderr, command)
    assert type(failure) is CAPTURED_CLASSES[name], stderr


# -- SFTP: the agent's own sftp.command, the key only in the settings ----------------------


def test_sftp_with_the_key_only_in_the_settings(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    with sftp_server(tmp_path / "sftp") as server:
        key = server.key.read_text()
        repo_path = server.data / "host-a"
        credentials = {
            "url": f"sftp://{server.user}@127.0.0.1:{server.port}/{repo_path}",
            "password": PASSWORD,
            "files": {"SFTP_PRIVATE_KEY": key, "SFTP_KNOWN_HOSTS": server.known_hosts.read_text()},
        }
        home = tmp_path / "agent-home"
        jobs = RunnerJobs(tmp_path, lambda: credentials, agent_home=home)
        init = jobs.run("init")
        assert init.finished["status"] == "succeeded", init.texts
        assert (repo_path / "config").exists()
        source = tmp_path / "data"
        source.mkdir()
        (source / "a.txt").write_text("over sftp\n")
        backup = jobs.run("backup", {"paths": [str(source)], "tags": ["default"]})
        assert backup.finished["status"] == "succeeded", backup.texts
        assert "-o 'sftp.command=ssh -i " in backup.restic_calls[0]

        tester = repo_tester(tmp_path)
        assert try_settings(tester, **credentials)["ok"] is True
        # No known_hosts in the settings: the first key is accepted into the home's file.
        first_seen = dict(credentials, files={"SFTP_PRIVATE_KEY": key})
        assert try_settings(tester, **first_seen)["ok"] is True
        assert "ssh-ed25519" in (home / "ssh_known_hosts").read_text()
        other_key = generate_ssh_key(tmp_path / "other_key").read_text()
        refused = try_settings(
            tester,
            **dict(credentials, files=dict(credentials["files"], SFTP_PRIVATE_KEY=other_key)),
        )
        assert refused["ok"] is False
        # restic 0.14 may exit before it printed ssh's "Permission denied (publickey)."
        assert refused["detail"].startswith(
            (
                "authentication refused: subprocess ssh: ",
                "SSH login failed (check the key, the host key and the address): Fatal: ",
            )
        ), refused

    everything = json.dumps([init.texts, backup.texts, refused]) + caplog.text
    for line in key.splitlines() + other_key.splitlines():
        if len(line.strip()) > 8:
            assert line.strip() not in everything
    assert not list(home.glob("restic-run-*"))
