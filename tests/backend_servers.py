"""Real repository servers on loopback for the backend tests (issue 16): no mocks.

Each ``*_server(root)`` is a context manager that starts one server process in its own
process group on a free 127.0.0.1 port, waits until it answers, yields a small object that
knows the restic URL and credentials, and on exit kills the process group:

- ``rest_server(root, tls=False)``: ``rclone serve restic`` with HTTP basic auth
  (an htpasswd file made by ``openssl passwd -apr1``); with ``tls=True`` it serves HTTPS with
  a self-signed certificate for 127.0.0.1 (``RestServer.cacert`` is its PEM file).
- ``s3_server(root)``: ``moto_server`` (PyPI ``moto[server]``) with IAM authentication on:
  one IAM user whose access key may do ``s3:*``; any other key id is refused
  (InvalidAccessKeyId) and a wrong secret key fails the signature (SignatureDoesNotMatch).
- ``sftp_server(root)``: Debian's OpenSSH ``sshd`` with its own host key and config, the
  current user allowed in with one generated client key, sftp only.

Tools missing: ``require_tools(...)`` skips, or fails under ``RM_REQUIRE_RESTIC=1`` (CI), like
``tests/agent/real_restic.py``. Nothing here imports moto or boto3 at import time, so the
agent-only Python 3.9 run can collect modules that use it (mark them ``server``).
"""

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import pytest

RCLONE = shutil.which("rclone")
SSHD = shutil.which("sshd") or next(
    (path for path in ("/usr/sbin/sshd",) if os.access(path, os.X_OK)), None
)
SSH = shutil.which("ssh")
SSH_KEYGEN = shutil.which("ssh-keygen")
OPENSSL = shutil.which("openssl")
MOTO_SERVER = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which(
    "moto_server"
)

TOOLS = {
    "rclone": (RCLONE, "apt-get install rclone"),
    "sshd": (SSHD, "apt-get install openssh-server"),
    "ssh": (SSH, "apt-get install openssh-client"),
    "ssh-keygen": (SSH_KEYGEN, "apt-get install openssh-client"),
    "openssl": (OPENSSL, "apt-get install openssl"),
    "moto_server": (MOTO_SERVER, "pip install -e '.[test]' (moto[server])"),
}


def require_tools(*names: str) -> None:
    """Skip the calling test when a tool is missing; fail instead under RM_REQUIRE_RESTIC=1.

    Call it inside a fixture or test (not at import time), so that a module deselected with
    ``-m "not server"`` never fails for a tool it would not have used."""
    missing = [f"{name} ({TOOLS[name][1]})" for name in names if TOOLS[name][0] is None]
    if not missing:
        return
    message = "not installed: " + ", ".join(missing)
    if os.environ.get("RM_REQUIRE_RESTIC") == "1":
        pytest.fail(message + " but RM_REQUIRE_RESTIC=1", pytrace=False)
    pytest.skip(message + " (set RM_REQUIRE_RESTIC=1 to fail)")


def free_port() -> int:
    """A port nobody listens on right now (the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, log: Path, timeout: float = 30) -> None:
    """Until ``port`` accepts a TCP connection; fails with the server's log if it died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{_tail(log)}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"server did not listen on 127.0.0.1:{port}:\n{_tail(log)}")


def _tail(log: Path) -> str:
    try:
        return log.read_text(errors="replace")[-4000:]
    except OSError:
        return ""


@contextlib.contextmanager
def _process(argv: List[str], log: Path, env: Optional[Dict[str, str]] = None):
    """A server process in its own process group; the group is killed on exit."""
    with open(log, "ab") as out:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                process.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue


