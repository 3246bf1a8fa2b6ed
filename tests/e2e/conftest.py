"""Fixtures of the end-to-end tests: a real `restic-manager serve` on a fresh database."""

from __future__ import annotations

import pytest

from tests.conftest import fresh_database_url
from tests.e2e.processes import Server, clean_env


@pytest.fixture
def start_server(tmp_path, migrated_template):
    """``start_server(**RM_settings)``: a started server, killed when the test ends."""
    started: list[Server] = []

    def start(**settings: str) -> Server:
        env = clean_env(
            RM_DATA_DIR=str(tmp_path / "server-data"),
            RM_DATABASE_URL=fresh_database_url(migrated_template, tmp_path),
            **settings,
        )
        server = Server(tmp_path, env)
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.kill()
