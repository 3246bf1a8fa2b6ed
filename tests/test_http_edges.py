"""The server's HTTP edges: body limits, database faults as 503, no-store pages, the server
address in install commands, CLI commands before the first serve, private data files."""

from __future__ import annotations

import contextlib
import json
import select
import socket
import sqlite3
import stat
import time

import click
import pytest
import sqlalchemy as sa

from app import create_app
from app.cli import check_address_free, warn_if_address_unknown
from app.extensions import db
from app.limits import SMALL_BODY_BYTES
from app.models import ApiToken, Role, User
from app.models.types import utcnow
from app.services import api_tokens
from tests.conftest import POSTGRES_URL, LiveServer
from tests.factories import TEST_PASSWORD, csrf_token, form_token, login, make_user

MIB = 1024 * 1024


def _is_json_error(response, status: int, code: str) -> None:
    assert response.status_code == status, response.get_data(as_text=True)[:300]
    assert response.get_json()["error"] == code


# --- body limits -------------------------------------------------------------------------------


def test_the_body_limit_comes_from_rm_max_body_mb(app_factory):
    assert app_factory().config["MAX_CONTENT_LENGTH"] == 16 * MIB
    small = app_factory(RM_MAX_BODY_MB=2)
    assert small.config["MAX_CONTENT_LENGTH"] == 2 * MIB
    # Checked before authentication: an agent endpoint refuses a 3 MiB body unread.
    response = small.test_client().post(
        "/api/agent/v1/events", data=b"x" * (3 * MIB), content_type="application/json"
    )
    _is_json_error(response, 413, "payload_too_large")
    assert "2 MiB" in response.get_json()["message"]


def test_anonymous_endpoints_take_small_bodies(app, client):
    over = b"x" * (SMALL_BODY_BYTES + 1)
    enroll = client.post("/api/agent/v1/enroll", data=over, content_type="application/json")
    _is_json_error(enroll, 413, "payload_too_large")
    assert "64 KiB" in enroll.get_json()["message"]
    for path in ("/login", "/setup"):
        page = client.post(path, data={"username": "x" * (SMALL_BODY_BYTES + 1)})
        assert page.status_code == 413
        assert page.mimetype == "text/html"
        assert "64 KiB" in page.get_data(as_text=True)
    # Under the limit the same door answers as before: a refused token, not a size error.
    small = client.post("/api/agent/v1/enroll", json={"token": "rme_nope"})
    assert small.status_code in (401, 403, 422)


def _send_request(sock: socket.socket, path: str, headers: dict) -> None:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())


def _read_response(sock: socket.socket) -> tuple[int, dict]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return status, json.loads(rest[:length])


class CountingInput:
    """The request body stream as the application sees it, counting what it reads."""

    def __init__(self, stream):
        self.stream = stream
        self.count = 0

    def read(self, *args):
        data = self.stream.read(*args)
        self.count += len(data)
        return data

    def readline(self, *args):
        data = self.stream.readline(*args)
        self.count += len(data)
        return data


@pytest.fixture
def live(app_factory):
    """A live server whose application records how much of each body it read (the test
    server itself drains what is left after answering, as gunicorn does)."""
    app = app_factory()
    inner = app.wsgi_app
    inputs = []

    def counting(environ, start_response):
        environ["wsgi.input"] = CountingInput(environ["wsgi.input"])
        inputs.append(environ["wsgi.input"])
        return inner(environ, start_response)

    app.wsgi_app = counting
    server = LiveServer(app)
    server.inputs = inputs
    server.start()
    yield server
    server.stop()


def test_a_declared_giant_body_is_refused_before_it_is_sent(live):
    """600 MB announced to the anonymous enroll: 413 at once, without reading a byte of it."""
    with socket.create_connection(("127.0.0.1", live.port), timeout=10) as sock:
        _send_request(
            sock,
            "/api/agent/v1/enroll",
            {"Content-Type": "application/json", "Content-Length": str(600 * MIB)},
        )
        status, body = _read_response(sock)
    assert status == 413
    assert body["error"] == "payload_too_large"
    assert live.inputs[0].count == 0