def _run(argv: List[str], input: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(argv, input=input, capture_output=True, check=True, text=True)


def self_signed_certificate(directory: Path, name: str = "tls") -> "tuple[Path, Path]":
    """A self-signed certificate for 127.0.0.1/localhost: (cert.pem, key.pem)."""
    require_tools("openssl")
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    _run([
        OPENSSL, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
        "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
    ])  # fmt: skip
    return cert, key


# --- REST server (rclone serve restic) ---------------------------------------------------


@dataclass
class RestServer:
    port: int
    user: str
    password: str
    data: Path  # the directory rclone serves
    scheme: str = "http"
    cacert: Optional[Path] = None  # the self-signed certificate's PEM (tls=True)

    def url(self, path: str = "", user: Optional[str] = None, password: Optional[str] = None):
        """``rest:http://[user:password@]127.0.0.1:<port>/<path>``; no credentials when both
        are None (restic < 0.17 takes them only inside the URL)."""
        auth = ""
        if user is not None or password is not None:
            auth = f"{user or ''}:{password or ''}@"
        return f"rest:{self.scheme}://{auth}127.0.0.1:{self.port}/{path}"

    def authed_url(self, path: str = "") -> str:
        return self.url(path, self.user, self.password)


@contextlib.contextmanager
def rest_server(
    root: Path,
    user: str = "backup",
    password: str = "rest-Pass-4f1e",  # noqa: S107 (a throwaway test server's)
    tls: bool = False,
) -> Iterator[RestServer]:
    """``rclone serve restic`` on a free loopback port with HTTP basic auth."""
    require_tools("rclone", "openssl")
    root.mkdir(parents=True, exist_ok=True)
    data = root / "rest-data"
    data.mkdir()
    hashed = _run([OPENSSL, "passwd", "-apr1", "-stdin"], input=password).stdout.strip()
    htpasswd = root / "htpasswd"
    htpasswd.write_text(f"{user}:{hashed}\n")
    port = free_port()
    argv = [
        RCLONE, "serve", "restic", "--addr", f"127.0.0.1:{port}", "--htpasswd", str(htpasswd),
        "--config", str(root / "rclone.conf"), "--cache-dir", str(root / "rclone-cache"),
    ]  # fmt: skip
    server = RestServer(port, user, password, data)
    if tls:
        cert, key = self_signed_certificate(root, "rest")
        argv += ["--cert", str(cert), "--key", str(key)]
        server.scheme, server.cacert = "https", cert
    log = root / "rclone.log"
    with _process([*argv, str(data)], log) as process:
        wait_for_port(port, process, log)
        yield server


# --- S3 (moto_server) --------------------------------------------------------------------


@dataclass
class S3Server:
    port: int
    access_key: str
    secret_key: str
    region: str = "us-east-1"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, bucket: str, prefix: str = "") -> str:
        """``s3:http://127.0.0.1:<port>/<bucket>[/<prefix>]``."""
        return f"s3:{self.endpoint}/{bucket}" + (f"/{prefix}" if prefix else "")

    def env(self, access_key: Optional[str] = None, secret_key: Optional[str] = None):
        """The AWS_* variables restic reads (the server's own key unless given)."""
        return {
            "AWS_ACCESS_KEY_ID": access_key or self.access_key,
            "AWS_SECRET_ACCESS_KEY": secret_key or self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
        }

    def client(self):
        """A boto3 S3 client with the server's key (to look at buckets from a test)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
        )


@contextlib.contextmanager
def s3_server(root: Path) -> Iterator[S3Server]:
    """``moto_server`` on a free loopback port, IAM authentication enforced.

    moto accepts any credentials by default. It checks them only once its request count has
    reached INITIAL_NO_AUTH_ACTION_COUNT (default: never); so the IAM user and its key are
    created while it still accepts anything, then POST /moto-api/reset-auth with 0 turns
    authentication on for every later request (moto's own "reset-auth" endpoint)."""
    require_tools("moto_server")
    import boto3
    import requests

    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(root),
        # moto's own credentials for anything it does internally; not the test's key.
        "AWS_ACCESS_KEY_ID": "moto-internal",
        "AWS_SECRET_ACCESS_KEY": "moto-internal",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    log = root / "moto.log"
    with _process([MOTO_SERVER, "-H", "127.0.0.1", "-p", str(port)], log, env) as process:
        wait_for_port(port, process, log)
        endpoint = f"http://127.0.0.1:{port}"
        iam = boto3.client(
            "iam",
            endpoint_url=endpoint,
            aws_access_key_id="bootstrap",
            aws_secret_access_key="bootstrap",
            region_name="us-east-1",
        )
        iam.create_user(UserName="restic")
        iam.put_user_policy(
            UserName="restic",
            PolicyName="s3-all",
            PolicyDocument=(
                '{"Version": "2012-10-17", "Statement": '
                '[{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}'
            ),
        )
        key = iam.create_access_key(UserName="restic")["AccessKey"]
        response = requests.post(f"{endpoint}/moto-api/reset-auth", data=b"0", timeout=10)
        response.raise_for_status()
        yield S3Server(port, key["AccessKeyId"], key["SecretAccessKey"])


# --- SFTP (OpenSSH sshd) -----------------------------------------------------------------


@dataclass
class SftpServer:
    port: int
    user: str
    key: Path  # the client's private key (0600)
    known_hosts: Path  # one line: [127.0.0.1]:<port> <host key>
    data: Path  # a directory the user may write, for repositories

    def url(self, name: str = "repo") -> str:
        """``sftp:<user>@127.0.0.1:<absolute path>`` (host and port come from sftp.command)."""
        return f"sftp:{self.user}@127.0.0.1:{self.data / name}"

    def ssh_command(
        self, key: Optional[Path] = None, known_hosts: Optional[Path] = None, strict: str = "yes"
    ) -> str:
        """What restic 0.14 takes as ``-o sftp.command=…`` (the contract's form)."""
        return (
            f"ssh -i {key or self.key} -o IdentitiesOnly=yes -o BatchMode=yes -p {self.port}"
            f" -o UserKnownHostsFile={known_hosts or self.known_hosts}"
            f" -o StrictHostKeyChecking={strict} -l {self.user} 127.0.0.1 -s sftp"
        )


def generate_ssh_key(path: Path, comment: str = "restic-manager-test") -> Path:
    """A fresh ed25519 key pair at ``path`` / ``path.pub``."""
    require_tools("ssh-keygen")
    _run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])
    return path


