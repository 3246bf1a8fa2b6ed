"""A password inside a repository URL is sealed wherever the server keeps it (issue 13):
after an enrollment, a change of connection and an admin credential, no table row, raw
database file (SQLite's file and WAL, PostgreSQL's heap files), API answer, page, audit row
or log line holds it, while the agent — the real agent code — still receives and keeps the
whole URL."""

from __future__ import annotations

import logging
import threading
import time

import sqlalchemy as sa
from flask import current_app
from sqlalchemy import select

from agent.cli import main as agent_main
from agent.service import Agent as RealAgent
from app.extensions import db
from app.models import AuditLog, Command, Host, Role
from app.services import repository
from tests.factories import Agent, bearer_headers

ENROLL_PASSWORD = "urlpw-Enrolled-5501"
CHANGED_PASSWORD = "urlpw-Changed-7702"
ENROLL_URL = f"rest:https://backup:{ENROLL_PASSWORD}@backup.example.com/web-1"
CHANGED_URL = f"rest:https://backup:{CHANGED_PASSWORD}@backup.example.com/web-1"
CHANGED_REDACTED = "rest:https://backup:***@backup.example.com/web-1"
URL_PASSWORDS = (ENROLL_PASSWORD, CHANGED_PASSWORD)


def _box():
    return current_app.extensions["secretbox"]


def _mint(api, headers, url: str) -> str:
    response = api.post(
        "/api/v1/enrollment-tokens",
        headers=headers,
        json={
            "hostname": "web-1",
            "repo_url": url,
            "repo_username": "backup",
            "repo_password": "repo-Password-1234",
            "paths": ["/etc"],
        },
    )
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["repo_url"] == "rest:https://backup:***@backup.example.com/web-1"
    return response.get_json()["token"]


def _enroll(client, token: str) -> dict:
    response = client.post(
        "/api/agent/v1/enroll",
        json={"token": token, "os": "linux", "arch": "x86_64", "protocol_version": 1},
    )
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def _change_connection_and_set_admin(api, headers, host_id: int) -> list[str]:
    """The two other ways a URL is stored; returns the API answers' texts."""
    changed = api.put(
        f"/api/v1/hosts/{host_id}/repository",
        headers=headers,
        json={"url": CHANGED_URL, "username": "backup", "password": "repo-Password-5678"},
    )
    assert changed.status_code == 200, changed.get_json()
    assert changed.get_json()["url"] == CHANGED_REDACTED
    admin = api.put(
        f"/api/v1/hosts/{host_id}/admin-credential",
        headers=headers,
        json={"username": "admin", "password": "admin-Password-9012"},
    )
    assert admin.status_code == 200, admin.get_json()
    return [changed.get_data(as_text=True), admin.get_data(as_text=True)]


def _every_row_as_text() -> str:
    """Every row of every table, as the database hands it back."""
    texts = []
    with db.engine.connect() as connection:
        for table in db.metadata.sorted_tables:
            texts.extend(repr(tuple(row)) for row in connection.execute(table.select()))
    return "\n".join(texts)


def _database_files() -> list:
    url = db.engine.url
    if url.get_backend_name() != "sqlite":
        return []
    path = url.database
    return [f"{path}{suffix}" for suffix in ("", "-wal", "-shm")]


def _raw_bytes(paths) -> bytes:
    blobs = []
    for path in paths:
        try:
            with open(path, "rb") as handle:
                blobs.append(handle.read())
        except FileNotFoundError:
            pass
    return b"".join(blobs)


def _raw_postgresql_tables() -> bytes:
    """Every table's heap file (and TOAST) as it is on disk after a checkpoint."""
    with db.engine.connect() as connection:
        if connection.dialect.name != "postgresql":
            return b""
        connection.execute(sa.text("CHECKPOINT"))
        paths = connection.execute(
            sa.text(
                "SELECT pg_relation_filepath(oid), pg_relation_filepath(reltoastrelid)"
                " FROM pg_class WHERE relname = ANY(:tables)"
            ),
            {"tables": [table.name for table in db.metadata.sorted_tables]},
        ).all()
        read = sa.text("SELECT pg_read_binary_file(:path)")
        return b"".join(
            bytes(connection.execute(read, {"path": path}).scalar())
            for pair in paths
            for path in pair
            if path
        )


