"""Migration 0010 (alerts) fills each source group's latest successful backup from the jobs
already recorded, and goes back cleanly, on SQLite and (with RM_TEST_DATABASE_URL) on
PostgreSQL, in a database of its own."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
import sqlalchemy as sa
from flask_migrate import downgrade, upgrade

from app import create_app
from app.extensions import db
from tests.conftest import scratch_database_url

BEFORE = "0009_sealed_repo_urls"
THIS = "0010_alerts"


def _at(hour: int) -> datetime:
    return datetime(2026, 11, 20, hour, 0, tzinfo=timezone.utc)


# (job id, host id, kind, status, group, finished hour)
JOBS = [
    (1, 1, "backup", "succeeded", "home", 1),
    (2, 1, "backup", "warning", "home", 3),  # a warning saved a snapshot: the latest
    (3, 1, "backup", "succeeded", "home", 2),  # older than job 2 although its id is higher
    (4, 1, "backup", "failed", "etc", 5),  # failures do not count
    (5, 1, "check", "succeeded", None, 6),
    (6, 2, "backup", "succeeded", None, 4),  # no group in the params: "default"
    (7, 2, "backup", "succeeded", "gone", 7),  # a group that no longer exists
]
GROUPS = [(1, 1, "home"), (2, 1, "etc"), (3, 2, "default")]


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    yield from scratch_database_url(request.param, tmp_path, "m0010")


def _aware(value):
    if isinstance(value, str):  # SQLite hands back text for a raw query
        value = datetime.fromisoformat(value)
    return None if value is None else value.replace(tzinfo=timezone.utc)


def test_upgrade_backfills_each_groups_last_successful_backup(database_url, tmp_path):
    app = create_app(
        {
            "TESTING": True,
            "RM_DATA_DIR": tmp_path,
            "RM_SECRET_KEY_FILE": tmp_path / "secret.key",
            "SQLALCHEMY_DATABASE_URI": database_url,
        }
    )
    with app.app_context():
        upgrade(revision=BEFORE)
        with db.engine.begin() as connection:
            for host_id, name in ((1, "web-1"), (2, "db-1")):
                connection.execute(
                    sa.text(
                        "INSERT INTO hosts (id, hostname, repo_status, tags, created_at,"
                        " snapshot_count, schedule_version)"
                        " VALUES (:id, :name, 'ready', '[]', :at, 0, 0)"
                    ),
                    {"id": host_id, "name": name, "at": _at(0)},
                )
            for group_id, host_id, name in GROUPS:
                connection.execute(
                    sa.text(
                        "INSERT INTO source_groups (id, host_id, name, includes, excludes,"
                        " retention, retry_max, retry_backoff_seconds, created_at, updated_at)"
                        " VALUES (:id, :host, :name, '[]', '[]', '{}', 3, 300, :at, :at)"
                    ),
                    {"id": group_id, "host": host_id, "name": name, "at": _at(0)},
                )
            for job_id, host_id, kind, status, group, hour in JOBS:
                connection.execute(
                    sa.text(
                        "INSERT INTO jobs (id, host_id, kind, status, attempt_id, actor_type,"
                        " actor_label, params, stats, progress, log_committed_seq,"
                        " log_truncated, lines_dropped, created_at, finished_at)"
                        " VALUES (:id, :host, :kind, :status, 'a', 'system', 't', :params,"
                        " '{}', '{}', 0, false, 0, :at, :at)"
                    ),
                    {
                        "id": job_id,
                        "host": host_id,
                        "kind": kind,
                        "status": status,
                        "params": json.dumps({"group": group} if group else {}),
                        "at": _at(hour),
                    },
                )
        upgrade(revision=THIS)
        with db.engine.connect() as connection:
            rows = connection.execute(
                sa.text("SELECT id, last_successful_backup_at FROM source_groups ORDER BY id")
            ).all()
        filled = {group_id: _aware(at) for group_id, at in rows}
        assert filled == {1: _at(3), 2: None, 3: _at(4)}
        downgrade(revision=BEFORE)  # and back, cleanly
        with db.engine.connect() as connection:
            inspector = sa.inspect(connection)
            tables = set(inspector.get_table_names())
            columns = {column["name"] for column in inspector.get_columns("source_groups")}
        assert not tables & {"alerts", "notifications", "notification_channels", "alert_silences"}
        assert "last_successful_backup_at" not in columns
        db.engine.dispose()
