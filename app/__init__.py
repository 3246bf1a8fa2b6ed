"""restic-manager server: ``create_app`` wires configuration, extensions and blueprints."""

from __future__ import annotations

import hashlib
import hmac
import logging
import sys
from pathlib import Path

from flask import Flask
from sqlalchemy import event
from sqlalchemy.engine import Engine
from werkzeug.routing import IntegerConverter

from app import datadir
from app.config import PROJECT_ROOT, load_config
from app.extensions import csrf, db, login_manager, migrate
from app.limits import limit_request_body, max_body_bytes

__version__ = "0.1.0"


MAX_ID = 2**31 - 1  # ids are INTEGER columns (32-bit on PostgreSQL)


class IdConverter(IntegerConverter):
    """``<int:…>`` that matches only what an id column can hold: a larger id is a 404."""

    def __init__(self, map, *args, **kwargs):
        kwargs.setdefault("max", MAX_ID)
        super().__init__(map, *args, **kwargs)


def create_app(config: dict | None = None) -> Flask:
    """Build the application; ``config`` overrides settings read from the environment."""
    if sys.version_info < (3, 11):
        raise RuntimeError("the restic-manager server needs Python 3.11 or newer")
    app = Flask(
        __name__,
        template_folder=str(PROJECT_ROOT / "templates"),
        static_folder=str(PROJECT_ROOT / "static"),
    )
    app.url_map.converters["int"] = IdConverter  # before any route is added
    app.config.update(load_config())
    app.config.update(config or {})
    _configure_logging(app)
    _configure_secrets(app)
    _configure_session(app)
    _configure_database(app)
    from app.bus import create_bus

    # PostgresBus on PostgreSQL (LISTEN/NOTIFY across workers), InProcessBus on SQLite.
    app.extensions["bus"] = create_bus(app.config["SQLALCHEMY_DATABASE_URI"])

    login_manager.init_app(app)
    login_manager.session_protection = None  # server-side session rows do this job
    login_manager.login_view = "auth.login"
    csrf.init_app(app)
    migrate.init_app(app, db, directory=str(PROJECT_ROOT / "migrations"), render_as_batch=True)

    from app import authn

    _register_blueprints(app)
    from app.install_commands import server_url_problem
    from app.models import Role

    app.jinja_env.globals["Role"] = Role
    app.jinja_env.globals["server_url_problem"] = server_url_problem
    _register_request_hooks(app)

    from app.errors import register_error_handlers

    register_error_handlers(app)

    from app.cli import register_cli

    register_cli(app)

    from app.agent_api.idle import IdlePolls

    # Idle agent polls answered below Flask; every other request passes through.
    app.wsgi_app = app.extensions["idle_polls"] = IdlePolls(app.wsgi_app, app)
    if app.config["RM_TRUSTED_PROXIES"]:
        app.wsgi_app = authn.TrustedProxyFix(app.wsgi_app, app.config["RM_TRUSTED_PROXIES"])
    return app