def test_no_url_password_at_rest_in_answers_audit_or_logs(app, login_as, make_user, caplog):
    caplog.set_level(logging.DEBUG)
    api = app.test_client()
    headers = bearer_headers(make_user(Role.admin))
    answers = []

    host_id = _enroll(api, _mint(api, headers, ENROLL_URL))["host_id"]
    answers += _change_connection_and_set_admin(api, headers, host_id)
    for path in (
        f"/api/v1/hosts/{host_id}",
        f"/api/v1/hosts/{host_id}/repository",
        f"/api/v1/hosts/{host_id}/repo-maintenance",
        "/api/v1/enrollment-tokens",
    ):
        response = api.get(path, headers=headers)
        assert response.status_code == 200, path
        answers.append(response.get_data(as_text=True))
    browser = login_as(Role.admin)
    for path in (f"/hosts/{host_id}", f"/hosts/{host_id}/repo", "/hosts/new"):
        response = browser.get(path)
        assert response.status_code == 200, path
        answers.append(response.get_data(as_text=True))
    assert CHANGED_REDACTED in answers[-2]  # the Repository tab shows the redacted URL

    db.session.remove()

    rows = _every_row_as_text()
    for password in URL_PASSWORDS:
        assert password not in rows
        assert password not in caplog.text
        for answer in answers:
            assert password not in answer
    audit_payloads = [str(row.payload) for row in db.session.scalars(select(AuditLog))]
    assert any(CHANGED_REDACTED in payload for payload in audit_payloads)
    assert not any(p in payload for payload in audit_payloads for p in URL_PASSWORDS)

    host = db.session.get(Host, host_id)
    everyday = repository.credential_of(host)
    admin = repository.credential_of(host, "admin")
    assert repository.repo_url_of(_box(), everyday) == CHANGED_URL
    assert repository.repo_url_of(_box(), admin) == CHANGED_URL
    assert (everyday.repo_url_redacted, admin.repo_url_redacted) == (CHANGED_REDACTED,) * 2

    files = _database_files()
    before_checkpoint = _raw_bytes(files) + _raw_postgresql_tables()
    db.session.remove()
    db.engine.dispose()  # the last connection checkpoints the WAL into the main file
    after_checkpoint = _raw_bytes(files)
    # The grep sees the files' text: the redacted URL is there in clear.
    assert b"backup:***@backup.example.com" in before_checkpoint + after_checkpoint
    for password in URL_PASSWORDS:
        assert password.encode() not in before_checkpoint
        assert password.encode() not in after_checkpoint


def test_config_update_carries_the_url_only_in_its_sealed_part(app, make_user):
    api = app.test_client()
    headers = bearer_headers(make_user(Role.admin))
    enrolled = _enroll(api, _mint(api, headers, ENROLL_URL))
    _change_connection_and_set_admin(api, headers, enrolled["host_id"])
    clear = [
        command.payload
        for command in db.session.scalars(select(Command).order_by(Command.created_at))
        if command.type == "config.update"
    ]
    assert [payload.get("repository", {}).get("url") for payload in clear] == [
        "rest:https://backup:***@backup.example.com/web-1",
        CHANGED_REDACTED,
        None,
    ]
    assert clear[2]["admin_repository"] == {"url": CHANGED_REDACTED, "username": "admin"}

    response = Agent(app, enrolled["agent_token"]).poll()
    assert response.status_code == 200
    delivered = [
        c["payload"] for c in response.get_json()["commands"] if c["type"] == "config.update"
    ]
    assert delivered[0]["repository"]["url"] == ENROLL_URL
    assert delivered[1]["repository"]["url"] == CHANGED_URL
    assert delivered[2]["admin_repository"] == {
        "url": CHANGED_URL,
        "username": "admin",
        "password": "admin-Password-9012",
    }


def test_a_url_without_password_is_prefilled_one_with_a_password_is_not(app, login_as, make_user):
    api = app.test_client()
    headers = bearer_headers(make_user(Role.admin))
    host_id = _enroll(api, _mint(api, headers, ENROLL_URL))["host_id"]
    browser = login_as(Role.admin)
    page = browser.get(f"/hosts/{host_id}/repo").get_data(as_text=True)
    assert 'name="repo_url" placeholder' in page and ENROLL_PASSWORD not in page
    saved = api.put(
        f"/api/v1/hosts/{host_id}/repository",
        headers=headers,
        json={"url": "/srv/restic/web-1", "password": "repo-Password-5678"},
    )
    assert saved.status_code == 200
    for path in (f"/hosts/{host_id}", f"/hosts/{host_id}/repo"):
        page = browser.get(path).get_data(as_text=True)
        assert 'value="/srv/restic/web-1"' in page, path


def _wait_for(condition, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"not true after {timeout} s")


def test_the_real_agent_keeps_the_whole_url(live_server, make_user, tmp_path, capsys):
    app = live_server.app
    with app.app_context():
        api = app.test_client()
        headers = bearer_headers(make_user(Role.admin))
        token = _mint(api, headers, ENROLL_URL)
    home = tmp_path / "agent-home"
    assert (
        agent_main(["--home", str(home), "enroll", "--server", live_server.url, "--token", token])
        == 0
    )
    assert "enrolled as host" in capsys.readouterr().out
    agent = RealAgent(home, start_delay=0)
    with app.app_context():
        _change_connection_and_set_admin(api, headers, agent.state.host_id)
        # Nothing can answer at backup.example.com: no bring-up probe for this test.
        db.session.get(Host, agent.state.host_id).repo_status = "ready"
        db.session.commit()

    stop = threading.Event()
    thread = threading.Thread(target=agent.run_forever, args=(stop,), daemon=True)
    thread.start()
    try:

        def all_acked():
            with app.app_context():
                states = db.session.scalars(
                    select(Command.state).where(Command.type == "config.update")
                ).all()
                db.session.remove()
                return len(states) == 3 and set(states) == {"acked"}

        _wait_for(all_acked, timeout=30)
    finally:
        stop.set()
        thread.join(15)
    kept = agent.secrets.load()
    assert kept["url"] == CHANGED_URL
    assert kept["admin_repository"]["url"] == CHANGED_URL
    assert kept["admin_repository"]["password"] == "admin-Password-9012"
