"""The README's "done when", for real: `restic-manager serve` (gunicorn + gevent), the printed
setup URL, creating the admin, minting a token, curl-style API call, graceful SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import fresh_database_url

CSRF = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')
SETUP_URL = re.compile(r"(http://\S+/login\?setup_token=(rmsetup_\S+))")
TOKEN = re.compile(r'id="new-token" class="secret__value">(rmp_[^<]+)<')


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for(url: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except (requests.ConnectionError, requests.Timeout):  # not up yet, or busy booting
            time.sleep(0.1)
    raise AssertionError(f"{url} did not come up")


def _start_serve(tmp_path, database_url, port, extra_env=None):
    log_path = tmp_path / "server.log"
    env = {key: value for key, value in os.environ.items() if not key.startswith("RM_")}
    env.update(
        {
            "RM_DATA_DIR": str(tmp_path / "data"),
            "RM_DATABASE_URL": database_url,
            "PYTHONUNBUFFERED": "1",
            **(extra_env or {}),
        }
    )
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--bind", f"127.0.0.1:{port}"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=Path(__file__).resolve().parents[2],
        )
    return process, log_path


@pytest.fixture
def server(tmp_path, migrated_template):
    """The real server on this run's database (a fresh SQLite copy, or truncated PostgreSQL)."""
    port = _free_port()
    process, log_path = _start_serve(
        tmp_path, fresh_database_url(migrated_template, tmp_path), port
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_for(f"{base}/healthz", time.monotonic() + 30)
        yield process, base, log_path
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_serve_first_run_to_api_token_and_graceful_stop(server, tmp_path):
    process, base, log_path = server
    output = log_path.read_text()
    match = SETUP_URL.search(output)
    assert match, output
    # "listening" is said by the worker once it has loaded the app, not before it booted.
    listening = output.index(f"restic-manager listening on {base} (1 worker)")
    assert output.index("Booting worker") < listening
    setup_url, setup_token = match.groups()
    assert setup_url.startswith(base)

    assert requests.get(f"{base}/readyz", timeout=5).json() == {
        "status": "ready",
        "database": "ok",
    }
    anonymous = requests.get(f"{base}/api/v1/hosts", timeout=5)
    assert anonymous.status_code == 401
    assert anonymous.json()["error"] == "unauthenticated"

    browser = requests.Session()
    page = browser.get(setup_url, timeout=5).text
    assert "Create the administrator" in page
    created = browser.post(
        f"{base}/setup",
        data={
            "csrf_token": CSRF.search(page).group(1),
            "token": setup_token,
            "username": "admin",
            "password": "a long enough passphrase",
            "confirm": "a long enough passphrase",
        },
        timeout=10,
    )
    assert created.status_code == 200, created.text
    assert "Add your first host" in created.text

    tokens_page = browser.get(f"{base}/settings/tokens", timeout=5).text
    minted = browser.post(
        f"{base}/settings/tokens",
        data={"csrf_token": CSRF.search(tokens_page).group(1), "name": "curl"},
        timeout=5,
    )
    plain = TOKEN.search(minted.text).group(1)
    curl = subprocess.run(
        ["curl", "-sS", "-H", f"Authorization: Bearer {plain}", f"{base}/api/v1/hosts"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    assert curl.stdout.strip() == '{"items":[],"next_cursor":null}'

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    log = log_path.read_text()
    assert "a long enough passphrase" not in log
    assert plain not in log
    assert "Shutting down" in log or "Handling signal: term" in log


def _serve_with_refused_import(tmp_path, migrated_template, refused: str, error: str):
    """Run `serve` with a sitecustomize that makes importing `refused` raise `error` in every
    Python process it starts (a real failure, without touching the code); it must stop by
    itself. Returns its exit status and everything it printed."""
    folder = tmp_path / "fault"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(
        "import sys\n"
        "class _Refuse:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name == {refused!r} or name.startswith({refused!r} + '.'):\n"
        f"            raise {error}\n"
        "sys.meta_path.insert(0, _Refuse())\n"
    )
    process, log_path = _start_serve(
        tmp_path,
        fresh_database_url(migrated_template, tmp_path),
        _free_port(),
        {"PYTHONPATH": str(folder)},
    )
    try:
        status = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    return status, log_path.read_text()


def test_a_worker_that_cannot_load_the_app_stops_serve_with_its_error_last(
    tmp_path, migrated_template
):
    # Only gunicorn's worker imports wsgi.py: the serve command itself starts normally.
    status, output = _serve_with_refused_import(
        tmp_path,
        migrated_template,
        "wsgi",
        "RuntimeError('simulated: the database is unreachable')",
    )
    assert status != 0, output
    assert "listening on" not in output
    last_line = output.strip().splitlines()[-1]
    assert last_line == (
        "restic-manager could not start: RuntimeError: simulated: the database is unreachable"
    )


def test_serve_refuses_at_once_when_the_gevent_worker_cannot_load(tmp_path, migrated_template):
    # gunicorn 27's gevent worker imports `packaging`, declared only under gunicorn[gevent].
    status, output = _serve_with_refused_import(
        tmp_path,
        migrated_template,
        "packaging",
        "ModuleNotFoundError(\"No module named 'packaging'\")",
    )
    assert status == 1, output
    assert "setup_token" not in output  # nothing is announced before the check
    assert "gunicorn cannot load its gevent worker (No module named 'packaging')" in output


def test_an_unreachable_database_is_one_clear_line_without_the_password(tmp_path):
    url = f"postgresql://backup:hunter2-secret@127.0.0.1:{_free_port()}/restic_manager"
    process, log_path = _start_serve(tmp_path, url, _free_port())
    try:
        status = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    output = log_path.read_text()
    assert status == 1, output
    assert (
        output.strip()
        .splitlines()[-1]
        .startswith("Error: cannot use the database postgresql+psycopg://backup:***@127.0.0.1:")
    )
    assert "(RM_DATABASE_URL)" in output and "Traceback" not in output
    assert "hunter2-secret" not in output
