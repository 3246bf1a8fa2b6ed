"""Migration 0009 seals the repository URLs already stored (credential rows and the URLs
in config.update commands) and puts them back in clear on downgrade, on SQLite and (with
RM_TEST_DATABASE_URL) on PostgreSQL, in a database of its own."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
import sqlalchemy as sa
from flask_migrate import downgrade, upgrade

from app import create_app
from app.extensions import db
from tests.conftest import scratch_database_url

BEFORE = "0008_drop_pending_runs"
THIS = "0009_sealed_repo_urls"
URL_PASSWORD = "urlpw-Migrated-3303"
SECRET_URL = f"rest:https://backup:{URL_PASSWORD}@backup.example.com/web-1"
REDACTED_URL = "rest:https://backup:***@backup.example.com/web-1"
AT = datetime(2026, 11, 20, 1, 0, tzinfo=timezone.utc)

# (credential id, host id, kind, url)
CREDENTIALS = [
    (1, 1, "everyday", SECRET_URL),
    (2, 1, "admin", SECRET_URL),
    (3, 2, "everyday", "/srv/restic/db-1"),
]


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    yield from scratch_database_url(request.param, tmp_path, "sealed_urls")


def _seal_command_secret(box, command_id: str, secret: dict) -> bytes:
    return box.seal(json.dumps(secret), table="commands", column="payload", row_id=command_id)


def _open_command_secret(box, command_id: str, sealed) -> dict:
    return json.loads(box.open(sealed, table="commands", column="payload", row_id=command_id))


def _insert_before(connection, box) -> None:
    """Rows as the code before 0009 wrote them: clear URLs, secrets sealed beside them."""
    for host_id, name in ((1, "web-1"), (2, "db-1")):
        connection.execute(
            sa.text(
                "INSERT INTO hosts (id, hostname, repo_status, tags, created_at,"
                " snapshot_count, schedule_version) VALUES (:id, :name, 'ready', '[]', :at, 0, 0)"
            ),
            {"id": host_id, "name": name, "at": AT},
        )
    for row_id, host_id, kind, url in CREDENTIALS:
        connection.execute(
            sa.text(
                "INSERT INTO host_credentials (id, host_id, kind, repo_url, username,"
                " sealed_password, updated_at) VALUES (:id, :host, :kind, :url, 'backup',"
                " :sealed, :at)"
            ),
            {
                "id": row_id,
                "host": host_id,
                "kind": kind,
                "url": url,
                "sealed": box.seal(
                    "repo-pass", table="host_credentials", column="password", row_id=row_id
                ),
                "at": AT,
            },
        )
    commands = sa.table(
        "commands",
        sa.column("id", sa.String),
        sa.column("host_id", sa.Integer),
        sa.column("type", sa.String),
        sa.column("payload", sa.JSON),
        sa.column("sealed_payload", sa.LargeBinary),
        sa.column("state", sa.String),
        sa.column("delivery_count", sa.Integer),
        sa.column("created_at", sa.DateTime(timezone=True)),
    )
    rows = [
        (
            "c1",
            "config.update",
            {
                "repository": {"url": SECRET_URL, "username": "backup"},
                "admin_repository": {"url": SECRET_URL, "username": "admin"},
            },
            {"repository": {"password": "p1"}, "admin_repository": {"password": "p2"}},
        ),
        ("c2", "config.update", {"admin_repository": None}, None),
        ("c3", "job.run", {"kind": "probe", "params": {}}, None),
    ]
    for command_id, type_, payload, secret in rows:
        connection.execute(
            commands.insert().values(
                id=command_id,
                host_id=1,
                type=type_,
                payload=payload,
                sealed_payload=_seal_command_secret(box, command_id, secret) if secret else None,
                state="acked",
                delivery_count=1,
                created_at=AT,
            )
        )


def _commands(connection) -> dict:
    rows = connection.execute(
        sa.select(
            sa.column("id"),
            sa.column("payload", sa.JSON),
            sa.column("sealed_payload", sa.LargeBinary),
        ).select_from(sa.table("commands"))
    ).all()
    return {command_id: (payload, sealed) for command_id, payload, sealed in rows}


def _raw_sqlite(database_url: str) -> bytes:
    path = sa.engine.make_url(database_url).database
    blobs = []
    for suffix in ("", "-wal"):
        try:
            with open(f"{path}{suffix}", "rb") as handle:
                blobs.append(handle.read())
        except FileNotFoundError:
            pass
    return b"".join(blobs)


def test_upgrade_seals_the_urls_and_downgrade_restores_them(database_url, tmp_path):
    app = create_app(
        {
            "TESTING": True,
            "RM_DATA_DIR": tmp_path,
            "RM_SECRET_KEY_FILE": tmp_path / "secret.key",
            "SQLALCHEMY_DATABASE_URI": database_url,
        }
    )
    with app.app_context():
        box = app.extensions["secretbox"]
        upgrade(revision=BEFORE)
        with db.engine.begin() as connection:
            _insert_before(connection, box)
        upgrade(revision=THIS)

        with db.engine.connect() as connection:
            rows = connection.execute(
                sa.text(
                    "SELECT id, repo_url_redacted, sealed_repo_url FROM host_credentials"
                    " ORDER BY id"
                )
            ).all()
            columns = {c["name"] for c in sa.inspect(connection).get_columns("host_credentials")}
            commands = _commands(connection)
        assert "repo_url" not in columns
        for (row_id, redacted, sealed), (_, _, _, url) in zip(rows, CREDENTIALS):
            opened = box.open(sealed, table="host_credentials", column="repo_url", row_id=row_id)
            assert opened == url
            assert redacted == (REDACTED_URL if url == SECRET_URL else url)

        payload, sealed = commands["c1"]
        assert payload == {
            "repository": {"url": REDACTED_URL, "username": "backup"},
            "admin_repository": {"url": REDACTED_URL, "username": "admin"},
        }
        assert _open_command_secret(box, "c1", sealed) == {
            "repository": {"url": SECRET_URL, "password": "p1"},
            "admin_repository": {"url": SECRET_URL, "password": "p2"},
        }
        assert commands["c2"] == ({"admin_repository": None}, None)
        assert commands["c3"] == ({"kind": "probe", "params": {}}, None)

        with db.engine.connect() as connection:
            every_row = [
                repr(tuple(row))
                for table in ("host_credentials", "commands", "audit_log")
                for row in connection.execute(sa.select(sa.text("*")).select_from(sa.table(table)))
            ]
        assert not any(URL_PASSWORD in text for text in every_row)
        db.engine.dispose()  # checkpoints SQLite's WAL into the file itself
        if database_url.startswith("sqlite"):
            # What is on disk, not only what the rows say: secure_delete overwrote the old
            # table's pages. (PostgreSQL's VACUUM FULL does the same only once no older
            # snapshot anywhere in the cluster can see the old rows, so it is not asserted.)
            raw = _raw_sqlite(database_url)
            assert REDACTED_URL.encode() in raw  # the grep reads the stored text
            assert URL_PASSWORD.encode() not in raw

        downgrade(revision=BEFORE)
        with db.engine.connect() as connection:
            restored = connection.execute(
                sa.text("SELECT id, host_id, kind, repo_url FROM host_credentials ORDER BY id")
            ).all()
            columns = {c["name"] for c in sa.inspect(connection).get_columns("host_credentials")}
            commands = _commands(connection)
        assert [tuple(row) for row in restored] == CREDENTIALS
        assert not columns & {"repo_url_redacted", "sealed_repo_url"}
        payload, sealed = commands["c1"]
        assert payload == {
            "repository": {"url": SECRET_URL, "username": "backup"},
            "admin_repository": {"url": SECRET_URL, "username": "admin"},
        }
        assert _open_command_secret(box, "c1", sealed) == {
            "repository": {"password": "p1"},
            "admin_repository": {"password": "p2"},
        }
        db.engine.dispose()