def _configure_logging(app: Flask) -> None:
    level = getattr(logging, app.config["RM_LOG_LEVEL"])
    app.logger.setLevel(level)
    logger = logging.getLogger("restic_manager")
    logger.setLevel(level)
    # Without a handler of its own only warnings reached stderr (Python's last resort):
    # RM_LOG_LEVEL=INFO printed no info line at all. Flask's format, on stderr.
    if not any(getattr(handler, "restic_manager", False) for handler in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(
            logging.Formatter("[%(asctime)s] %(levelname)s in %(name)s: %(message)s")
        )
        handler.restic_manager = True
        logger.addHandler(handler)


def _configure_secrets(app: Flask) -> None:
    from app.secretbox import SecretBox, load_or_create_key

    datadir.private_directory(Path(app.config["RM_DATA_DIR"]), app.logger)
    key_file = Path(app.config["RM_SECRET_KEY_FILE"])
    key = load_or_create_key(key_file)
    datadir.private_file(key_file, app.logger)
    app.extensions["secretbox"] = SecretBox(key)
    # The cookie-signing key is derived, so there is one secret file to back up.
    if not app.config.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = hmac.new(key, b"flask-session-signing", hashlib.sha256).digest()


def _configure_session(app: Flask) -> None:
    from app.authn import SessionInterface

    app.session_interface = SessionInterface()
    app.config.update(
        SESSION_COOKIE_NAME="rm_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        WTF_CSRF_CHECK_DEFAULT=False,  # checked in before_request, skipping bearer requests
        WTF_CSRF_TIME_LIMIT=None,  # the token lives as long as the session
        # Set outright: Flask's defaults hold the key as None, so a fallback never applies.
        # app.limits lowers it per request for the endpoints anyone may call.
        MAX_CONTENT_LENGTH=max_body_bytes(app.config),
    )
    app.config["PERMANENT_SESSION_LIFETIME"] = app.config["RM_SESSION_HOURS"] * 3600


def _configure_database(app: Flask) -> None:
    url = app.config["SQLALCHEMY_DATABASE_URI"]
    if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
        path = Path(url.removeprefix("sqlite:///"))
        path.parent.mkdir(parents=True, exist_ok=True, mode=datadir.PRIVATE_DIRECTORY)
        datadir.private_sqlite_database(path, app.logger)
    options = app.config.setdefault("SQLALCHEMY_ENGINE_OPTIONS", {})
    options.setdefault("pool_pre_ping", True)
    if url.startswith("sqlite"):
        options.setdefault(
            "connect_args", {"timeout": app.config["RM_SQLITE_BUSY_TIMEOUT_MS"] / 1000}
        )
    db.init_app(app)


@event.listens_for(Engine, "connect")
def _sqlite_pragmas(dbapi_connection, connection_record):
    """WAL, a busy timeout and enforced foreign keys on every SQLite connection; a new
    database file is made with incremental auto-vacuum (housekeeping returns its free pages;
    an existing file keeps its mode until a VACUUM, see docs/deployment.md)."""
    module = type(dbapi_connection).__module__
    if not module.startswith("sqlite3"):
        return
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA auto_vacuum=INCREMENTAL")  # takes effect only before any table
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _register_blueprints(app: Flask) -> None:
    from app.agent_api import bp as agent_api_bp
    from app.api import bp as api_bp
    from app.distribution import bp as distribution_bp
    from app.web.alerts import bp as alerts_bp
    from app.web.audit import bp as audit_bp
    from app.web.auth import bp as auth_bp
    from app.web.dashboard import bp as web_bp
    from app.web.hosts import bp as hosts_bp
    from app.web.jobs import bp as jobs_bp
    from app.web.settings import bp as settings_bp

    app.register_blueprint(web_bp)
    app.register_blueprint(auth_bp)
    app.register_blueprint(settings_bp, url_prefix="/settings")
    app.register_blueprint(api_bp, url_prefix="/api/v1")
    app.register_blueprint(agent_api_bp, url_prefix="/api/agent/v1")
    app.register_blueprint(hosts_bp, url_prefix="/hosts")
    app.register_blueprint(jobs_bp, url_prefix="/jobs")
    app.register_blueprint(distribution_bp)
    app.register_blueprint(alerts_bp)  # /alerts/… and /settings/alert-rules
    app.register_blueprint(audit_bp)  # /audit


def _register_request_hooks(app: Flask) -> None:
    from flask import request

    from app.access import SAFE_METHODS, enforce_access
    from app.authn import is_token_request
    from app.security import RESPONSE_HEADERS
    from app.web.input import bp as input_bp

    # First: nothing before it may read the body (the CSRF check reads the form).
    app.before_request(limit_request_body)
    # Then NUL characters and lone surrogates in form fields, query strings and path
    # segments are refused for every route (it reads form bodies, so after the limit).
    app.register_blueprint(input_bp)

    @app.before_request
    def check_access_then_csrf():
        refused = enforce_access()
        if refused is not None:
            return refused
        if (
            request.method not in SAFE_METHODS
            and request.routing_exception is None  # let 404/405 answer as themselves
            and not request.path.startswith("/api/agent/")
            and not is_token_request()
        ):
            csrf.protect()
        return None

    @app.after_request
    def security_headers(response):
        for name, value in RESPONSE_HEADERS:
            response.headers.setdefault(name, value)
        if request.path.startswith("/api/"):
            response.headers.setdefault("Cache-Control", "no-store")
        elif response.mimetype == "text/html" and request.endpoint != "static":
            # Pages show what a signed-in user may see (and forms carry a CSRF token): a
            # shared or back-button cache must not keep them. Static files stay cacheable.
            response.headers.setdefault("Cache-Control", "no-store")
        return response
