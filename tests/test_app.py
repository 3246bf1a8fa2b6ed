"""Factory, configuration, database settings and health endpoints."""

import io
import logging

import pytest
from sqlalchemy import text

from app import create_app
from app.config import ConfigError, load_config
from app.extensions import db
from tests.conftest import POSTGRES_URL


def test_defaults_put_everything_in_the_data_dir(tmp_path):
    config = load_config({"RM_DATA_DIR": str(tmp_path)})
    assert config["SQLALCHEMY_DATABASE_URI"] == f"sqlite:///{tmp_path / 'restic-manager.db'}"
    assert config["RM_SECRET_KEY_FILE"] == tmp_path / "secret.key"
    assert config["RM_TRUSTED_PROXIES"] == []
    assert config["RM_LOG_LEVEL"] == "INFO"
    assert config["RM_OFFLINE_AFTER_SECONDS"] == 90


def test_environment_overrides(tmp_path):
    config = load_config(
        {
            "RM_DATA_DIR": str(tmp_path),
            "RM_DATABASE_URL": "postgresql://rm@db/rm",
            "RM_BASE_URL": "https://backup.example.com/",
            "RM_TRUSTED_PROXIES": "127.0.0.1, 10.0.0.0/8",
            "RM_LOG_LEVEL": "debug",
            "RM_SESSION_HOURS": "8",
        }
    )
    assert config["SQLALCHEMY_DATABASE_URI"] == "postgresql+psycopg://rm@db/rm"
    assert config["RM_BASE_URL"] == "https://backup.example.com"
    assert [str(n) for n in config["RM_TRUSTED_PROXIES"]] == ["127.0.0.1/32", "10.0.0.0/8"]
    assert config["RM_LOG_LEVEL"] == "DEBUG"
    assert config["RM_SESSION_HOURS"] == 8


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("RM_TRUSTED_PROXIES", "proxy.local", "not an IP address or network"),
        ("RM_LOG_LEVEL", "LOUD", "RM_LOG_LEVEL must be"),
        ("RM_SESSION_HOURS", "twelve", "must be a whole number"),
        ("RM_SESSION_HOURS", "0", "must be at least 1"),
    ],
)
def test_bad_settings_name_themselves(name, value, message):
    with pytest.raises(ConfigError, match=message) as error:
        load_config({name: value})
    assert name in str(error.value)


def test_explicit_config_wins_over_environment(app_factory, monkeypatch):
    monkeypatch.setenv("RM_SESSION_HOURS", "3")
    app = app_factory(RM_SESSION_HOURS=5)
    assert app.config["RM_SESSION_HOURS"] == 5


def test_factory_builds_independent_apps(app_factory):
    first, second = app_factory(), app_factory(RM_OFFLINE_AFTER_SECONDS=5)
    assert first is not second
    assert first.config["RM_OFFLINE_AFTER_SECONDS"] == 90
    assert second.config["RM_OFFLINE_AFTER_SECONDS"] == 5


def test_database_connection_settings(app):
    """SQLite: WAL, enforced foreign keys, busy timeout. PostgreSQL: the psycopg 3 driver."""
    if POSTGRES_URL:
        assert db.engine.dialect.driver == "psycopg"
        return
    with db.engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert connection.execute(text("PRAGMA busy_timeout")).scalar() == 5000


def test_healthz_and_readyz(client):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json() == {"status": "ready", "database": "ok"}


def test_readyz_reports_an_unreachable_database(tmp_path):
    app = create_app(
        {
            "TESTING": True,
            "RM_DATA_DIR": tmp_path,
            # Nothing listens on port 9: the connection is refused at once.
            "SQLALCHEMY_DATABASE_URI": "postgresql+psycopg://nobody@127.0.0.1:9/none",
            "SQLALCHEMY_ENGINE_OPTIONS": {"connect_args": {"connect_timeout": 2}},
        }
    )
    client = app.test_client()
    assert client.get("/healthz").status_code == 200  # alive, but
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.get_json() == {"status": "unavailable", "database": "unreachable"}
    with app.app_context():
        db.engine.dispose()


def test_security_headers_on_pages(client):
    response = client.get("/login")
    assert response.headers["X-Frame-Options"] == "DENY"
    assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_proxy_headers_are_ignored_unless_the_peer_is_trusted(app_factory):
    untrusted = app_factory().test_client()
    response = untrusted.get(
        "/login", headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "198.51.100.7"}
    )
    assert "Secure" not in response.headers.get("Set-Cookie", "")

    from app.config import _trusted_proxies

    trusted = app_factory(RM_TRUSTED_PROXIES=_trusted_proxies("127.0.0.1")).test_client()
    response = trusted.get(
        "/login", headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "198.51.100.7"}
    )
    assert "Secure" in response.headers.get("Set-Cookie", "")


def test_the_api_reference_page_renders_the_vendored_swagger_ui(app, client, login_as):
    from app.models import Role

    anonymous = client.get("/api/docs")
    assert anonymous.status_code == 302 and anonymous.headers["Location"].startswith("/login")
    viewer = login_as(Role.viewer)
    page = viewer.get("/api/docs")
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert "script-src 'self';" in page.headers["Content-Security-Policy"]  # not weakened
    assert "<script>" not in html  # no inline script: the start-up code is a static file
    assert 'data-spec="/api/v1/openapi.json"' in html and "data-csrf=" in html
    for asset in (
        "/static/vendor/swagger-ui/swagger-ui-bundle.js",
        "/static/vendor/swagger-ui/swagger-ui.css",
        "/static/js/api-docs.js",
    ):
        assert asset in html
        with client.get(asset) as response:
            assert response.status_code == 200
    with client.get("/static/vendor/swagger-ui/LICENSE") as license_file:
        assert "Apache License" in license_file.get_data(as_text=True)
    assert "<a" in viewer.get("/settings/tokens").get_data(as_text=True).split("/api/docs")[0][-40:]
    missing = viewer.get("/api/docs/nothing")  # under /api/ but not the page: JSON 404
    assert missing.status_code == 404 and missing.get_json()["error"] == "not_found"


def test_the_servers_info_lines_reach_stderr_once(app_factory):
    """RM_LOG_LEVEL=INFO must print the server's own info lines (they had no handler, so
    only warnings got out); a second app in the same process adds no second handler."""
    app_factory(RM_LOG_LEVEL="INFO")
    app_factory(RM_LOG_LEVEL="INFO")
    logger = logging.getLogger("restic_manager")
    ours = [handler for handler in logger.handlers if getattr(handler, "restic_manager", False)]
    assert len(ours) == 1
    printed = io.StringIO()
    earlier = ours[0].setStream(printed)  # stderr as pytest captured it when it was made
    try:
        logging.getLogger("restic_manager.ticker").info("ticker: process 42 leads")
    finally:
        ours[0].setStream(earlier)
    assert printed.getvalue().count("INFO in restic_manager.ticker: ticker: process 42 leads") == 1
