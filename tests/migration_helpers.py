"""What the migration tests share: an app on a database of the test's own (conftest's
``scratch_database_url``), and a host row as every revision since 0001 can store it."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

from app import create_app
from tests.conftest import _base_config


def migration_app(database_url: str, tmp_path):
    """An app on ``database_url``; the test migrates it to the revisions it looks at."""
    return create_app(_base_config(tmp_path, database_url))


def insert_host(connection, at: datetime, *, host_id: int = 1, hostname: str = "web-1") -> None:
    """A ready host, written in SQL (the models describe the newest schema only)."""
    connection.execute(
        sa.text(
            "INSERT INTO hosts (id, hostname, repo_status, tags, created_at,"
            " snapshot_count, schedule_version)"
            " VALUES (:id, :hostname, 'ready', '[]', :at, 0, 0)"
        ),
        {"id": host_id, "hostname": hostname, "at": at},
    )
