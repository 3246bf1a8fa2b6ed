"""install/install.sh: syntax, shellcheck, the embedded unit, and a real --dry-run of the
script as served by a running `restic-manager serve`, downloading and verifying the agent."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.conftest import fresh_database_url

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "install" / "install.sh"
UNIT = ROOT / "install" / "restic-manager-agent.service"
TOKEN = "rme_not-a-real-token-0123456789"
SANDBOX = [
    "NoNewPrivileges=yes",
    "ProtectSystem=strict",
    "ProtectHome=read-only",
    "ReadWritePaths=/var/lib/restic-manager-agent /var/cache/restic",
    "PrivateTmp=yes",
    "ProtectKernelTunables=yes",
    "ProtectKernelModules=yes",
    "ProtectControlGroups=yes",
    "RestrictSUIDSGID=yes",
    "LockPersonality=yes",
    "Restart=always",
    "RestartSec=5",
    "Environment=RM_AGENT_HOME=/var/lib/restic-manager-agent",
    "Environment=RESTIC_CACHE_DIR=/var/cache/restic",
    "User=root",
]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Server:
    base: str
    data_dir: Path
    database_url: str

    def mint_enrollment_token(self) -> str:
        """A real one-time token, minted in the server's database under its secret key."""
        from app import create_app
        from app.extensions import db
        from app.models.types import utcnow
        from app.services import enrollment

        app = create_app(
            {
                "RM_DATA_DIR": self.data_dir,
                "RM_SECRET_KEY_FILE": self.data_dir / "secret.key",
                "SQLALCHEMY_DATABASE_URI": self.database_url,
            }
        )
        with app.app_context():
            _, plain = enrollment.mint_token(
                app.extensions["secretbox"],
                created_by=None,
                hostname=None,
                repo_url="/srv/restic-repo",
                repo_username="",
                repo_password="install-test-password",
                paths=["/etc"],
                now=utcnow(),
            )
            db.session.commit()
            db.session.remove()
            db.engine.dispose()
        return plain

    def host_count(self) -> int:
        import sqlalchemy as sa

        engine = sa.create_engine(self.database_url)
        try:
            with engine.connect() as connection:
                return connection.execute(sa.text("SELECT count(*) FROM hosts")).scalar_one()
        finally:
            engine.dispose()


@pytest.fixture
def server(tmp_path, migrated_template):
    """A real `restic-manager serve` (gunicorn + gevent) on this run's database."""
    port = _free_port()
    data_dir = tmp_path / "data"
    database_url = fresh_database_url(migrated_template, tmp_path)
    env = {key: value for key, value in os.environ.items() if not key.startswith("RM_")}
    env.update(
        {
            "RM_DATA_DIR": str(data_dir),
            "RM_DATABASE_URL": database_url,
            "PYTHONUNBUFFERED": "1",
        }
    )
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--bind", f"127.0.0.1:{port}"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{base}/healthz", timeout=5).status_code == 200:
                    break
            except requests.RequestException:  # not listening yet, or slow to answer
                pass
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        yield Server(base, data_dir, database_url)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def fake_root(tmp_path):
    """Cron files with restic jobs, under a directory the script scans instead of /."""
    root = tmp_path / "sysroot"
    (root / "etc" / "cron.d").mkdir(parents=True)
    (root / "etc" / "cron.daily").mkdir()
    (root / "var" / "spool" / "cron" / "crontabs").mkdir(parents=True)
    (root / "etc" / "cron.d" / "restic-backup").write_text(
        "SHELL=/bin/sh\n"
        "# restic check runs on Sundays (a comment: not reported)\n"
        "30 2 * * * root RESTIC_PASSWORD=hunter2 restic -r /srv/repo backup /etc\n"
        "0 4 * * * root /usr/bin/logrotate /etc/logrotate.conf\n"
    )
    (root / "etc" / "cron.d" / "unrelated").write_text("0 1 * * * root /usr/bin/true\n")
    daily = root / "etc" / "cron.daily" / "restic-forget"
    daily.write_text("#!/bin/sh\nrestic forget --keep-daily 7\n")
    daily.chmod(daily.stat().st_mode | stat.S_IXUSR)
    (root / "var" / "spool" / "cron" / "crontabs" / "alice").write_text(
        "15 * * * * restic backup /home/alice\n"
    )
    return root


