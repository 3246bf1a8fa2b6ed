"""Migration 0014 (job log retention) adds jobs.log_purged_at and the job list's indexes,
keeps the jobs already recorded, and goes back cleanly, on SQLite and (with
RM_TEST_DATABASE_URL) on PostgreSQL, in a database of its own."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
import sqlalchemy as sa
from flask_migrate import downgrade, upgrade

from app.extensions import db
from tests.conftest import scratch_database_url
from tests.migration_helpers import insert_host, migration_app

BEFORE = "0013_repo_backends"
THIS = "0014_job_log_retention"
INDEXES = {"ix_jobs_host_id_id", "ix_jobs_created_at", "ix_jobs_log_purged_at_finished_at"}


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    yield from scratch_database_url(request.param, tmp_path, "m0014")


def _schema(connection):
    inspector = sa.inspect(connection)
    columns = {column["name"] for column in inspector.get_columns("jobs")}
    indexes = {index["name"] for index in inspector.get_indexes("jobs")}
    return columns, indexes


def test_upgrade_adds_the_column_and_indexes_and_downgrade_removes_them(database_url, tmp_path):
    app = migration_app(database_url, tmp_path)
    at = datetime(2026, 9, 1, tzinfo=timezone.utc)
    with app.app_context():
        upgrade(revision=BEFORE)
        with db.engine.begin() as connection:
            insert_host(connection, at)
            connection.execute(
                sa.text(
                    "INSERT INTO jobs (id, host_id, kind, status, attempt_id, actor_type,"
                    " actor_label, params, stats, progress, log_committed_seq, log_truncated,"
                    " lines_dropped, created_at, finished_at) VALUES (7, 1, 'backup',"
                    " 'succeeded', 'a', 'user', 'alice', '{}', '{}', '{}', 3, false, 0, :at, :at)"
                ),
                {"at": at},
            )
            columns, indexes = _schema(connection)
            assert "log_purged_at" not in columns and not INDEXES & indexes
        upgrade(revision=THIS)
        with db.engine.begin() as connection:
            columns, indexes = _schema(connection)
            assert "log_purged_at" in columns and indexes >= INDEXES
            row = connection.execute(
                sa.text("SELECT id, log_committed_seq, log_purged_at FROM jobs")
            ).one()
            assert tuple(row) == (7, 3, None)  # kept; its log not marked removed
        downgrade(revision=BEFORE)
        with db.engine.begin() as connection:
            columns, indexes = _schema(connection)
            assert "log_purged_at" not in columns and not INDEXES & indexes
            assert connection.execute(sa.text("SELECT count(*) FROM jobs")).scalar() == 1
        db.engine.dispose()