@contextlib.contextmanager
def sftp_server(root: Path) -> Iterator[SftpServer]:
    """Debian's sshd on a free loopback port: its own host key and config, the current user
    with one authorised key, password login off, internal-sftp forced.

    As root sshd needs its privilege separation directory /run/sshd (the Debian package's
    service creates it at boot; here it is created when missing)."""
    require_tools("sshd", "ssh", "ssh-keygen")
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    user = pwd.getpwuid(os.getuid()).pw_name
    host_key = generate_ssh_key(root / "ssh_host_ed25519_key", "host")
    client_key = generate_ssh_key(root / "client_key", "client")
    authorized = root / "authorized_keys"
    authorized.write_text((root / "client_key.pub").read_text())
    authorized.chmod(0o600)
    data = root / "sftp-data"
    data.mkdir()
    port = free_port()
    known_hosts = root / "known_hosts"
    host_public = (root / "ssh_host_ed25519_key.pub").read_text().split()
    known_hosts.write_text(f"[127.0.0.1]:{port} {host_public[0]} {host_public[1]}\n")
    config = root / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {host_key}",
                f"PidFile {root / 'sshd.pid'}",
                f"AuthorizedKeysFile {authorized}",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PermitRootLogin prohibit-password",
                "UsePAM no",
                "StrictModes no",
                f"AllowUsers {user}",
                "Subsystem sftp internal-sftp",
                "ForceCommand internal-sftp",
                "AllowTcpForwarding no",
                "X11Forwarding no",
                "LogLevel VERBOSE",
                "",
            ]
        )
    )
    if os.getuid() == 0 and not os.path.isdir("/run/sshd"):
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    log = root / "sshd.log"
    with _process([SSHD, "-f", str(config), "-D", "-e"], log) as process:
        wait_for_port(port, process, log)
        yield SftpServer(port, user, client_key, known_hosts, data)


# --- TLS with a self-signed certificate (for the TLS error capture) ------------------------


@contextlib.contextmanager
def self_signed_tls_server(root: Path) -> Iterator["tuple[int, Path]"]:
    """``openssl s_server`` on a free loopback port with a self-signed certificate:
    (port, cert.pem). Any TLS client that verifies certificates refuses it."""
    require_tools("openssl")
    root.mkdir(parents=True, exist_ok=True)
    cert, key = self_signed_certificate(root, "s_server")
    port = free_port()
    log = root / "s_server.log"
    argv = [
        OPENSSL, "s_server", "-accept", f"127.0.0.1:{port}", "-cert", str(cert),
        "-key", str(key), "-www", "-quiet",
    ]  # fmt: skip
    with _process(argv, log) as process:
        wait_for_port(port, process, log)
        yield port, cert
