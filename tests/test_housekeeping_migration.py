"""Migration 0015 (housekeeping indexes) adds the indexes housekeeping uses to find old
commands and old agent event ids, keeps the rows already there, and goes back cleanly, on
SQLite and (with RM_TEST_DATABASE_URL) on PostgreSQL, in a database of its own."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
import sqlalchemy as sa
from flask_migrate import downgrade, upgrade

from app.extensions import db
from tests.conftest import scratch_database_url
from tests.migration_helpers import insert_host, migration_app

BEFORE = "0014_job_log_retention"
THIS = "0015_housekeeping_indexes"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    yield from scratch_database_url(request.param, tmp_path, "m0015")


def _indexes(connection) -> set:
    inspector = sa.inspect(connection)
    return {
        index["name"]
        for table in ("commands", "agent_events")
        for index in inspector.get_indexes(table)
    }


def test_upgrade_adds_the_indexes_and_downgrade_removes_them(database_url, tmp_path):
    app = migration_app(database_url, tmp_path)
    at = datetime(2026, 9, 1, tzinfo=timezone.utc)
    ours = {
        "ix_commands_created_at",
        "ix_agent_events_received_at",
        "ix_agent_events_progress_received_at",
    }
    with app.app_context():
        upgrade(revision=BEFORE)
        with db.engine.begin() as connection:
            insert_host(connection, at)
            connection.execute(
                sa.text(
                    "INSERT INTO commands (id, host_id, type, payload, state, delivery_count,"
                    " created_at) VALUES ('c1', 1, 'probe', '{}', 'acked', 1, :at)"
                ),
                {"at": at},
            )
            connection.execute(
                sa.text(
                    "INSERT INTO agent_events (event_id, host_id, type, received_at)"
                    " VALUES ('e1', 1, 'job.finished', :at)"
                ),
                {"at": at},
            )
            assert not ours & _indexes(connection)
        upgrade(revision=THIS)
        with db.engine.begin() as connection:
            assert _indexes(connection) >= ours
            assert connection.execute(sa.text("SELECT id FROM commands")).scalar() == "c1"
            assert connection.execute(sa.text("SELECT event_id FROM agent_events")).scalar() == "e1"
        downgrade(revision=BEFORE)
        with db.engine.begin() as connection:
            assert not ours & _indexes(connection)
            assert connection.execute(sa.text("SELECT count(*) FROM commands")).scalar() == 1
            assert connection.execute(sa.text("SELECT count(*) FROM agent_events")).scalar() == 1
        db.engine.dispose()