def _shell_env(tmp_path, **extra) -> dict:
    """PATH whose python3 is this interpreter (it has cryptography), nothing else changed."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    python3 = bin_dir / "python3"
    if not python3.exists():
        python3.symlink_to(sys.executable)
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", TMPDIR=str(tmp_path), **extra)
    return env


def _run_script(path: Path, *arguments, env, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["sh", str(path), *arguments],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def test_install_script_parses():
    result = subprocess.run(["sh", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_install_script_passes_shellcheck():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    result = subprocess.run(
        ["shellcheck", "--shell=sh", str(SCRIPT)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout


def test_script_embeds_the_unit_file_verbatim():
    script = SCRIPT.read_text()
    embedded = re.search(r"<<'UNIT'\n(.*?\n)UNIT\n", script, re.DOTALL).group(1)
    assert embedded == UNIT.read_text()


def test_unit_is_sandboxed_and_restarts():
    lines = set(UNIT.read_text().splitlines())
    missing = [line for line in SANDBOX if line not in lines]
    assert missing == []
    assert "ExecStart=/usr/local/bin/restic-manager-agent run" in lines


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--dry-run"], "--server is required"),
        (["--dry-run", "--server", "https://backup.example.com"], "--token is required"),
        (["--dry-run", "--server", "ftp://x", "--token", TOKEN], "must be an http:// or https://"),
        (["--dry-run", "--server", "https://x", "--token", TOKEN, "--pin", "abc"], "64 hex"),
        (["--bogus"], "unknown option: --bogus"),
    ],
)
def test_script_refuses_bad_options_before_doing_anything(tmp_path, arguments, message):
    result = _run_script(SCRIPT, *arguments, env=_shell_env(tmp_path), cwd=tmp_path)
    assert result.returncode == 1
    assert message in result.stderr


def test_script_refuses_a_too_old_python(tmp_path):
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    old = sorted(pyenv_root.glob("versions/3.8.*/bin/python3.8")) or [Path("/usr/bin/python3.8")]
    if not os.access(old[0], os.X_OK):
        pytest.skip("no Python 3.8 installed here")
    arguments = ["--dry-run", "--server", "https://x", "--token", TOKEN, "--python", str(old[0])]
    result = _run_script(SCRIPT, *arguments, env=_shell_env(tmp_path), cwd=tmp_path)
    assert result.returncode == 1
    assert f"{old[0]} is Python 3.8; the agent needs Python 3.9 or newer" in result.stderr


def test_help_lists_the_options(tmp_path):
    result = _run_script(SCRIPT, "--help", env=_shell_env(tmp_path), cwd=tmp_path)
    assert result.returncode == 0
    for option in (
        "--server",
        "--token",
        "--ca-file",
        "--pin",
        "--python",
        "--reenroll",
        "--no-start",
        "--dry-run",
    ):
        assert option in result.stdout


def test_served_script_dry_run_downloads_verifies_and_changes_nothing(server, fake_root, tmp_path):
    served = requests.get(f"{server.base}/install/install.sh", timeout=30)
    assert served.status_code == 200
    script = tmp_path / "install.sh"
    script.write_text(served.text)
    cron_before = (fake_root / "etc" / "cron.d" / "restic-backup").read_text()
    installed_before = Path("/usr/local/lib/restic-manager-agent").exists()

    env = _shell_env(tmp_path, RM_INSTALL_SCAN_ROOT=str(fake_root))
    result = _run_script(
        script, "--dry-run", "--token", TOKEN, "--python", sys.executable, env=env, cwd=tmp_path
    )
    output = result.stdout
    assert result.returncode == 0, output + result.stderr

    # The server filled in its own URL: no --server needed.
    assert f"installer for {server.base} " in output
    assert f"Downloading the agent from {server.base}" in output
    version = requests.get(f"{server.base}/agent/version", timeout=30).json()
    assert f"sha256 {version['sha256']}: verified" in output
    assert f"restic-manager-agent {version['version']} runs with {sys.executable}" in output
    assert f"exec '{sys.executable}' '/usr/local/lib/restic-manager-agent/" in output
    for expected in (
        "Checking Python",
        "would run: install -m 0644",
        "would write /usr/local/bin/restic-manager-agent (mode 0755)",
        f"would run: /usr/local/bin/restic-manager-agent --home /var/lib/restic-manager-agent "
        f"enroll --server {server.base} --token - (the token on standard input)",
        "would write /etc/systemd/system/restic-manager-agent.service (mode 0644)",
        "| ProtectSystem=strict",
        "would run: systemctl daemon-reload",
        "would run: systemctl enable restic-manager-agent",
        "Dry run: nothing was changed",
    ):
        assert expected in output, expected
    assert TOKEN not in output + result.stderr

    # P1-29: existing restic schedules are listed with their disable commands, left alone.
    cron_file = fake_root / "etc" / "cron.d" / "restic-backup"
    assert f"  {cron_file}\n" in output
    assert "RESTIC_PASSWORD=**** restic -r /srv/repo backup /etc" in output
    assert "hunter2" not in output
    assert "restic check runs on Sundays" not in output  # comments are not jobs
    assert "unrelated" not in output
    assert f"disable with: chmod -x {fake_root}/etc/cron.daily/restic-forget" in output
    assert "crontab of alice" in output
    assert "disable with: crontab -u alice -l | sed '" in output
    assert "were left as they are" in output
    assert cron_file.read_text() == cron_before
    assert Path("/usr/local/lib/restic-manager-agent").exists() == installed_before

    # The printed command is exact: it comments out the restic line and nothing else.
    command = re.search(rf"disable with: (sed -i .* {re.escape(str(cron_file))})\n", output)
    subprocess.run(["sh", "-c", command.group(1)], check=True)
    disabled = cron_file.read_text().splitlines()
    assert disabled[2].startswith("#restic-manager# 30 2 * * * root RESTIC_PASSWORD")
    assert disabled[3] == "0 4 * * * root /usr/bin/logrotate /etc/logrotate.conf"
    assert disabled[:2] == cron_before.splitlines()[:2]


def test_dry_run_no_start_and_explicit_server(server, tmp_path):
    script = tmp_path / "install.sh"
    script.write_text(SCRIPT.read_text())  # the repository copy: nothing pre-filled
    empty_root = tmp_path / "empty-root"
    empty_root.mkdir()
    env = _shell_env(tmp_path, RM_INSTALL_SCAN_ROOT=str(empty_root))
    result = _run_script(
        script,
        "--dry-run",
        "--no-start",
        f"--server={server.base}/",
        "--token",
        TOKEN,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Not starting the agent (--no-start)" in result.stdout
    assert "systemctl enable" not in result.stdout.split("Not starting")[0]
    assert f"enroll --server {server.base} --token" in result.stdout  # trailing slash dropped
    assert "none found" in result.stdout


FAKE_SYSTEMCTL = """#!/bin/sh
echo "systemctl $*" >>"$SYSTEMCTL_LOG"
exit 0
"""
# Run inside a private mount namespace: the system directories the installer writes are
# bind-mounted from the test's temporary directory, so the real system is never touched.
INSTALL_IN_NAMESPACE = """
set -eu
for target in /usr/local/lib /usr/local/bin /etc/systemd/system /var/lib /var/cache /run; do
    source="$FAKE_ROOT$target"
    mkdir -p "$source"
    mount --bind "$source" "$target"
