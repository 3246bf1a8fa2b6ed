"""Migration 0007 fills each host's last successful backup from the jobs it already has,
on SQLite and (with RM_TEST_DATABASE_URL) on PostgreSQL, in a database of its own."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
import sqlalchemy as sa
from flask_migrate import downgrade, upgrade

from app import create_app
from app.extensions import db
from tests.conftest import scratch_database_url

BEFORE = "0006_rpc_and_diff"
THIS = "0007_last_successful_backup"


def _at(hour: int) -> datetime:
    return datetime(2026, 11, 20, hour, 0, tzinfo=timezone.utc)


# (job id, host id, kind, status, finished hour)
JOBS = [
    (1, 1, "backup", "succeeded", 1),
    (2, 1, "backup", "warning", 2),  # a warning saved a snapshot: the latest success
    (3, 1, "backup", "cancelled", 3),
    (4, 1, "check", "succeeded", 4),  # not a backup
    (5, 2, "backup", "failed", 5),
    (6, 2, "backup", "lost", 6),
]


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    yield from scratch_database_url(request.param, tmp_path, "backfill")


def test_upgrade_backfills_the_last_successful_backup(database_url, tmp_path):
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
            for host_id, name in ((1, "web-1"), (2, "db-1"), (3, "new-1")):
                connection.execute(
                    sa.text(
                        "INSERT INTO hosts (id, hostname, repo_status, tags, created_at,"
                        " snapshot_count, schedule_version)"
                        " VALUES (:id, :name, 'ready', '[]', :at, 0, 0)"
                    ),
                    {"id": host_id, "name": name, "at": _at(0)},
                )
            for job_id, host_id, kind, status, hour in JOBS:
                connection.execute(
                    sa.text(
                        "INSERT INTO jobs (id, host_id, kind, status, attempt_id, actor_type,"
                        " actor_label, params, stats, progress, log_committed_seq,"
                        " log_truncated, lines_dropped, created_at, finished_at)"
                        " VALUES (:id, :host, :kind, :status, 'a', 'system', 't', '{}', '{}',"
                        " '{}', 0, false, 0, :at, :at)"
                    ),
                    {
                        "id": job_id,
                        "host": host_id,
                        "kind": kind,
                        "status": status,
                        "at": _at(hour),
                    },
                )
        upgrade(revision=THIS)
        with db.engine.connect() as connection:
            rows = connection.execute(
                sa.text(
                    "SELECT id, last_successful_backup_job_id, last_successful_backup_at"
                    " FROM hosts ORDER BY id"
                )
            ).all()
        filled = {host_id: (job_id, at) for host_id, job_id, at in rows}
        assert filled[1][0] == 2
        finished = filled[1][1]
        if isinstance(finished, str):  # SQLite hands back text for a raw query
            finished = datetime.fromisoformat(finished)
        assert finished.replace(tzinfo=timezone.utc) == _at(2)
        assert filled[2] == (None, None)  # only failed and lost backups
        assert filled[3] == (None, None)  # no jobs at all
        downgrade(revision=BEFORE)  # and back, cleanly
        with db.engine.connect() as connection:
            columns = {column["name"] for column in sa.inspect(connection).get_columns("hosts")}
        assert "last_successful_backup_job_id" not in columns
        db.engine.dispose()
