"""The ``restic-manager`` command: serve, create-admin, create-user, create-token, setup-url,
db ..."""

from __future__ import annotations

import errno
import importlib
import logging
import os
import resource
import socket
import sys

import click
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from flask import current_app
from flask.cli import FlaskGroup
from flask_migrate import upgrade
from sqlalchemy.exc import OperationalError

from app import create_app
from app.config import PROJECT_ROOT
from app.extensions import db
from app.formatting import plural
from app.install_commands import LOOPBACK_NAMES
from app.models import Role
from app.models.types import utcnow
from app.services import api_tokens, invites, users
from app.services.audit import Actor
from app.services.errors import ServiceError
from app.transaction import commit_and_wake

log = logging.getLogger("restic_manager")
CLI_ACTOR = Actor.system("cli")


def setup_url(token: str, base_url: str) -> str:
    return f"{base_url}/login?setup_token={token}"


def _announce_setup_if_needed(base_url: str) -> None:
    """While no user exists, mint a one-time setup token and print where to use it."""
    token = users.issue_setup_token(now=utcnow())
    commit_and_wake()
    if token is None:
        return
    url = setup_url(token, base_url)
    banner = "=" * 72
    click.echo(
        f"\n{banner}\nNo administrator exists yet. Open this one-time setup URL to create one:\n\n"
        f"    {url}\n\n(`restic-manager setup-url` prints a new one.)\n{banner}\n",
        err=True,
    )


def _gunicorn_knows(setting: str) -> bool:
    # Imported only by `serve`, after check_worker_class has said clearly what is missing
    # (gunicorn is a server extra: the other commands work without it).
    from gunicorn.config import KNOWN_SETTINGS

    return any(known.name == setting for known in KNOWN_SETTINGS)


GUNICORN_HOOKS = PROJECT_ROOT / "app" / "gunicorn_conf.py"


def check_worker_class() -> None:
    """Load gunicorn's gevent worker here, before announcing anything.

    gunicorn resolves its worker class only after it has started; a missing dependency of the
    gevent worker (`packaging`, declared only under gunicorn's `gevent` extra) would otherwise
    surface after the setup URL was printed.
    """
    try:
        importlib.import_module("gunicorn.workers.ggevent")
    except ImportError as error:
        raise click.ClickException(
            f"gunicorn cannot load its gevent worker ({error}). Reinstall the server with "
            "`install/run-server.sh` (or `pip install -e '.[server]'`)."
        ) from None


def _apply_migrations() -> None:
    """Bring the schema up to date; an unreachable database is one clear line, not a trace."""
    try:
        upgrade()
    except OperationalError as error:
        where = db.engine.url.render_as_string(hide_password=True)
        reason = str(error.orig).strip().splitlines()[0] if error.orig else str(error)
        raise click.ClickException(
            f"cannot use the database {where} (RM_DATABASE_URL): {reason}"
        ) from None


def _schema_is_current() -> bool:
    """The database is at the migrations' head (so upgrading would print only noise)."""
    config = current_app.extensions["migrate"].migrate.get_config()
    heads = set(ScriptDirectory.from_config(config).get_heads())
    with db.engine.connect() as connection:
        return set(MigrationContext.configure(connection).get_current_heads()) == heads


def ensure_schema() -> None:
    """Apply migrations first when the schema is missing or behind (before the first serve)."""
    try:
        current = _schema_is_current()
    except OperationalError:
        current = False  # let the upgrade say clearly what is wrong with the database
    if not current:
        _apply_migrations()


def warn_if_address_unknown(bind: str) -> None:
    """Reachable from elsewhere, but with no configured public address, install commands
    cannot name this server (a request's Host header is not trusted for that)."""
    config = current_app.config
    host = bind.rsplit(":", 1)[0].strip("[]").lower()
    if config["RM_BASE_URL"] or config["RM_ALLOWED_HOSTS"] or host in LOOPBACK_NAMES:
        return
    click.echo(
        "RM_BASE_URL is not set: agent install commands will name this server only when it "
        "is opened as localhost. Set RM_BASE_URL=https://<its public address> (or list the "
        "names it is reached by in RM_ALLOWED_HOSTS).",
        err=True,
    )