done
mkdir -p /run/systemd/system
sh "$SCRIPT" --token "$TOKEN" --python "$PYTHON"
echo "== same token again"
if sh "$SCRIPT" --token "$TOKEN" --python "$PYTHON"; then exit 99; fi
echo "== upgrade"
sh "$SCRIPT" --python "$PYTHON"
/usr/local/bin/restic-manager-agent --version
"""


def _can_use_mount_namespaces() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", "mount -t tmpfs x /mnt"],
        capture_output=True,
    )
    return probe.returncode == 0


def test_real_install_in_a_private_mount_namespace(server, tmp_path):
    """Not a dry run: the served script installs, verifies and enrolls for real (systemctl is
    faked; the system directories are the test's own, mounted in a private namespace)."""
    if not _can_use_mount_namespaces():
        pytest.skip("needs root and mount namespaces (unshare)")
    if shutil.which("restic") is None:
        pytest.skip("restic is not installed (the installer would install it)")
    fake_root = tmp_path / "root"
    empty_scan_root = tmp_path / "scan"
    empty_scan_root.mkdir()
    script = tmp_path / "install.sh"
    script.write_text(requests.get(f"{server.base}/install/install.sh", timeout=30).text)
    bin_dir = tmp_path / "bin"  # _shell_env puts it first on PATH
    bin_dir.mkdir()
    (bin_dir / "systemctl").write_text(FAKE_SYSTEMCTL)
    (bin_dir / "systemctl").chmod(0o755)
    token = server.mint_enrollment_token()
    env = _shell_env(
        tmp_path,
        FAKE_ROOT=str(fake_root),
        SCRIPT=str(script),
        TOKEN=token,
        PYTHON=sys.executable,
        SYSTEMCTL_LOG=str(tmp_path / "systemctl.log"),
        RM_INSTALL_SCAN_ROOT=str(empty_scan_root),
    )
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", INSTALL_IN_NAMESPACE],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=180,
        stdin=subprocess.DEVNULL,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert token not in output

    version = requests.get(f"{server.base}/agent/version", timeout=30).json()
    assert result.stdout.rstrip().endswith(f"restic-manager-agent {version['version']}")
    installed = fake_root / "usr/local/lib/restic-manager-agent/restic-manager-agent.pyz"
    assert hashlib.sha256(installed.read_bytes()).hexdigest() == version["sha256"]
    wrapper = (fake_root / "usr/local/bin/restic-manager-agent").read_text()
    assert f"exec '{sys.executable}' '/usr/local/lib/restic-manager-agent/" in wrapper
    home = fake_root / "var/lib/restic-manager-agent"
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert (home / "state.json").is_file()  # enrolled
    assert server.host_count() == 1
    unit = fake_root / "etc/systemd/system/restic-manager-agent.service"
    assert unit.read_text() == UNIT.read_text()
    # Run again with a token on an enrolled host: refused before anything changes.
    assert "this host is already enrolled" in result.stderr
    first, upgrade = result.stdout.split("== same token again")[1].split("== upgrade")
    assert "==> " not in first
    assert "No --token: keeping this host's enrollment" in upgrade
    assert (tmp_path / "systemctl.log").read_text().splitlines()[:3] == [
        "systemctl daemon-reload",
        "systemctl enable restic-manager-agent",
        "systemctl restart restic-manager-agent",
    ]
