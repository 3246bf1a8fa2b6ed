"""Fixtures: a migrated database per test (SQLite by default, PostgreSQL with
RM_TEST_DATABASE_URL), the app, clients, users and signed-in clients. Test data comes from
tests/factories.py."""

from __future__ import annotations

import contextvars
import os
import shutil

import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient

from app import create_app
from app.extensions import db
from app.models import Role
from app.models.types import utcnow
from app.services import api_tokens
from tests import factories
from tests.factories import login


def _postgres_url_for_this_worker(url: str) -> str:
    """Under pytest-xdist each worker gets its own database (`<name>_gw0`, ...), created on
    first use: the tests truncate and re-create schemas, which must not race."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not url or not worker:
        return url
    parsed = sa.engine.make_url(url)
    name = f"{parsed.database}_{worker}"
    engine = sa.create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        exists = connection.execute(
            sa.text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
        ).scalar()
        if not exists:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return parsed.set(database=name).render_as_string(hide_password=False)


POSTGRES_URL = _postgres_url_for_this_worker(os.environ.get("RM_TEST_DATABASE_URL", ""))


def scratch_database_url(kind: str, tmp_path, name: str):
    """A generator for a migration test's ``database_url`` fixture: an empty SQLite file,
    or a fresh PostgreSQL database ``<test database>_<name>`` dropped afterwards (skipped
    without RM_TEST_DATABASE_URL: CI's PostgreSQL pass sets it)."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / f'{name}.db'}"
        return
    if not POSTGRES_URL:
        pytest.skip("RM_TEST_DATABASE_URL is not set")
    url = sa.engine.make_url(POSTGRES_URL)
    database = f"{url.database}_{name}"
    admin = sa.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{database}"'))
        connection.execute(sa.text(f'CREATE DATABASE "{database}"'))
    yield url.set(database=database).render_as_string(hide_password=False)
    with admin.connect() as connection:
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{database}"'))
    admin.dispose()


class IsolatedClient(FlaskClient):
    """Each request runs in a fresh context, as in production: no ``g`` or database
    session leaks in from the test's own app context (e.g. a cached CSRF token)."""

    def open(self, *args, **kwargs):
        return contextvars.Context().run(super().open, *args, **kwargs)


def _base_config(tmp_path, database_url):
    return {
        "TESTING": True,
        "RM_DATA_DIR": tmp_path,
        "RM_SECRET_KEY_FILE": tmp_path / "secret.key",
        "SQLALCHEMY_DATABASE_URI": database_url,
    }


def _upgrade(tmp_path, database_url):
    from flask_migrate import upgrade

    app = create_app(_base_config(tmp_path, database_url))
    with app.app_context():
        upgrade()
        db.engine.dispose()


@pytest.fixture(scope="session")
def migrated_template(tmp_path_factory):
    """Run the migrations once per test session; tests start from a copy (or a truncate)."""
    workdir = tmp_path_factory.mktemp("template")
    if POSTGRES_URL:
        engine = sa.create_engine(POSTGRES_URL)
        with engine.begin() as connection:
            connection.execute(sa.text("DROP SCHEMA public CASCADE"))
            connection.execute(sa.text("CREATE SCHEMA public"))
        engine.dispose()
        _upgrade(workdir, POSTGRES_URL)
        return POSTGRES_URL
    path = workdir / "template.db"
    _upgrade(workdir, f"sqlite:///{path}")
    return path


def fresh_database_url(migrated_template, tmp_path) -> str:
    if POSTGRES_URL:
        engine = sa.create_engine(POSTGRES_URL)
        with engine.begin() as connection:
            tables = [
                name
                for name in sa.inspect(connection).get_table_names()
                if name != "alembic_version"
            ]
            if tables:
                quoted = ", ".join(f'"{name}"' for name in tables)
                connection.execute(sa.text(f"TRUNCATE {quoted} RESTART IDENTITY CASCADE"))
        engine.dispose()
        return POSTGRES_URL
    path = tmp_path / "restic-manager.db"
    shutil.copyfile(migrated_template, path)
    return f"sqlite:///{path}"


@pytest.fixture
def app_factory(migrated_template, tmp_path):
    """Build an app on a fresh migrated database, with config overrides."""
    made = []
    database_url = fresh_database_url(migrated_template, tmp_path)

    def make(**overrides):
        config = _base_config(tmp_path, database_url)
        config.update(overrides)
        app = create_app(config)
        app.test_client_class = IsolatedClient
        made.append(app)
        return app

    yield make
    for app in made:
        app.extensions["bus"].close()  # PostgresBus: its LISTEN connection
        if "quick_reads" in app.extensions:  # the idle poll's engine
            app.extensions["quick_reads"].dispose()
        with app.app_context():
            db.session.remove()
            db.engine.dispose()


@pytest.fixture
def app(app_factory):
    app = app_factory()
    with app.app_context():
        yield app


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def make_user(app):
    """``make_user(role, username=None, password=TEST_PASSWORD)`` (tests.factories)."""
    return factories.make_user


@pytest.fixture
def login_as(app, make_user):
    """A test client signed in as a new user of the given role."""

    def sign_in(role: Role = Role.admin):
        user = make_user(role)
        browser = app.test_client()
        response = login(browser, user.username)
        assert response.status_code == 302, response.get_data(as_text=True)
        browser.user = user
        return browser

    return sign_in


class LiveServer:
    """The Flask app on a real socket (threaded werkzeug), for the agent's real HTTP client.

    ``stop()`` and ``start()`` take the server away and bring it back on the same port and
    database, as an outage would.
    """

    def __init__(self, app):
        import socket

        self.app = app
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = None
        self._thread = None

    def start(self):
        import logging
        import threading

        from werkzeug.serving import make_server

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no access log in tests

        self._server = make_server("127.0.0.1", self.port, self.app, threaded=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self):
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(10)
            self._server = None


@pytest.fixture
def live_server(app_factory):
    app = app_factory(RM_POLL_WAIT_SECONDS=2, RM_LOG_FLUSH_SECONDS=1, RM_OFFLINE_AFTER_SECONDS=5)
    server = LiveServer(app)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def protocol_app(app_factory):
    """An app whose long polls are held 2 s (agent protocol tests)."""
    app = app_factory(RM_POLL_WAIT_SECONDS=2)
    with app.app_context():
        yield app


@pytest.fixture
def api(app, make_user):
    """``api(role)``: a test client signed in with a personal access token of that role."""

    def client_for(role=Role.operator):
        user = make_user(role)
        _, bearer = api_tokens.create_token(user, "ci", now=utcnow())
        db.session.commit()
        client = app.test_client()
        client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {bearer}"
        return client

    return client_for