def raise_open_files_limit(wanted: int = 65536) -> int:
    """Each parked long poll holds a socket: lift the soft RLIMIT_NOFILE (often 1,024 under
    systemd) towards the hard one, at most ``wanted``. Returns the soft limit now in force;
    gunicorn and its workers inherit it through exec and fork."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


def check_address_free(bind: str) -> None:
    """Refuse, before anything starts, an address that cannot be listened on.

    gunicorn would retry for five seconds and then stop, or, where each worker opens its own
    socket (--reuse-port), restart the workers that failed to bind for ever. The probe sets
    SO_REUSEADDR as gunicorn does but not SO_REUSEPORT, so a port another server listens on
    (another `serve` with several workers included) is refused rather than shared.
    """
    from gunicorn import util

    try:
        address = util.parse_address(bind)
    except RuntimeError as error:
        raise click.ClickException(f"--bind {bind}: {error}") from None
    if not isinstance(address, tuple):
        return  # a Unix socket path or an inherited descriptor: gunicorn opens those
    host, port = address
    family = socket.AF_INET6 if util.is_ipv6(host) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                reason = (
                    "the address is already in use (another restic-manager serve or another "
                    "program listens there); stop it or choose another --bind"
                )
            else:
                reason = error.strerror or str(error)
            raise click.ClickException(f"cannot listen on {bind}: {reason}") from None
        except OverflowError:
            raise click.ClickException(
                f"cannot listen on {bind}: the port must be between 0 and 65535"
            ) from None


def check_workers_supported(workers: int, database_url: str) -> None:
    """Several workers need PostgreSQL: refuse them on SQLite before anything starts."""
    if workers > 1 and not database_url.startswith("postgresql"):
        raise click.ClickException(
            f"--workers {workers} needs PostgreSQL: with SQLite run one worker (the default). "
            "SQLite has a single writer, and its in-process wake-up bus cannot reach other "
            "worker processes (a command queued in one worker would wait for an agent parked "
            "in another). Set RM_DATABASE_URL=postgresql://... to run several workers."
        )


def gunicorn_argv(bind: str, workers: int, trusted_proxies: str) -> list[str]:
    # Newer gunicorn opens a control socket under $HOME; we do not use it, and a sandboxed
    # service may not write there.
    extra = ["--no-control-socket"] if _gunicorn_knows("control_socket_disable") else []
    if workers > 1:
        # A listening socket per worker (SO_REUSEPORT; gunicorn 24+), which the kernel fills
        # evenly. With the master's one shared socket whichever worker woke first took a new
        # connection: at 20,000 agents on 4 workers one held 8,000 and another 3,000, and
        # p99 went over 100 ms (docs/performance.md, "A socket per worker").
        extra.append("--reuse-port")
    return [
        sys.executable,
        "-m",
        "gunicorn",
        # Hooks: announce "listening" once a worker has loaded the app; a worker that cannot
        # load it stops the server with its error as the last line.
        "--config",
        str(GUNICORN_HOOKS),
        "--worker-class",
        "gevent",
        "--workers",
        str(workers),
        "--bind",
        bind,
        "--chdir",
        str(PROJECT_ROOT),
        "--graceful-timeout",
        "20",
        "--worker-connections",
        "10000",  # parked long polls and SSE streams each hold one
        # gunicorn would otherwise trust X-Forwarded-Proto from 127.0.0.1 on its own.
        "--forwarded-allow-ips",
        trusted_proxies,
        "--access-logfile",
        "-",
        "--access-logformat",
        '%(h)s "%(r)s" %(s)s %(b)s %(M)sms',
        *extra,
        "wsgi:app",
    ]


def register_cli(app):
    @app.cli.command("serve")
    @click.option("--bind", default="127.0.0.1:8080", show_default=True, help="host:port")
    @click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64))
    def serve(bind: str, workers: int):
        """Apply migrations, then run gunicorn with gevent workers (SIGTERM stops gracefully)."""
        check_workers_supported(workers, current_app.config["SQLALCHEMY_DATABASE_URI"])
        check_worker_class()
        check_address_free(bind)
        raise_open_files_limit()
        _apply_migrations()
        base_url = current_app.config["RM_BASE_URL"] or f"http://{bind}"
        _announce_setup_if_needed(base_url)
        warn_if_address_unknown(bind)
        trusted = ",".join(str(net) for net in current_app.config["RM_TRUSTED_PROXIES"])
        argv = gunicorn_argv(bind, workers, trusted)
        # Printed by the first worker once it has loaded the application (gunicorn_conf.py).
        os.environ["RM_SERVE_ANNOUNCEMENT"] = (
            f"restic-manager listening on http://{bind} ({plural(workers, 'worker')})"
        )
        sys.stdout.flush()
        sys.stderr.flush()
        # exec: gunicorn replaces this process (same pid for systemd; fresh interpreter, so
        # wsgi.py can monkey-patch gevent before anything else is imported).
        os.execv(sys.executable, argv)  # noqa: S606  (fixed argv, no shell)

    @app.cli.command("setup-url")
    def setup_url_command():
        """Print a new one-time setup URL (only while no user exists)."""
        ensure_schema()
        if users.user_count() > 0:
            raise click.ClickException("setup is already complete: sign in instead")
        base_url = current_app.config["RM_BASE_URL"] or "http://127.0.0.1:8080"
        _announce_setup_if_needed(base_url)

    @app.cli.command("create-admin")
    @click.option("--username", required=True)
    @click.option(
        "--password-stdin", is_flag=True, required=True, help="Read the password from stdin."
    )
    def create_admin(username: str, password_stdin: bool):
        """Create an administrator (password from stdin, never from argv)."""
        password = sys.stdin.readline().rstrip("\r\n")
        ensure_schema()
        try:
            user = users.add_user(
                username, password, Role.admin, actor=CLI_ACTOR, client_address=None
            )
        except ServiceError as refused:
            db.session.rollback()
            raise click.ClickException(refused.message) from None
        commit_and_wake()
        click.echo(f"created admin {user.username}")

    @app.cli.command("create-token")
    @click.option("--user", "username", required=True)
    @click.option("--name", required=True)
    def create_token(username: str, name: str):
        """Mint a personal access token for a user and print it (shown only once)."""
        ensure_schema()
        user = users.find_user(username)
        if user is None or not user.is_active:
            raise click.ClickException(f"no active user named {username!r}")
        try:
            _, plain = api_tokens.issue_token(
                user, name, actor=CLI_ACTOR, client_address=None, now=utcnow()
            )
        except ServiceError as refused:
            db.session.rollback()
            raise click.ClickException(refused.message) from None
        commit_and_wake()
        click.echo(plain)

    @app.cli.command("create-user")
    @click.option("--username", required=True)
    @click.option(
        "--role",
        required=True,
        type=click.Choice([role.value for role in Role]),
        help="viewer, operator or admin.",
    )
    def create_user(username: str, role: str):
        """Invite a user: print a one-time link (24 h) where they choose their password."""
        ensure_schema()
        try:
            user, link, token = invites.invite_user(
                username, role, actor=CLI_ACTOR, client_address=None, now=utcnow()
            )
        except ServiceError as refused:
            db.session.rollback()
            raise click.ClickException(refused.message) from None
        commit_and_wake()
        base_url = current_app.config["RM_BASE_URL"] or "http://127.0.0.1:8080"
        click.echo(
            f"created {user.role} {user.username}; send them this one-time link "
            f"(valid until {link.expires_at:%Y-%m-%d %H:%M} UTC):",
            err=True,
        )
        click.echo(invites.invite_url(base_url, token))


def main(argv=None) -> int:
    cli = FlaskGroup(
        create_app=create_app,
        name="restic-manager",
        help="restic-manager server. `restic-manager serve` runs it.",
        set_debug_flag=False,
    )
    try:
        cli.main(args=argv, prog_name="restic-manager")
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