def test_a_chunked_body_is_cut_off_at_the_limit(live):
    """No Content-Length: the application stops reading just past the limit and answers
    413 while the client would go on sending 64 MiB."""
    chunk = b"%x\r\n" % 65536 + b"[" * 65536 + b"\r\n"
    sent = 0
    with socket.create_connection(("127.0.0.1", live.port), timeout=10) as sock:
        _send_request(
            sock,
            "/api/agent/v1/enroll",
            {"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        )
        while sent < 64 * MIB:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                break
            sent += len(chunk)
        status, body = _read_response(sock)
    assert status == 413
    assert body["error"] == "payload_too_large"
    assert "64 KiB" in body["message"]
    assert live.inputs[0].count == SMALL_BODY_BYTES + 1  # one byte past the limit, no more
    assert sent < 32 * MIB  # answered long before the client was done


def test_a_chunked_body_within_the_limit_arrives_whole(live):
    """The buffered chunked body reaches the view intact (no silent truncation)."""
    payload = json.dumps({"token": "rme_" + "x" * 150}).encode()
    with socket.create_connection(("127.0.0.1", live.port), timeout=10) as sock:
        _send_request(
            sock,
            "/api/agent/v1/enroll",
            {"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        )
        half = len(payload) // 2
        for part in (payload[:half], payload[half:], b""):
            sock.sendall(b"%x\r\n" % len(part) + part + b"\r\n")
        status, body = _read_response(sock)
    assert status != 413 and body["error"] != "invalid_json", body


# --- database faults ---------------------------------------------------------------------------


def _fault_app(app_factory):
    """An app that gives up on a held lock quickly (SQLite busy timeout, PostgreSQL
    lock_timeout), so a held write lock is a fault rather than a wait."""
    if POSTGRES_URL:
        return app_factory(
            SQLALCHEMY_ENGINE_OPTIONS={"connect_args": {"options": "-c lock_timeout=300"}}
        )
    return app_factory(RM_SQLITE_BUSY_TIMEOUT_MS=100)


@contextlib.contextmanager
def writes_refused(app):
    """Another connection holds the write lock: reads go on, every write fails."""
    url = sa.engine.make_url(app.config["SQLALCHEMY_DATABASE_URI"])
    if url.get_backend_name() == "sqlite":
        holder = sqlite3.connect(url.database, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # WAL: readers still read, no one else writes
        try:
            yield
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        return
    engine = sa.create_engine(url)
    with engine.connect() as holder:
        tables = ", ".join(f'"{name}"' for name in [*sorted(db.metadata.tables), "alembic_version"])
        holder.execute(sa.text(f"LOCK TABLE {tables} IN EXCLUSIVE MODE"))
        try:
            yield
        finally:
            holder.rollback()
    engine.dispose()


def _token_count(app) -> int:
    with app.app_context():
        try:
            return db.session.scalar(sa.select(sa.func.count()).select_from(ApiToken))
        finally:
            db.session.remove()


def test_a_refused_write_is_503_with_retry_after_and_changes_nothing(app_factory):
    app = _fault_app(app_factory)
    with app.app_context():
        user = make_user(Role.admin)
        _, bearer = api_tokens.create_token(user, "ci", now=utcnow())
        db.session.commit()
        db.session.remove()
    client = app.test_client()
    headers = {"Authorization": f"Bearer {bearer}"}
    before = _token_count(app)

    with writes_refused(app):
        started = time.monotonic()
        response = client.post("/api/v1/tokens", json={"name": "during-lock"}, headers=headers)
        ready = client.get("/readyz")
    _is_json_error(response, 503, "unavailable")
    assert response.headers["Retry-After"].isdigit()
    assert "try again" in response.get_json()["message"]
    assert time.monotonic() - started < 10
    assert ready.status_code == 503
    assert ready.headers["Retry-After"].isdigit()
    assert ready.get_json() == {"status": "unavailable", "database": "not writable"}

    assert _token_count(app) == before  # rolled back: nothing half-written
    after = client.post("/api/v1/tokens", json={"name": "after-lock"}, headers=headers)
    assert after.status_code == 201, after.get_data(as_text=True)
    assert client.get("/readyz").get_json() == {"status": "ready", "database": "ok"}


def test_a_refused_write_from_a_browser_is_a_503_page(app_factory):
    app = _fault_app(app_factory)
    with app.app_context():
        user = make_user(Role.viewer)
        username = user.username
        db.session.remove()
    browser = app.test_client()
    token = form_token(browser, "/login")
    with writes_refused(app):
        page = browser.post(
            "/login", data={"csrf_token": token, "username": username, "password": TEST_PASSWORD}
        )
    assert page.status_code == 503
    assert page.mimetype == "text/html"
    assert page.headers["Retry-After"].isdigit()
    assert "Temporarily unavailable" in page.get_data(as_text=True)
    assert login(browser, username).status_code == 302  # the next try works


# --- no-store pages ----------------------------------------------------------------------------


def test_pages_are_no_store_and_static_files_are_not(login_as):
    browser = login_as(Role.viewer)
    page = browser.get("/")
    assert page.status_code == 200
    assert page.headers["Cache-Control"] == "no-store"
    stylesheet = browser.get("/static/css/app.css")
    assert stylesheet.status_code == 200
    assert "no-store" not in stylesheet.headers.get("Cache-Control", "")
    stylesheet.close()


# --- the server's address in install commands --------------------------------------------------


def _mint(client, base_url: str):
    return client.post(
        "/api/v1/enrollment-tokens",
        json={"repo_url": "/srv/restic/web-1", "repo_password": "hunter2hunter2"},
        base_url=base_url,
    )


def test_install_commands_ignore_an_unlisted_host_header(api):
    admin = api(Role.admin)
    forged = _mint(admin, "http://evil.example")
    assert forged.status_code == 201, forged.get_data(as_text=True)
    body = forged.get_json()
    assert "evil.example" not in body["install_command"] + body["agent_command"]
    assert "--server SERVER_URL" in body["install_command"]
    script = admin.get("/install/install.sh", base_url="http://evil.example")
    assert "DEFAULT_SERVER=''" in script.get_data(as_text=True)
    assert "evil.example" not in script.get_data(as_text=True)


@pytest.mark.parametrize(
    ("allowed", "host", "trusted"),
    [
        ([], "127.0.0.1:8080", True),  # the trial run: loopback is this machine
        ([], "localhost", True),
        ([], "[::1]:8080", True),
        ([], "backup.example.com", False),
        (["backup.example.com"], "backup.example.com:8443", True),
        (["backup.example.com:8443"], "backup.example.com:8443", True),
        (["backup.example.com:8443"], "backup.example.com:9000", False),
        (["backup.example.com"], "backup.example.com.evil.example", False),
    ],
)
def test_the_request_host_is_used_only_when_allowed(app_factory, allowed, host, trusted):
    app = app_factory(RM_ALLOWED_HOSTS=allowed)
    script = app.test_client().get("/install/install.sh", base_url=f"http://{host}")
    expected = f"DEFAULT_SERVER='http://{host}'" if trusted else "DEFAULT_SERVER=''"
    assert expected in script.get_data(as_text=True)


def test_rm_base_url_wins_over_any_host(app_factory):
    app = app_factory(RM_BASE_URL="https://backup.example.com")
    script = app.test_client().get("/install/install.sh", base_url="http://evil.example")
    assert "DEFAULT_SERVER='https://backup.example.com'" in script.get_data(as_text=True)


def test_add_host_page_says_what_to_configure(app, login_as):
    admin = make_user(Role.admin)
    remote = app.test_client()
    where = "http://backup.example.com"  # the page opened by a name nobody listed
    token = csrf_token(remote.get("/login", base_url=where).get_data(as_text=True))
    signed_in = remote.post(
        "/login",
        data={"csrf_token": token, "username": admin.username, "password": TEST_PASSWORD},
        base_url=where,
    )
    assert signed_in.status_code == 302
    page = remote.get("/hosts/new", base_url=where).get_data(as_text=True)
    assert 'id="server-address"' in page
    assert "RM_BASE_URL" in page and "RM_ALLOWED_HOSTS" in page
    local = login_as(Role.admin).get("/hosts/new").get_data(as_text=True)  # localhost
    assert 'id="server-address"' not in local


@pytest.mark.parametrize(
    ("bind", "config", "warned"),
    [
        ("127.0.0.1:8080", {}, False),
        ("[::1]:8080", {}, False),
        ("0.0.0.0:8080", {}, True),
        ("0.0.0.0:8080", {"RM_BASE_URL": "https://backup.example.com"}, False),
        ("0.0.0.0:8080", {"RM_ALLOWED_HOSTS": ["backup.example.com"]}, False),
    ],
)
def test_serve_reminds_to_set_the_public_address(app_factory, capsys, bind, config, warned):
    app = app_factory(**config)
    with app.app_context():
        warn_if_address_unknown(bind)
    assert ("RM_BASE_URL is not set" in capsys.readouterr().err) is warned


def test_serve_refuses_an_address_another_server_listens_on():
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        bind = f"127.0.0.1:{other.getsockname()[1]}"
        with pytest.raises(click.ClickException, match="already in use") as refused:
            check_address_free(bind)
    assert refused.value.message.startswith(f"cannot listen on {bind}: ")
    check_address_free(bind)  # free again: no error, and the probe left nothing bound
    check_address_free(bind)


def test_serve_refuses_a_port_shared_with_so_reuseport():
    """Another `serve` with several workers listens with SO_REUSEPORT; ours must not join it."""
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        with pytest.raises(click.ClickException, match="already in use"):
            check_address_free(f"127.0.0.1:{other.getsockname()[1]}")


@pytest.mark.parametrize(
    ("bind", "message"),
    [
        ("127.0.0.1:99999", "the port must be between 0 and 65535"),
        ("127.0.0.1:http", "is not a valid port number"),
        ("192.0.2.1:8080", "Cannot assign requested address"),
    ],
)
def test_serve_names_an_address_it_cannot_listen_on(bind, message):
    with pytest.raises(click.ClickException, match=message) as refused:
        check_address_free(bind)
    assert bind in refused.value.message


def test_serve_leaves_unix_sockets_and_inherited_descriptors_to_gunicorn(tmp_path):
    check_address_free(f"unix:{tmp_path / 'rm.sock'}")
    check_address_free("fd://3")
    assert not (tmp_path / "rm.sock").exists()


# --- CLI before the first serve ----------------------------------------------------------------


@pytest.mark.skipif(bool(POSTGRES_URL), reason="a fresh SQLite file is the first-run case")
def test_cli_commands_create_the_schema_first(tmp_path):
    app = create_app(
        {
            "TESTING": True,
            "RM_DATA_DIR": tmp_path / "data",
            "RM_SECRET_KEY_FILE": tmp_path / "data" / "secret.key",
            "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'data' / 'new.db'}",
        }
    )
    runner = app.test_cli_runner()
    created = runner.invoke(
        args=["create-admin", "--username", "ops", "--password-stdin"], input=TEST_PASSWORD
    )
    assert created.exit_code == 0, created.output
    minted = runner.invoke(args=["create-token", "--user", "ops", "--name", "ci"])
    assert minted.exit_code == 0, minted.output
    assert minted.stdout.strip().startswith("rmp_")
    with app.app_context():
        assert db.session.scalar(sa.select(User.username)) == "ops"
        db.session.remove()
        db.engine.dispose()


# --- private data files ------------------------------------------------------------------------


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.skipif(bool(POSTGRES_URL), reason="the SQLite file's own mode")
def test_data_directory_and_files_are_created_private(tmp_path):
    data = tmp_path / "data"
    app = create_app(
        {
            "TESTING": True,
            "RM_DATA_DIR": data,
            "RM_SECRET_KEY_FILE": data / "secret.key",
            "SQLALCHEMY_DATABASE_URI": f"sqlite:///{data / 'restic-manager.db'}",
        }
    )
    assert _mode(data) == 0o700
    assert _mode(data / "secret.key") == 0o600
    assert _mode(data / "restic-manager.db") == 0o600
    with app.app_context():
        db.session.execute(sa.text("CREATE TABLE t (x INTEGER)"))  # SQLite opens the file
        db.session.commit()
        db.engine.dispose()
    assert _mode(data / "restic-manager.db") == 0o600


@pytest.mark.skipif(bool(POSTGRES_URL), reason="the SQLite file's own mode")
def test_looser_modes_are_tightened_with_a_log_line(tmp_path, caplog):
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    config = {
        "TESTING": True,
        "RM_DATA_DIR": data,
        "RM_SECRET_KEY_FILE": data / "secret.key",
        "SQLALCHEMY_DATABASE_URI": f"sqlite:///{data / 'restic-manager.db'}",
    }
    create_app(config)
    for path in (data, data / "secret.key", data / "restic-manager.db"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    (data / "restic-manager.db-wal").write_bytes(b"")
    (data / "restic-manager.db-wal").chmod(0o644)
    caplog.clear()
    create_app(config)
    assert _mode(data) == 0o700
    assert _mode(data / "secret.key") == 0o600
    assert _mode(data / "restic-manager.db") == 0o600
    assert _mode(data / "restic-manager.db-wal") == 0o600
    tightened = [r.getMessage() for r in caplog.records if "tightened" in r.getMessage()]
    assert len(tightened) == 4, tightened
    assert any("from mode 0644 to 0600" in line for line in tightened)
